// What the checkpoint tests share: a deterministic demo state (values = global index, so every
// slicing can be checked exactly) and ways to damage files. Test-only; it reaches into the HDF5
// file directly (to find a dataset's bytes, to rewrite an attribute).
#pragma once

#include <cstdint>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <hdf5.h>

#include "dnpo/ckpt/state_dict.h"

namespace dnpo::test {

struct CkptSpec {
  std::string name;
  std::vector<std::int64_t> shape;
  at::ScalarType dtype;
};

/// Tensors crossing checksum chunks (1 Mi elements), small N-d ones, a 0-d, an empty, an int64.
inline std::vector<CkptSpec> ckpt_demo_specs() {
  return {{"model.embed_tokens.weight", {3, 700001}, at::kFloat},
          {"model.layers.3.q_proj.weight", {64, 64}, at::kFloat},
          {"noise.w", {7, 5, 3}, at::kFloat},
          {"opt.step", {}, at::kLong},
          {"empty", {0, 4}, at::kFloat},
          {"data.cursor", {1000}, at::kLong},
          {"big.exact_chunks", {2, 1048576}, at::kFloat}};
}

/// The full flattened values of demo tensor number k: fp32 index + k/4 (exact), int64 3·index+k.
inline at::Tensor ckpt_demo_values(const CkptSpec& spec, int k) {
  std::int64_t n = 1;
  for (const auto d : spec.shape) {
    n *= d;
  }
  const auto index = at::arange(n, at::kLong);
  if (spec.dtype == at::kLong) {
    return index * 3 + k;
  }
  return index.to(at::kFloat) + 0.25F * static_cast<float>(k);
}

/// This rank's even slices of the demo tensors, plus attributes and blobs.
inline ckpt::StateDict ckpt_demo_state(int rank, int world) {
  ckpt::StateDict state;
  const auto specs = ckpt_demo_specs();
  for (std::size_t k = 0; k < specs.size(); ++k) {
    const auto full = ckpt_demo_values(specs[k], static_cast<int>(k)).reshape(specs[k].shape);
    state.add_even_slice(specs[k].name, full, rank, world);
  }
  state.strings["phase"] = "train";
  state.strings["config"] = R"({"lr": 2e-6, "beta": 0.1})";
  state.strings["empty_string"] = "";
  state.ints["step"] = 120;
  state.floats["loss"] = 0.6123;
  state.blobs["prompts.json"] = R"([{"id": 1, "prompt": "hi"}])";
  state.blobs["binary"] = std::string("\0\x01\xff zero", 8);
  return state;
}

/// Requests for elements [offset, offset + numel) of every demo tensor (clamped to its size).
inline ckpt::StateDict ckpt_demo_requests(
    const std::function<ckpt::SliceRange(std::int64_t)>& pick) {
  ckpt::StateDict wanted;
  for (const auto& spec : ckpt_demo_specs()) {
    std::int64_t n = 1;
    for (const auto d : spec.shape) {
      n *= d;
    }
    const auto range = pick(n);
    wanted.add_request(spec.name, spec.shape, range.offset, range.numel, spec.dtype);
  }
  return wanted;
}

/// Whether every request of `got` holds the demo values at its offsets.
inline std::string ckpt_check_demo_values(const ckpt::StateDict& got) {
  const auto specs = ckpt_demo_specs();
  for (std::size_t k = 0; k < specs.size(); ++k) {
    const auto& t = got.at(specs[k].name);
    const auto want =
        ckpt_demo_values(specs[k], static_cast<int>(k)).narrow(0, t.offset, t.numel());
    if (t.numel() > 0 && !at::equal(t.data, want)) {
      return specs[k].name + " differs at offset " + std::to_string(t.offset);
    }
  }
  return {};
}

/// Flips bits of one byte of element `element` of `dataset` (e.g. "/tensors/noise.w") in the file.
inline void ckpt_flip_byte(const std::string& path,
                           const std::string& dataset,
                           std::int64_t element) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t dset = H5Dopen2(file, dataset.c_str(), H5P_DEFAULT);
  const hid_t type = H5Dget_type(dset);
  const haddr_t base = H5Dget_offset(dset);
  const auto size = static_cast<std::int64_t>(H5Tget_size(type));
  H5Tclose(type);
  H5Dclose(dset);
  H5Fclose(file);
  if (file < 0 || dset < 0 || base == HADDR_UNDEF) {
    throw std::runtime_error("ckpt_flip_byte: cannot locate " + dataset + " in " + path);
  }
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  const auto at =
      static_cast<std::streamoff>(base + static_cast<haddr_t>(element * size + (size > 1 ? 1 : 0)));
  f.seekg(at);
  char byte = 0;
  f.read(&byte, 1);
  byte = static_cast<char>(byte ^ 0x5a);
  f.seekp(at);
  f.write(&byte, 1);
  if (!f) {
    throw std::runtime_error("ckpt_flip_byte: cannot patch " + path);
  }
}

/// Rewrites the root attribute format_version.
inline void ckpt_set_format_version(const std::string& path, std::int64_t version) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  const hid_t attr = H5Aopen(file, "format_version", H5P_DEFAULT);
  const herr_t rc = H5Awrite(attr, H5T_NATIVE_INT64, &version);
  H5Aclose(attr);
  H5Fclose(file);
  if (file < 0 || attr < 0 || rc < 0) {
    throw std::runtime_error("ckpt_set_format_version: cannot patch " + path);
  }
}

}  // namespace dnpo::test
