// Counter-based normal tensors, filled in parallel (each element depends only on its key/index).
#include "dnpo/model/random.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "dnpo/common/counter_rng.h"

namespace dnpo::model {

at::Tensor counter_normal_rows(const std::vector<std::uint64_t>& row_keys, std::int64_t cols) {
  // Box–Muller pairs: the integer hashing fills (u1, u2); log/sqrt/cos/sin run vectorised in ATen.
  const auto rows = static_cast<std::int64_t>(row_keys.size());
  const std::int64_t pairs = (cols + 1) / 2;
  auto u1 = at::empty({rows, pairs}, at::kFloat);
  auto u2 = at::empty({rows, pairs}, at::kFloat);
  auto* u1_data = u1.data_ptr<float>();
  auto* u2_data = u2.data_ptr<float>();
  at::parallel_for(0, rows * pairs, 8192, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      box_muller_uniforms(
          row_keys[i / pairs], static_cast<std::uint64_t>(i % pairs), u1_data[i], u2_data[i]);
    }
  });
  auto radius = at::sqrt(at::log(u1).mul_(-2.0F));  // (N, pairs)
  auto theta = u2.mul_(6.2831853F);
  auto normals = at::stack({radius * at::cos(theta), radius.mul_(at::sin(theta))}, -1);
  return normals.view({rows, 2 * pairs}).narrow(1, 0, cols).contiguous();  // (N, V) fp32
}

at::Tensor counter_normal(at::IntArrayRef shape, double std, std::uint64_t key) {
  auto out = at::empty(shape, at::kFloat);
  auto* data = out.data_ptr<float>();
  at::parallel_for(0, out.numel(), 4096, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      data[i] = static_cast<float>(std * standard_normal(key, static_cast<std::uint64_t>(i)));
    }
  });
  return out;
}

}  // namespace dnpo::model
