// Chat template layout: BOS, literal pieces, prompt text, EOS placeholders, response + EOS.
#include "dnpo/data/chat_template.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "dnpo/common/error.h"
#include "expect_error.h"

namespace dnpo::data {
namespace {

std::vector<std::int64_t> concat(std::initializer_list<std::vector<std::int64_t>> parts) {
  std::vector<std::int64_t> out;
  for (const auto& part : parts) {
    out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}

TEST(ChatTemplate, DefaultTemplateLayout) {
  const ByteTokenizer tok;
  const config::ChatConfig cfg;  // "<|user|>\n{prompt}{eos}\n<|assistant|>\n", add_bos
  const ChatTemplate chat(cfg, tok);
  const auto ids = chat.encode_prompt("123+456=");
  const auto expected = concat({{ByteTokenizer::kBosId},
                                tok.encode("<|user|>\n"),
                                tok.encode("123+456="),
                                {ByteTokenizer::kEosId},
                                tok.encode("\n<|assistant|>\n")});
  EXPECT_EQ(ids, expected);
  EXPECT_EQ(tok.decode(ids), "<|user|>\n123+456=\n<|assistant|>\n");
}

TEST(ChatTemplate, ResponseEndsWithEos) {
  const ByteTokenizer tok;
  const ChatTemplate chat(config::ChatConfig{}, tok);
  const auto ids = chat.encode_response("579");
  EXPECT_EQ(ids, concat({tok.encode("579"), {ByteTokenizer::kEosId}}));
  EXPECT_EQ(chat.encode_response(""), std::vector<std::int64_t>{ByteTokenizer::kEosId});
}

TEST(ChatTemplate, SeveralEosNoBosAndPromptAtEdges) {
  const ByteTokenizer tok;
  config::ChatConfig cfg;
  cfg.prompt_template = "{eos}Q:{prompt}{eos}{eos}";
  cfg.add_bos = false;
  const ChatTemplate chat(cfg, tok);
  const std::int64_t eos = ByteTokenizer::kEosId;
  EXPECT_EQ(chat.encode_prompt("hi"), concat({{eos}, tok.encode("Q:hi"), {eos, eos}}));

  cfg.prompt_template = "{prompt}";
  EXPECT_EQ(ChatTemplate(cfg, tok).encode_prompt("rev abc"), tok.encode("rev abc"));
}

TEST(ChatTemplate, PromptTextIsNotParsedForPlaceholders) {
  const ByteTokenizer tok;
  const ChatTemplate chat(config::ChatConfig{}, tok);
  const auto ids = chat.encode_prompt("say {eos}");
  EXPECT_EQ(tok.decode(ids), "<|user|>\nsay {eos}\n<|assistant|>\n");
}

TEST(ChatTemplate, TemplateWithoutPromptIsConfigError) {
  const ByteTokenizer tok;
  config::ChatConfig cfg;
  cfg.prompt_template = "<|user|>\n{eos}";
  EXPECT_ERROR(
      ConfigError, [&] { ChatTemplate chat(cfg, tok); }, "chat.prompt_template");
  cfg.prompt_template = "{prompt}{prompt}";
  EXPECT_THROW(ChatTemplate(cfg, tok), ConfigError);
}

}  // namespace
}  // namespace dnpo::data
