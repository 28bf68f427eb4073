// Tensors filled from counter-based draws (common/counter_rng.h): the same key gives the same
// values on every rank and for any chunking of the rows.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace dnpo::model {

/// (rows.size(), cols) fp32 standard normals; row i uses key row_keys[i], column j is draw j.
/// Made on `device`: a threaded loop on the CPU, integer tensor ops elsewhere (no host copy of
/// an (N, V) tensor); both give the same uniforms bit for bit.
at::Tensor counter_normal_rows(const std::vector<std::uint64_t>& row_keys,
                               std::int64_t cols,
                               const at::Device& device = at::kCPU);
/// The tensor-op path on any device (exposed so tests can compare it with the loop on the CPU).
at::Tensor counter_normal_rows_by_tensor_ops(const std::vector<std::uint64_t>& row_keys,
                                             std::int64_t cols,
                                             const at::Device& device);

/// The row keys as a long tensor (rows,) on `device`: one host-to-device copy for many chunks
/// (on CUDA from pinned memory, without waiting for the GPU).
at::Tensor counter_row_keys(const std::vector<std::uint64_t>& row_keys, const at::Device& device);
/// counter_normal_rows for keys already on their device (counter_row_keys): tensor ops only, so a
/// GPU draws without a host round trip.
at::Tensor counter_normal_rows(const at::Tensor& row_keys, std::int64_t cols);

/// A tensor of the given shape with normal(0, std) draws keyed on `key` (element index = draw).
at::Tensor counter_normal(at::IntArrayRef shape, double std, std::uint64_t key);
/// A tensor of the given shape with uniform draws in [−bound, bound) keyed on `key`.
at::Tensor counter_uniform(at::IntArrayRef shape, double bound, std::uint64_t key);

}  // namespace dnpo::model
