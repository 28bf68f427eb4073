// StateDict helpers: slice bookkeeping only (no I/O).
#include "dnpo/ckpt/state_dict.h"

#include <algorithm>

#include <ATen/ATen.h>

#include "dnpo/common/error.h"

namespace dnpo::ckpt {

std::int64_t TensorSlice::numel() const {
  return data.defined() ? data.numel() : 0;
}

std::int64_t TensorSlice::global_numel() const {
  std::int64_t n = 1;
  for (const auto d : shape) {
    n *= d;
  }
  return n;
}

SliceRange even_slice(std::int64_t global_numel, int rank, int world) {
  DNPO_CHECK_WITH(CheckpointError,
                  world > 0 && rank >= 0 && rank < world && global_numel >= 0,
                  "even_slice: bad arguments; got global_numel {}, rank {}, world {}",
                  global_numel,
                  rank,
                  world);
  const std::int64_t per = (global_numel + world - 1) / world;
  const std::int64_t begin = std::min(global_numel, per * rank);
  const std::int64_t end = std::min(global_numel, begin + per);
  return {begin, end - begin};
}

TensorSlice& StateDict::add(std::string name,
                            std::vector<std::int64_t> shape,
                            std::int64_t offset,
                            at::Tensor data) {
  TensorSlice slice;
  slice.name = std::move(name);
  slice.shape = std::move(shape);
  slice.dtype = data.defined() ? data.scalar_type() : at::kFloat;
  slice.offset = offset;
  slice.data = std::move(data);
  tensors.push_back(std::move(slice));
  return tensors.back();
}

TensorSlice& StateDict::add_even_slice(std::string name,
                                       const at::Tensor& full,
                                       int rank,
                                       int world) {
  const auto range = even_slice(full.numel(), rank, world);
  auto flat = full.reshape({-1}).narrow(0, range.offset, range.numel).contiguous().clone();
  TensorSlice& slice = add(std::move(name), full.sizes().vec(), range.offset, std::move(flat));
  slice.dtype = full.scalar_type();
  return slice;
}

TensorSlice& StateDict::add_request(std::string name,
                                    std::vector<std::int64_t> shape,
                                    std::int64_t offset,
                                    std::int64_t numel,
                                    at::ScalarType dtype) {
  TensorSlice& slice =
      add(std::move(name), std::move(shape), offset, at::zeros({numel}, at::dtype(dtype)));
  slice.dtype = dtype;
  return slice;
}

const TensorSlice* StateDict::find(const std::string& name) const {
  const auto it = std::find_if(
      tensors.begin(), tensors.end(), [&](const TensorSlice& t) { return t.name == name; });
  return it == tensors.end() ? nullptr : &*it;
}

const TensorSlice& StateDict::at(const std::string& name) const {
  const TensorSlice* slice = find(name);
  DNPO_CHECK_WITH(CheckpointError, slice != nullptr, "state dict has no tensor '{}'", name);
  return *slice;
}

}  // namespace dnpo::ckpt
