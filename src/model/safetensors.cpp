// safetensors reader/writer; see safetensors.h. Header JSON via nlohmann-json.
#include "dnpo/model/safetensors.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "dnpo/common/error.h"

namespace dnpo::model {
namespace {

struct DtypeName {
  const char* name;
  at::ScalarType type;
};
constexpr std::array<DtypeName, 9> kDtypes{{{"F32", at::kFloat},
                                            {"F16", at::kHalf},
                                            {"BF16", at::kBFloat16},
                                            {"F64", at::kDouble},
                                            {"I64", at::kLong},
                                            {"I32", at::kInt},
                                            {"U8", at::kByte},
                                            {"BOOL", at::kBool},
                                            {"I8", at::kChar}}};

at::ScalarType dtype_from_name(const std::string& name,
                               const std::string& path,
                               const std::string& tensor) {
  for (const auto& d : kDtypes) {
    if (name == d.name) {
      return d.type;
    }
  }
  DNPO_FAIL(DataError, "{}: tensor '{}' has unsupported dtype '{}'", path, tensor, name);
  return at::kFloat;
}

const char* name_from_dtype(at::ScalarType type) {
  for (const auto& d : kDtypes) {
    if (type == d.type) {
      return d.name;
    }
  }
  DNPO_FAIL(DataError, "safetensors: cannot write dtype {}", type);
  return "";
}

}  // namespace

std::int64_t SafetensorsEntry::numel() const {
  std::int64_t n = 1;
  for (const auto dim : shape) {
    n *= dim;
  }
  return n;
}

std::vector<SafetensorsEntry> read_safetensors_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  DNPO_CHECK_WITH(DataError, in.good(), "cannot open safetensors file '{}'", path);
  const auto file_size = static_cast<std::uint64_t>(std::filesystem::file_size(path));
  std::uint64_t header_len = 0;
  std::array<unsigned char, 8> len_bytes{};
  in.read(reinterpret_cast<char*>(len_bytes.data()), 8);
  DNPO_CHECK_WITH(DataError, in.gcount() == 8, "{}: file too short for a safetensors header", path);
  for (auto it = len_bytes.rbegin(); it != len_bytes.rend(); ++it) {  // little-endian u64
    header_len = (header_len << 8U) | *it;
  }
  DNPO_CHECK_WITH(DataError,
                  header_len <= file_size - 8 && header_len < (100ULL << 20U),
                  "{}: header length {} exceeds the file size {}",
                  path,
                  header_len,
                  file_size);
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(header);
  } catch (const nlohmann::json::exception& e) {
    DNPO_FAIL(DataError, "{}: safetensors header is not valid JSON: {}", path, e.what());
  }
  DNPO_CHECK_WITH(DataError, meta.is_object(), "{}: safetensors header is not a JSON object", path);
  const std::uint64_t data_start = 8 + header_len;
  const std::uint64_t data_size = file_size - data_start;
  std::vector<SafetensorsEntry> entries;
  for (const auto& [name, info] : meta.items()) {
    if (name == "__metadata__") {
      continue;
    }
    try {
      SafetensorsEntry e;
      e.name = name;
      e.dtype = dtype_from_name(info.at("dtype").get<std::string>(), path, name);
      e.shape = info.at("shape").get<std::vector<std::int64_t>>();
      const auto offsets = info.at("data_offsets").get<std::vector<std::uint64_t>>();
      DNPO_CHECK_WITH(DataError,
                      offsets.size() == 2 && offsets[0] <= offsets[1] && offsets[1] <= data_size,
                      "{}: tensor '{}' has data_offsets outside the file",
                      path,
                      name);
      // The byte count without overflow: a crafted shape (found by fuzzing) whose product wrapped
      // to the size of its data_offsets was accepted, and then read past the end of the file.
      std::uint64_t bytes = at::elementSize(e.dtype);
      for (const auto dim : e.shape) {
        DNPO_CHECK_WITH(DataError, dim >= 0, "{}: tensor '{}' has a negative dim", path, name);
        DNPO_CHECK_WITH(
            DataError,
            !__builtin_mul_overflow(bytes, static_cast<std::uint64_t>(dim), &bytes) &&
                bytes <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
            "{}: tensor '{}' has a shape too large for any file",
            path,
            name);
      }
      DNPO_CHECK_WITH(DataError,
                      bytes == offsets[1] - offsets[0],
                      "{}: tensor '{}' has {} bytes; its shape and dtype need {}",
                      path,
                      name,
                      offsets[1] - offsets[0],
                      bytes);
      e.data_begin = data_start + offsets[0];
      entries.push_back(std::move(e));
    } catch (const nlohmann::json::exception& e) {
      DNPO_FAIL(
          DataError, "{}: tensor '{}' has a malformed header entry: {}", path, name, e.what());
    }
  }
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    return a.data_begin < b.data_begin;
  });
  return entries;
}

at::Tensor read_safetensors_range(const std::string& path,
                                  const SafetensorsEntry& entry,
                                  std::int64_t offset,
                                  std::int64_t numel) {
  DNPO_CHECK_WITH(DataError,
                  offset >= 0 && numel >= 0 && offset + numel <= entry.numel(),
                  "{}: elements [{}, {}) are outside tensor '{}' of {}",
                  path,
                  offset,
                  offset + numel,
                  entry.name,
                  entry.numel());
  auto out = at::empty({numel}, at::TensorOptions().dtype(entry.dtype));
  if (numel == 0) {
    return out;
  }
  std::ifstream in(path, std::ios::binary);
  DNPO_CHECK_WITH(DataError, in.good(), "cannot open safetensors file '{}'", path);
  const auto element = static_cast<std::int64_t>(at::elementSize(entry.dtype));
  in.seekg(static_cast<std::streamoff>(entry.data_begin + offset * element));
  in.read(static_cast<char*>(out.data_ptr()), static_cast<std::streamsize>(numel * element));
  DNPO_CHECK_WITH(
      DataError, in.gcount() == numel * element, "{}: short read of tensor '{}'", path, entry.name);
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> read_safetensors(const std::string& path) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& e : read_safetensors_header(path)) {
    out.emplace_back(e.name, read_safetensors_range(path, e, 0, e.numel()).view(e.shape));
  }
  return out;
}

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  std::vector<at::Tensor> contiguous;
  contiguous.reserve(tensors.size());
  std::uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    auto t = tensor.detach().to(at::kCPU).contiguous();
    const auto bytes = static_cast<std::uint64_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", name_from_dtype(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(t);
  }
  if (!metadata.empty()) {
    header["__metadata__"] = metadata;
  }
  std::string text = header.dump();
  while ((text.size() + 8) % 8 != 0) {
    text.push_back(' ');
  }
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    DNPO_CHECK_WITH(DataError, out.good(), "cannot write '{}'", tmp);
    std::uint64_t len = text.size();
    std::array<unsigned char, 8> len_bytes{};
    for (unsigned char& byte : len_bytes) {
      byte = static_cast<unsigned char>(len & 0xFFU);
      len >>= 8U;
    }
    out.write(reinterpret_cast<const char*>(len_bytes.data()), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& t : contiguous) {
      out.write(static_cast<const char*>(t.data_ptr()),
                static_cast<std::streamsize>(t.numel() * t.element_size()));
    }
    out.flush();
    DNPO_CHECK_WITH(DataError, out.good(), "write to '{}' failed (disk full?)", tmp);
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace dnpo::model
