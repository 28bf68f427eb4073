// Counter-based normal tensors, filled in parallel (each element depends only on its key/index).
#include "dnpo/model/random.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "dnpo/common/counter_rng.h"
#include "dnpo/common/error.h"
#if DNPO_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>

#include "counter_rng_cuda.h"
#endif

namespace dnpo::model {

namespace {

// Box–Muller on uniform tensors (rows, pairs): log/sqrt/cos/sin run vectorised in ATen.
at::Tensor box_muller(at::Tensor u1, at::Tensor u2, std::int64_t cols) {
  const auto rows = u1.size(0);
  const auto pairs = u1.size(1);
  auto radius = at::sqrt(at::log(u1).mul_(-2.0F));  // (N, pairs)
  auto theta = u2.mul_(6.2831853F);
  auto normals = at::stack({radius * at::cos(theta), radius.mul_(at::sin(theta))}, -1);
  return normals.view({rows, 2 * pairs}).narrow(1, 0, cols).contiguous();  // (N, V) fp32
}

// uint64 arithmetic on int64 tensors: + and * wrap in two's complement as unsigned ones do, and
// a logical right shift is the arithmetic one with the sign-extended bits masked off.
at::Tensor shift_right(const at::Tensor& x, int bits) {
  const auto keep = static_cast<std::int64_t>((std::uint64_t{1} << (64U - bits)) - 1U);
  return at::bitwise_and(at::bitwise_right_shift(x, bits), keep);
}

std::int64_t as_signed(std::uint64_t v) {
  return static_cast<std::int64_t>(v);
}

// mix64 of common/counter_rng.h, elementwise.
at::Tensor mix64_tensor(at::Tensor x) {
  x = x + as_signed(0x9E3779B97F4A7C15ULL);
  x = at::bitwise_xor(x, shift_right(x, 30)) * as_signed(0xBF58476D1CE4E5B9ULL);
  x = at::bitwise_xor(x, shift_right(x, 27)) * as_signed(0x94D049BB133111EBULL);
  return at::bitwise_xor(x, shift_right(x, 31));
}

// The 24 high bits of random_bits(key, index) for keys (N, 1) and indices (1, P).
at::Tensor high_24_bits(const at::Tensor& keys, const at::Tensor& index) {
  return shift_right(mix64_tensor(keys + index * as_signed(0x9E3779B97F4A7C15ULL)), 40);
}

}  // namespace

at::Tensor counter_row_keys(const std::vector<std::uint64_t>& row_keys, const at::Device& device) {
  std::vector<std::int64_t> signed_keys(row_keys.size());
  for (std::size_t i = 0; i < row_keys.size(); ++i) {
    signed_keys[i] = as_signed(row_keys[i]);
  }
  auto keys = at::tensor(signed_keys, at::TensorOptions().dtype(at::kLong));
  if (device.is_cpu()) {
    return keys;
  }
  // Pinned: the copy is queued on the stream and the host goes on (a pageable one waits).
  return keys.pin_memory().to(device, /*non_blocking=*/true);
}

at::Tensor counter_normal_rows(const at::Tensor& row_keys, std::int64_t cols) {
  const auto rows = row_keys.size(0);
  const std::int64_t pairs = (cols + 1) / 2;
#if DNPO_CUDA_KERNELS
  if (row_keys.is_cuda()) {  // one kernel for the uniforms, not ~20 integer passes
    const auto keys = row_keys.contiguous();
    auto u1 = at::empty({rows, pairs}, keys.options().dtype(at::kFloat));
    auto u2 = at::empty_like(u1);
    const int rc =
        gpu::counter_uniforms(keys.data_ptr<std::int64_t>(),
                              rows,
                              pairs,
                              u1.data_ptr<float>(),
                              u2.data_ptr<float>(),
                              c10::cuda::getCurrentCUDAStream(keys.device().index()).stream());
    DNPO_CHECK(rc == 0, "counter_uniforms: CUDA error {}", rc);
    return box_muller(std::move(u1), std::move(u2), cols);
  }
#endif
  const auto keys = row_keys.view({rows, 1});
  const auto pair = at::arange(pairs, row_keys.options()).view({1, pairs});
  // as box_muller_uniforms: u1 in (0, 1] from draw 2p, u2 in [0, 1) from draw 2p + 1
  auto u1 = (high_24_bits(keys, pair * 2) + 1).to(at::kFloat).mul_(0x1.0p-24F);
  auto u2 = high_24_bits(keys, pair * 2 + 1).to(at::kFloat).mul_(0x1.0p-24F);
  return box_muller(std::move(u1), std::move(u2), cols);
}

at::Tensor counter_normal_rows_by_tensor_ops(const std::vector<std::uint64_t>& row_keys,
                                             std::int64_t cols,
                                             const at::Device& device) {
  return counter_normal_rows(counter_row_keys(row_keys, device), cols);
}

at::Tensor counter_normal_rows(const std::vector<std::uint64_t>& row_keys,
                               std::int64_t cols,
                               const at::Device& device) {
  if (!device.is_cpu()) {
    return counter_normal_rows_by_tensor_ops(row_keys, cols, device);
  }
  // The integer hashing as one threaded loop: several times faster than tensor ops on a CPU.
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
  return box_muller(std::move(u1), std::move(u2), cols);
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

at::Tensor counter_uniform(at::IntArrayRef shape, double bound, std::uint64_t key) {
  auto out = at::empty(shape, at::kFloat);
  auto* data = out.data_ptr<float>();
  at::parallel_for(0, out.numel(), 4096, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      data[i] = static_cast<float>(bound * (2 * uniform01(key, static_cast<std::uint64_t>(i)) - 1));
    }
  });
  return out;
}

}  // namespace dnpo::model
