// Parses [chat] prompt_template once into literal / {prompt} / {eos} segments and encodes with it.
#include "dnpo/data/chat_template.h"

#include "dnpo/common/error.h"

namespace dnpo::data {
namespace {

constexpr const char* kPromptPlaceholder = "{prompt}";
constexpr const char* kEosPlaceholder = "{eos}";

void append(std::vector<std::int64_t>& out, const std::vector<std::int64_t>& ids) {
  out.insert(out.end(), ids.begin(), ids.end());
}

}  // namespace

ChatTemplate::ChatTemplate(const config::ChatConfig& cfg, const Tokenizer& tokenizer)
    : tokenizer_(tokenizer), add_bos_(cfg.add_bos) {
  const std::string& text = cfg.prompt_template;
  const std::string prompt_key = kPromptPlaceholder;
  const std::string eos_key = kEosPlaceholder;

  int prompt_count = 0;
  std::string literal;
  auto flush_literal = [&] {
    if (!literal.empty()) {
      segments_.push_back({Segment::Kind::kLiteral, tokenizer_.encode(literal)});
      literal.clear();
    }
  };
  std::size_t pos = 0;
  while (pos < text.size()) {
    if (text.compare(pos, prompt_key.size(), prompt_key) == 0) {
      flush_literal();
      segments_.push_back({Segment::Kind::kPrompt, {}});
      ++prompt_count;
      pos += prompt_key.size();
    } else if (text.compare(pos, eos_key.size(), eos_key) == 0) {
      flush_literal();
      segments_.push_back({Segment::Kind::kEos, {}});
      pos += eos_key.size();
    } else {
      literal.push_back(text[pos]);
      ++pos;
    }
  }
  flush_literal();

  DNPO_CHECK_WITH(ConfigError,
                  prompt_count == 1,
                  "chat.prompt_template must contain \"{{prompt}}\" exactly once; got {} in "
                  "\"{}\"; expected e.g. \"<|user|>\\n{{prompt}}{{eos}}\\n<|assistant|>\\n\"",
                  prompt_count,
                  text);
  DNPO_CHECK_WITH(ConfigError,
                  !add_bos_ || tokenizer_.bos_id() >= 0,
                  "chat.add_bos = true but the tokenizer has no BOS token (bos_id {}); hint: set "
                  "chat.add_bos = false",
                  tokenizer_.bos_id());
}

std::vector<std::int64_t> ChatTemplate::encode_prompt(const std::string& prompt) const {
  std::vector<std::int64_t> ids;
  if (add_bos_) {
    ids.push_back(tokenizer_.bos_id());
  }
  for (const Segment& segment : segments_) {
    switch (segment.kind) {
      case Segment::Kind::kLiteral:
        append(ids, segment.ids);
        break;
      case Segment::Kind::kPrompt:
        append(ids, tokenizer_.encode(prompt));
        break;
      case Segment::Kind::kEos:
        ids.push_back(tokenizer_.eos_id());
        break;
    }
  }
  return ids;
}

std::vector<std::int64_t> ChatTemplate::encode_response(const std::string& answer) const {
  std::vector<std::int64_t> ids = tokenizer_.encode(answer);
  ids.push_back(tokenizer_.eos_id());
  return ids;
}

}  // namespace dnpo::data
