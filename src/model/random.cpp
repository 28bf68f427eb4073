// Counter-based normal tensors, filled in parallel (each element depends only on its key/index).
#include "dnpo/model/random.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "dnpo/common/counter_rng.h"

namespace dnpo::model {

at::Tensor counter_normal_rows(const std::vector<std::uint64_t>& row_keys, std::int64_t cols) {
  const auto rows = static_cast<std::int64_t>(row_keys.size());
  auto out = at::empty({rows, cols}, at::kFloat);  // (N, V) fp32
  float* data = out.data_ptr<float>();
  at::parallel_for(0, rows * cols, 4096, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      const auto row = i / cols;
      const auto col = i % cols;
      data[i] = static_cast<float>(
          standard_normal(row_keys[row], static_cast<std::uint64_t>(col)));
    }
  });
  return out;
}

at::Tensor counter_normal(at::IntArrayRef shape, double std, std::uint64_t key) {
  auto out = at::empty(shape, at::kFloat);
  float* data = out.data_ptr<float>();
  at::parallel_for(0, out.numel(), 4096, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      data[i] = static_cast<float>(std * standard_normal(key, static_cast<std::uint64_t>(i)));
    }
  });
  return out;
}

}  // namespace dnpo::model
