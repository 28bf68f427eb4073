// safetensors read/write (HF's format: 8-byte header length, JSON header, raw little-endian data).
// Reads F32, F16, BF16, F64, I64, I32, U8, BOOL; writes F32, BF16, I64 (tensors keep their dtype).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace dnpo::model {

/// One tensor's header entry.
struct SafetensorsEntry {
  std::string name;
  at::ScalarType dtype = at::kFloat;
  std::vector<std::int64_t> shape;
  std::uint64_t data_begin = 0;  ///< file offset of the tensor's first byte
  std::int64_t numel() const;
};
/// The header alone, checked against the file size; entries in data order.
std::vector<SafetensorsEntry> read_safetensors_header(const std::string& path);
/// Elements [offset, offset + numel) of a tensor's row-major flattening, reading only those
/// bytes: a 1-D tensor in the stored dtype (how each rank reads just its shard of a model).
at::Tensor read_safetensors_range(const std::string& path,
                                  const SafetensorsEntry& entry,
                                  std::int64_t offset,
                                  std::int64_t numel);
/// All tensors of a file, in data order; throws DataError naming the path and tensor on damage.
std::vector<std::pair<std::string, at::Tensor>> read_safetensors(const std::string& path);

/// Writes tensors (contiguous CPU copies are made); metadata goes into "__metadata__".
/// The file is written to path + ".tmp" and renamed, so a crash never leaves half a file.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace dnpo::model
