// The uniforms of counter-based normals on the GPU (see counter_rng_cuda.h). One pass writes both
// uniforms of every pair; the same numbers as ATen integer ops would make in some twenty passes
// over (rows, pairs) int64 tensors (model/random.cpp).
#include "counter_rng_cuda.h"

#include <algorithm>

#include <cuda_runtime.h>

#include "dnpo/common/counter_rng.h"  // constexpr: callable here (--expt-relaxed-constexpr)

namespace dnpo::model::gpu {
namespace {

__global__ void uniforms_kernel(const std::int64_t* keys,
                                std::int64_t rows,
                                std::int64_t pairs,
                                float* u1,
                                float* u2) {
  const std::int64_t n = rows * pairs;
  const std::int64_t stride = static_cast<std::int64_t>(blockDim.x) * gridDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const auto key = static_cast<std::uint64_t>(keys[i / pairs]);
    const auto pair = static_cast<std::uint64_t>(i % pairs);
    const std::uint64_t bits1 = dnpo::random_bits(key, 2 * pair);
    const std::uint64_t bits2 = dnpo::random_bits(key, 2 * pair + 1);
    // as box_muller_uniforms: 24-bit integers, exact in float
    u1[i] = static_cast<float>((bits1 >> 40U) + 1) * 0x1.0p-24F;
    u2[i] = static_cast<float>(bits2 >> 40U) * 0x1.0p-24F;
  }
}

}  // namespace

int counter_uniforms(const std::int64_t* keys,
                     std::int64_t rows,
                     std::int64_t pairs,
                     float* u1,
                     float* u2,
                     void* stream) {
  const std::int64_t n = rows * pairs;
  if (n == 0) {
    return 0;
  }
  constexpr int kThreads = 256;
  constexpr std::int64_t kMaxBlocks = 65535LL * 16;  // grid-stride beyond this
  const auto blocks =
      static_cast<unsigned>(std::min<std::int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
  uniforms_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      keys, rows, pairs, u1, u2);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace dnpo::model::gpu
