// safetensors files (HF checkpoints dnpo imports): the 8-byte length, the JSON header checked
// against the file, and a read of the first elements of every tensor it accepts. The reader
// takes a path, so each input is written to a file of this process first.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>

#include <ATen/ATen.h>
#include <unistd.h>

#include "dnpo/model/safetensors.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::string path = "/tmp/dnpo_fuzz_safetensors_" + std::to_string(getpid());
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  dnpo::fuzz::expect_clean([&] {
    for (const auto& entry : dnpo::model::read_safetensors_header(path)) {
      const long double end = static_cast<long double>(entry.data_begin) +
                              static_cast<long double>(entry.numel()) *
                                  static_cast<long double>(at::elementSize(entry.dtype));
      dnpo::fuzz::require(end <= static_cast<long double>(size), "tensor data inside the file");
      const auto n = std::min<std::int64_t>(entry.numel(), 16);
      const auto t = dnpo::model::read_safetensors_range(path, entry, 0, n);
      dnpo::fuzz::require(t.numel() == n, "range read gives the elements asked for");
    }
  });
  return 0;
}
