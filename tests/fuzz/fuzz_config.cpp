// TOML config mapping: parse_config on arbitrary text, then validate; a config that parses must
// survive to_toml → parse_config unchanged (to_toml's promise).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "dnpo/config/loader.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  dnpo::fuzz::expect_clean([&] {
    const auto cfg = dnpo::config::parse_config(text, "fuzz.toml");
    dnpo::fuzz::expect_clean([&] { dnpo::config::validate(cfg, 2); });
    const auto written = dnpo::config::to_toml(cfg);
    const auto again = dnpo::config::parse_config(written, "fuzz-roundtrip.toml");
    dnpo::fuzz::require(dnpo::config::to_toml(again) == written, "to_toml round trip");
  });
  return 0;
}
