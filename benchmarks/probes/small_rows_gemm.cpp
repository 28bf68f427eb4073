// Probe (not built by CMake): is a decode step's linear layer (8 rows × K times a weight N × K)
// limited by OpenBLAS or by reading the weight? Times cblas_sgemm, as at::linear calls it, against
// a plain loop that streams each weight row once (AVX2/FMA, compiler-vectorised), on the shapes of
// `benchmarks/run generate`'s mid model. 16 weight copies rotate so that each call reads from DRAM.
//   g++ -O3 -std=c++17 benchmarks/probes/small_rows_gemm.cpp -o /tmp/small_rows_gemm -lblas
//   OMP_NUM_THREADS=1 /tmp/small_rows_gemm     (after `source launch/env.sh`)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include <cblas.h>

namespace {

constexpr int kRows = 8;

// out[m][n] = Σ_k x[m][k] · w[n][k]: each weight row is read once for all rows of x.
__attribute__((target("avx2,fma"))) void stream_rows(
    const float* x, const float* w, float* out, int n_out, int k_in) {
  for (int n = 0; n < n_out; ++n) {
    const float* row = w + static_cast<std::size_t>(n) * k_in;
    float acc[kRows][8];
    std::memset(acc, 0, sizeof acc);
    for (int k = 0; k + 8 <= k_in; k += 8) {
      for (int m = 0; m < kRows; ++m) {
        for (int j = 0; j < 8; ++j) {
          acc[m][j] += x[static_cast<std::size_t>(m) * k_in + k + j] * row[k + j];
        }
      }
    }
    for (int m = 0; m < kRows; ++m) {
      float s = 0;
      for (int j = 0; j < 8; ++j) {
        s += acc[m][j];
      }
      out[static_cast<std::size_t>(m) * n_out + n] = s;
    }
  }
}

double micros_per_call(std::chrono::steady_clock::time_point a,
                       std::chrono::steady_clock::time_point b,
                       int calls) {
  return std::chrono::duration<double, std::micro>(b - a).count() / calls;
}

}  // namespace

int main() {
  // q/k/v (3 × 512 fused), o, gate+up (2 × 1408 fused), down, lm_head of the mid model.
  const int shapes[][2] = {{1536, 512}, {512, 512}, {2816, 512}, {512, 1408}, {8000, 512}};
  constexpr int kCopies = 16;
  constexpr int kCalls = 200;
  std::mt19937 gen(1);
  std::normal_distribution<float> normal;
  for (const auto& shape : shapes) {
    const int n = shape[0], k = shape[1];
    std::vector<float> x(kRows * k), blas_out(kRows * n), stream_out(kRows * n);
    std::vector<std::vector<float>> weights(kCopies, std::vector<float>(std::size_t(n) * k));
    for (auto& v : x) {
      v = normal(gen);
    }
    for (auto& v : weights[0]) {
      v = normal(gen);
    }
    std::fill(weights.begin() + 1, weights.end(), weights[0]);
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < kCalls; ++r) {
      cblas_sgemm(CblasRowMajor,
                  CblasNoTrans,
                  CblasTrans,
                  kRows,
                  n,
                  k,
                  1.0F,
                  x.data(),
                  k,
                  weights[r % kCopies].data(),
                  k,
                  0.0F,
                  blas_out.data(),
                  n);
    }
    const auto t1 = std::chrono::steady_clock::now();
    for (int r = 0; r < kCalls; ++r) {
      stream_rows(x.data(), weights[r % kCopies].data(), stream_out.data(), n, k);
    }
    const auto t2 = std::chrono::steady_clock::now();
    double max_diff = 0;
    for (std::size_t i = 0; i < blas_out.size(); ++i) {
      max_diff = std::max(max_diff, static_cast<double>(std::fabs(blas_out[i] - stream_out[i])));
    }
    const double blas_us = micros_per_call(t0, t1, kCalls);
    const double mib = double(n) * k * 4 / (1 << 20);
    std::printf(
        "{\"n\": %d, \"k\": %d, \"weight_mib\": %.2f, \"blas_us\": %.1f, \"stream_us\": %.1f, "
        "\"blas_gib_per_s\": %.2f, \"max_abs_diff\": %.2g}\n",
        n,
        k,
        mib,
        blas_us,
        micros_per_call(t1, t2, kCalls),
        mib / 1024 / (blas_us / 1e6),
        max_diff);
  }
}
