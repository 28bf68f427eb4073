// safetensors reader/writer; see safetensors.h. Header JSON via nlohmann-json.
#include "dnpo/model/safetensors.h"

#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

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
  DNPO_FAIL(DataError, path, ": tensor '", tensor, "' has unsupported dtype '", name, "'");
  return at::kFloat;
}

const char* name_from_dtype(at::ScalarType type) {
  for (const auto& d : kDtypes) {
    if (type == d.type) {
      return d.name;
    }
  }
  DNPO_FAIL(DataError, "safetensors: cannot write dtype ", type);
  return "";
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  DNPO_CHECK_WITH(DataError, in.good(), "cannot open safetensors file '", path, "'");
  const auto file_size = static_cast<std::uint64_t>(std::filesystem::file_size(path));
  std::uint64_t header_len = 0;
  std::array<unsigned char, 8> len_bytes{};
  in.read(reinterpret_cast<char*>(len_bytes.data()), 8);
  DNPO_CHECK_WITH(DataError, in.gcount() == 8, path, ": file too short for a safetensors header");
  for (auto it = len_bytes.rbegin(); it != len_bytes.rend(); ++it) {  // little-endian u64
    header_len = (header_len << 8U) | *it;
  }
  DNPO_CHECK_WITH(DataError,
                  header_len <= file_size - 8 && header_len < (100ULL << 20U),
                  path,
                  ": header length ",
                  header_len,
                  " exceeds the file size ",
                  file_size);
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(header);
  } catch (const nlohmann::json::exception& e) {
    DNPO_FAIL(DataError, path, ": safetensors header is not valid JSON: ", e.what());
  }
  DNPO_CHECK_WITH(DataError, meta.is_object(), path, ": safetensors header is not a JSON object");
  const std::uint64_t data_size = file_size - 8 - header_len;
  std::vector<char> data(data_size);
  in.read(data.data(), static_cast<std::streamsize>(data_size));
  DNPO_CHECK_WITH(DataError,
                  static_cast<std::uint64_t>(in.gcount()) == data_size,
                  path,
                  ": short read of tensor data");

  std::vector<std::tuple<std::uint64_t, std::string, at::Tensor>> ordered;
  for (const auto& [name, info] : meta.items()) {
    if (name == "__metadata__") {
      continue;
    }
    try {
      const auto type = dtype_from_name(info.at("dtype").get<std::string>(), path, name);
      const auto shape = info.at("shape").get<std::vector<std::int64_t>>();
      const auto offsets = info.at("data_offsets").get<std::vector<std::uint64_t>>();
      DNPO_CHECK_WITH(DataError,
                      offsets.size() == 2 && offsets[0] <= offsets[1] && offsets[1] <= data_size,
                      path,
                      ": tensor '",
                      name,
                      "' has data_offsets outside the file");
      std::int64_t numel = 1;
      for (const auto dim : shape) {
        DNPO_CHECK_WITH(DataError, dim >= 0, path, ": tensor '", name, "' has a negative dim");
        numel *= dim;
      }
      const auto bytes = static_cast<std::uint64_t>(numel) * at::elementSize(type);
      DNPO_CHECK_WITH(DataError,
                      bytes == offsets[1] - offsets[0],
                      path,
                      ": tensor '",
                      name,
                      "' has ",
                      offsets[1] - offsets[0],
                      " bytes; its shape and dtype need ",
                      bytes);
      auto tensor = at::empty(shape, at::TensorOptions().dtype(type));
      std::memcpy(tensor.data_ptr(), data.data() + offsets[0], bytes);
      ordered.emplace_back(offsets[0], name, tensor);
    } catch (const nlohmann::json::exception& e) {
      DNPO_FAIL(DataError, path, ": tensor '", name, "' has a malformed header entry: ", e.what());
    }
  }
  std::sort(ordered.begin(), ordered.end(), [](const auto& a, const auto& b) {
    return std::get<0>(a) < std::get<0>(b);
  });
  std::vector<std::pair<std::string, at::Tensor>> out;
  out.reserve(ordered.size());
  for (auto& [offset, name, tensor] : ordered) {
    out.emplace_back(name, tensor);
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
    DNPO_CHECK_WITH(DataError, out.good(), "cannot write '", tmp, "'");
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
    DNPO_CHECK_WITH(DataError, out.good(), "write to '", tmp, "' failed (disk full?)");
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace dnpo::model
