// safetensors read/write (HF's format: 8-byte header length, JSON header, raw little-endian data).
// Reads F32, F16, BF16, F64, I64, I32, U8, BOOL; writes F32, BF16, I64 (tensors keep their dtype).
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace dnpo::model {

/// All tensors of a file, in header order; throws DataError naming the path and tensor on damage.
std::vector<std::pair<std::string, at::Tensor>> read_safetensors(const std::string& path);

/// Writes tensors (contiguous CPU copies are made); metadata goes into "__metadata__".
/// The file is written to path + ".tmp" and renamed, so a crash never leaves half a file.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace dnpo::model
