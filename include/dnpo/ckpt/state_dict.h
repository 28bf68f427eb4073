// What a checkpoint holds, as the ckpt layer sees it: named tensors by global shape, each rank
// holding one contiguous 1-D slice of the flattened (row-major) tensor, plus replicated
// attributes (strings, int64, float64) and blobs (bytes). No HDF5 and no MPI here.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace dnpo::ckpt {

/// This rank's piece of one logical tensor: elements [offset, offset + numel()) of the
/// row-major flattening of a tensor of `shape`. data is a CPU, contiguous, 1-D tensor of `dtype`
/// (kFloat or kLong); an empty slice has numel() == 0 (data may then be undefined).
struct TensorSlice {
  std::string name;                 ///< logical name, e.g. "policy.model.layers.3.q_proj.weight"
  std::vector<std::int64_t> shape;  ///< the global shape ({} = a 0-d tensor of one element)
  at::ScalarType dtype = at::kFloat;
  std::int64_t offset = 0;  ///< into the flattened global tensor
  at::Tensor data;          ///< (numel,) CPU contiguous, dtype

  std::int64_t numel() const;
  std::int64_t global_numel() const;
};

/// [offset, offset + numel) of rank `rank` when `global_numel` elements are split evenly in
/// rank order (ceil(global_numel / world) each, the last ranks possibly shorter or empty), the
/// split dist::ShardedUnit uses.
struct SliceRange {
  std::int64_t offset = 0;
  std::int64_t numel = 0;
};
SliceRange even_slice(std::int64_t global_numel, int rank, int world);

/// A checkpoint's contents. Tensors keep their order (the order they are written and listed in).
/// Attributes and blobs are replicated: save() writes rank 0's; load() gives them to every rank.
/// One key space for strings, ints and floats (a key may appear in only one of them).
struct StateDict {
  std::vector<TensorSlice> tensors;
  std::map<std::string, std::string> strings;  ///< small text (≤ 60000 bytes each), e.g. JSON
  std::map<std::string, std::int64_t> ints;
  std::map<std::string, double> floats;
  std::map<std::string, std::string> blobs;  ///< bytes of any size (prompts, judge cache, …)

  /// Appends a slice; data must be CPU, 1-D, contiguous (checked at save()).
  TensorSlice& add(std::string name,
                   std::vector<std::int64_t> shape,
                   std::int64_t offset,
                   at::Tensor data);
  /// Appends this rank's even_slice() of `full` (any shape; flattened), copied.
  TensorSlice& add_even_slice(std::string name, const at::Tensor& full, int rank, int world);
  /// Appends a request for load_into(): a zero-filled slice [offset, offset + numel).
  TensorSlice& add_request(std::string name,
                           std::vector<std::int64_t> shape,
                           std::int64_t offset,
                           std::int64_t numel,
                           at::ScalarType dtype = at::kFloat);

  /// The slice named `name`, or nullptr.
  const TensorSlice* find(const std::string& name) const;
  /// The slice named `name`; throws CheckpointError naming it when absent.
  const TensorSlice& at(const std::string& name) const;
};

}  // namespace dnpo::ckpt
