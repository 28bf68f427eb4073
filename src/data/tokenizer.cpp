// Byte and SentencePiece tokenizers, and the factory keyed by [tokenizer] kind.
// SentencePiece is hidden behind a pointer so no header outside this file includes it.
#include "dnpo/data/tokenizer.h"

#include <filesystem>

#include <sentencepiece_processor.h>

#include "dnpo/common/error.h"

namespace dnpo::data {

// --- ByteTokenizer ---

std::vector<std::int64_t> ByteTokenizer::encode(const std::string& text) const {
  std::vector<std::int64_t> ids;
  ids.reserve(text.size());
  for (const char c : text) {
    ids.push_back(static_cast<unsigned char>(c));
  }
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<std::int64_t>& ids) const {
  std::string text;
  text.reserve(ids.size());
  for (const std::int64_t id : ids) {
    DNPO_CHECK_WITH(DataError, id >= 0, "byte tokenizer: cannot decode negative token id ", id);
    if (id < 256) {
      text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
    }
  }
  return text;
}

bool ByteTokenizer::is_special(std::int64_t id) const {
  return id >= 256 && id < kVocabSize;
}

// --- SentencePieceTokenizer ---

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& path)
    : path_(path), processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  std::error_code ec;
  DNPO_CHECK_WITH(DataError,
                  std::filesystem::is_regular_file(path, ec),
                  "SentencePiece model not found: '",
                  path,
                  "'; expected a tokenizer.model file (config key tokenizer.path)");
  const auto status = processor_->Load(path);
  DNPO_CHECK_WITH(DataError,
                  status.ok(),
                  "cannot load SentencePiece model '",
                  path,
                  "': ",
                  status.ToString(),
                  "; expected a SentencePiece tokenizer.model (tokenizer.path)");
  vocab_size_ = processor_->GetPieceSize();
  bos_id_ = processor_->bos_id();
  eos_id_ = processor_->eos_id();
  DNPO_CHECK_WITH(DataError,
                  eos_id_ >= 0 && eos_id_ < vocab_size_,
                  "SentencePiece model '",
                  path,
                  "' has no EOS piece (eos_id ",
                  eos_id_,
                  "); expected a model trained with an eos_id");
  pad_id_ = processor_->pad_id() >= 0 ? processor_->pad_id() : eos_id_;
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<std::int64_t> SentencePieceTokenizer::encode(const std::string& text) const {
  std::vector<int> pieces;
  const auto status = processor_->Encode(text, &pieces);
  DNPO_CHECK_WITH(DataError,
                  status.ok(),
                  "SentencePiece encode failed (model '",
                  path_,
                  "'): ",
                  status.ToString());
  return {pieces.begin(), pieces.end()};
}

std::string SentencePieceTokenizer::decode(const std::vector<std::int64_t>& ids) const {
  std::vector<int> pieces;
  pieces.reserve(ids.size());
  for (const std::int64_t id : ids) {
    DNPO_CHECK_WITH(
        DataError, id >= 0, "SentencePiece tokenizer: cannot decode negative token id ", id);
    if (id < vocab_size_ && !is_special(id)) {
      pieces.push_back(static_cast<int>(id));
    }
  }
  std::string text;
  const auto status = processor_->Decode(pieces, &text);
  DNPO_CHECK_WITH(DataError,
                  status.ok(),
                  "SentencePiece decode failed (model '",
                  path_,
                  "'): ",
                  status.ToString());
  return text;
}

bool SentencePieceTokenizer::is_special(std::int64_t id) const {
  if (id < 0 || id >= vocab_size_) {
    return false;
  }
  return id == bos_id_ || id == eos_id_ || id == pad_id_ ||
         processor_->IsControl(static_cast<int>(id));
}

// --- factory ---

std::unique_ptr<Tokenizer> make_tokenizer(const config::TokenizerConfig& cfg) {
  if (cfg.kind == "byte") {
    return std::make_unique<ByteTokenizer>();
  }
  if (cfg.kind == "sentencepiece") {
    DNPO_CHECK_WITH(ConfigError,
                    !cfg.path.empty(),
                    "tokenizer.path is empty; expected the path of a tokenizer.model when "
                    "tokenizer.kind = \"sentencepiece\"");
    return std::make_unique<SentencePieceTokenizer>(cfg.path);
  }
  DNPO_FAIL(ConfigError,
            "unknown tokenizer.kind \"",
            cfg.kind,
            "\"; expected \"byte\" or \"sentencepiece\"");
  return nullptr;
}

}  // namespace dnpo::data
