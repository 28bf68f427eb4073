// JSONL datasets: the prompt, pair and multiple-choice readers on arbitrary text. Records that
// are accepted must have what the readers promise (a non-empty prompt, two or more choices and a
// label among them).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "dnpo/data/jsonl.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  dnpo::fuzz::expect_clean([&] {
    for (const auto& r : dnpo::data::parse_prompts_jsonl(text, "fuzz.jsonl")) {
      dnpo::fuzz::require(!r.prompt.empty(), "prompt records have a prompt");
    }
  });
  dnpo::fuzz::expect_clean([&] { dnpo::data::parse_pairs_jsonl(text, "fuzz.jsonl"); });
  dnpo::fuzz::expect_clean([&] {
    for (const auto& r : dnpo::data::parse_choices_jsonl(text, "fuzz.jsonl")) {
      dnpo::fuzz::require(r.choices.size() >= 2, "at least two choices");
      dnpo::fuzz::require(r.label >= 0 && r.label < static_cast<int>(r.choices.size()),
                          "label among the choices");
    }
  });
  return 0;
}
