// Chat templates: the input's first line is chat.prompt_template ("\n" written as \n), the rest
// the prompt. Encoding with the byte tokenizer must give only ids the tokenizer has.
#include <cstddef>
#include <cstdint>
#include <string>

#include "dnpo/config/config.h"
#include "dnpo/data/chat_template.h"
#include "dnpo/data/tokenizer.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const auto newline = input.find('\n');
  std::string tmpl = input.substr(0, newline);
  const std::string prompt = newline == std::string::npos ? "" : input.substr(newline + 1);
  for (std::size_t at = tmpl.find("\\n"); at != std::string::npos; at = tmpl.find("\\n", at + 1)) {
    tmpl.replace(at, 2, "\n");
  }
  static const dnpo::data::ByteTokenizer tokenizer;
  dnpo::fuzz::expect_clean([&] {
    dnpo::config::ChatConfig cfg;
    cfg.prompt_template = tmpl;
    cfg.add_bos = (size % 2) == 0;
    const dnpo::data::ChatTemplate chat(cfg, tokenizer);
    for (const auto id : chat.encode_prompt(prompt)) {
      dnpo::fuzz::require(id >= 0 && id < tokenizer.vocab_size(), "prompt ids in the vocabulary");
    }
    for (const auto id : chat.encode_response(prompt)) {
      dnpo::fuzz::require(id >= 0 && id < tokenizer.vocab_size(), "answer ids in the vocabulary");
    }
  });
  return 0;
}
