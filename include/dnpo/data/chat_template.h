// The chat template: how a prompt and a response become token ids. One template serves SFT,
// preference training and generation, so the model always sees the same layout.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dnpo/config/config.h"
#include "dnpo/data/tokenizer.h"

namespace dnpo::data {

/// prompt ids  = [BOS if chat.add_bos] + template with "{prompt}" -> encode(prompt text) and each
///               "{eos}" -> the EOS id; the literal text between placeholders is encoded piece by
///               piece (so a tokenizer never merges across a placeholder).
/// response ids = encode(answer) + [EOS].
/// Sample = prompt ids ++ response ids. Holds a reference to the tokenizer, which must outlive it.
class ChatTemplate {
 public:
  /// Throws ConfigError naming chat.prompt_template when "{prompt}" does not occur exactly once,
  /// and naming chat.add_bos when add_bos is set but the tokenizer has no BOS.
  ChatTemplate(const config::ChatConfig& cfg, const Tokenizer& tokenizer);

  std::vector<std::int64_t> encode_prompt(const std::string& prompt) const;
  std::vector<std::int64_t> encode_response(const std::string& answer) const;

  const Tokenizer& tokenizer() const {
    return tokenizer_;
  }

 private:
  /// One piece of the parsed template: literal text (ids cached), the prompt, or EOS.
  struct Segment {
    enum class Kind { kLiteral, kPrompt, kEos };
    Kind kind = Kind::kLiteral;
    std::vector<std::int64_t> ids;  ///< kLiteral only
  };

  const Tokenizer& tokenizer_;
  bool add_bos_ = true;
  std::vector<Segment> segments_;
};

}  // namespace dnpo::data
