// Helpers shared by the golden tests: locating and reading the reference files that
// tests/reference/*.py write, and comparing tensors with a printed max abs / max rel error.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dnpo/model/safetensors.h"

namespace dnpo::golden {

using TensorMap = std::map<std::string, at::Tensor>;

/// Where the golden_data fixture writes the reference files.
inline std::string golden_dir() {
  return DNPO_BINARY_DIR "/golden";
}

/// Success when dir exists; else a failure telling how to produce it (a missing fixture is a
/// failure, not a skip: the golden label is expected to run with its data).
inline ::testing::AssertionResult golden_present(const std::string& dir) {
  if (std::filesystem::is_directory(dir)) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "golden data missing: '" << dir
         << "' does not exist; hint: run the golden_data fixture (`ctest -L golden` or `ctest -R "
            "golden_data`), which runs tests/reference/{llama,loss,noise_init}_reference.py with "
            "/usr/bin/python3";
}

/// All tensors of a safetensors file by name.
inline TensorMap read_tensors(const std::string& path) {
  TensorMap out;
  for (auto& [name, tensor] : model::read_safetensors(path)) {
    out.emplace(name, tensor);
  }
  return out;
}

/// The tensor `name` of a golden file; throws naming the file's contents when it is absent.
inline const at::Tensor& tensor_at(const TensorMap& tensors,
                                   const std::string& name,
                                   const std::string& file) {
  auto it = tensors.find(name);
  if (it == tensors.end()) {
    throw std::runtime_error("golden file '" + file + "' lacks tensor '" + name +
                             "'; hint: rerun the golden_data fixture");
  }
  return it->second;
}

/// Max absolute error, and max relative error over the elements with |expected| > atol (where
/// the relative tolerance is what matters), plus the allclose verdict
/// |a − e| <= atol + rtol·|e| elementwise.
struct ErrorStats {
  double max_abs = 0;
  double max_rel = 0;
  bool within = true;
};

inline ErrorStats error_stats(const at::Tensor& actual,
                              const at::Tensor& expected,
                              double atol,
                              double rtol) {
  const auto a = actual.detach().to(at::kDouble).cpu();
  const auto e = expected.detach().to(at::kDouble).cpu();
  ErrorStats stats;
  if (a.numel() == 0) {
    return stats;
  }
  const auto diff = (a - e).abs();
  const auto mag = e.abs();
  stats.max_abs = diff.max().item<double>();
  const auto significant = mag > atol;
  if (significant.any().item<bool>()) {
    stats.max_rel =
        (diff.masked_select(significant) / mag.masked_select(significant)).max().item<double>();
  }
  stats.within = (diff <= atol + rtol * mag).all().item<bool>() && a.isfinite().all().item<bool>();
  return stats;
}

/// Compares actual with expected (same shape), prints one line with the errors, and returns an
/// assertion result for EXPECT_TRUE / ASSERT_TRUE whose message carries the same numbers.
inline ::testing::AssertionResult all_close(const std::string& what,
                                            const at::Tensor& actual,
                                            const at::Tensor& expected,
                                            double atol,
                                            double rtol) {
  if (!actual.defined() || actual.sizes() != expected.sizes()) {
    std::ostringstream shape;
    if (actual.defined()) {
      shape << actual.sizes();
    } else {
      shape << "(undefined)";
    }
    return ::testing::AssertionFailure()
           << what << ": shape " << shape.str() << "; expected " << expected.sizes();
  }
  const auto stats = error_stats(actual, expected, atol, rtol);
  std::printf(
      "  [golden] %-58s max abs %.2e  max rel %.2e\n", what.c_str(), stats.max_abs, stats.max_rel);
  if (stats.within) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << what << ": max abs error " << stats.max_abs << ", max rel error " << stats.max_rel
         << "; expected |actual - expected| <= " << atol << " + " << rtol << "·|expected|";
}

/// True when a gradient is undefined or exactly zero everywhere.
inline bool undefined_or_zero(const at::Tensor& grad) {
  return !grad.defined() || grad.count_nonzero().item<std::int64_t>() == 0;
}

/// The gradient of a parameter, zeros when autograd left it undefined (an unused parameter; the
/// reference stores zeros for those).
inline at::Tensor grad_or_zeros(const at::Tensor& param) {
  return param.grad().defined() ? param.grad() : at::zeros_like(param);
}

}  // namespace dnpo::golden
