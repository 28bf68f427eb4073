// Tokenizers: text <-> token ids. A byte tokenizer for the tiny default and SentencePiece for
// Llama/Mistral/Zephyr tokenizer.model files. No chat formatting here (see chat_template.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dnpo/config/config.h"

namespace dnpo::data {

/// Text <-> ids. encode() never adds BOS/EOS; the chat template places them.
/// Implementations are immutable after construction and safe to share between threads.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  /// Ids of `text` without special tokens.
  virtual std::vector<std::int64_t> encode(const std::string& text) const = 0;
  /// Text of `ids`. Special ids (BOS, EOS, PAD, control pieces) and ids >= vocab_size() (the
  /// padding rows of a model's embedding) decode to nothing. Throws DataError on a negative id.
  virtual std::string decode(const std::vector<std::int64_t>& ids) const = 0;
  /// True for BOS, EOS, PAD and other control ids that carry no text.
  virtual bool is_special(std::int64_t id) const = 0;

  /// -1 when the tokenizer has no BOS.
  virtual std::int64_t bos_id() const = 0;
  virtual std::int64_t eos_id() const = 0;
  virtual std::int64_t pad_id() const = 0;
  /// Number of ids; every id encode() returns is in [0, vocab_size()).
  virtual int vocab_size() const = 0;

 protected:
  // Copy and move only through a concrete class, so a Tokenizer& cannot be sliced.
  Tokenizer() = default;
  Tokenizer(const Tokenizer&) = default;
  Tokenizer& operator=(const Tokenizer&) = default;
  Tokenizer(Tokenizer&&) = default;
  Tokenizer& operator=(Tokenizer&&) = default;
};

/// Ids 0..255 are the bytes of the UTF-8 text, then PAD 256, BOS 257, EOS 258. decode returns
/// valid UTF-8: bytes that do not form it (a model can sample any) become U+FFFD, as in JSON.
class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr std::int64_t kPadId = 256;
  static constexpr std::int64_t kBosId = 257;
  static constexpr std::int64_t kEosId = 258;
  static constexpr int kVocabSize = 259;

  std::vector<std::int64_t> encode(const std::string& text) const override;
  std::string decode(const std::vector<std::int64_t>& ids) const override;
  bool is_special(std::int64_t id) const override;
  std::int64_t bos_id() const override {
    return kBosId;
  }
  std::int64_t eos_id() const override {
    return kEosId;
  }
  std::int64_t pad_id() const override {
    return kPadId;
  }
  int vocab_size() const override {
    return kVocabSize;
  }
};

/// A SentencePiece model (tokenizer.model). BOS/EOS come from the model; PAD is the model's pad
/// id, or EOS when the model defines none. encode() applies the model's normaliser (so
/// decode(encode(s)) == s only for text the normaliser leaves unchanged).
class SentencePieceTokenizer final : public Tokenizer {
 public:
  /// Throws DataError naming `path` when the file is missing or not a SentencePiece model, or
  /// when the model has no EOS piece.
  explicit SentencePieceTokenizer(const std::string& path);
  ~SentencePieceTokenizer() override = default;
  SentencePieceTokenizer(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer& operator=(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer(SentencePieceTokenizer&&) = delete;
  SentencePieceTokenizer& operator=(SentencePieceTokenizer&&) = delete;

  std::vector<std::int64_t> encode(const std::string& text) const override;
  std::string decode(const std::vector<std::int64_t>& ids) const override;
  bool is_special(std::int64_t id) const override;
  std::int64_t bos_id() const override {
    return bos_id_;
  }
  std::int64_t eos_id() const override {
    return eos_id_;
  }
  std::int64_t pad_id() const override {
    return pad_id_;
  }
  int vocab_size() const override {
    return vocab_size_;
  }

 private:
  std::string path_;
  std::shared_ptr<void> handle_;  // the shim's processor (see src/data/spm_shim.cpp)
  std::int64_t bos_id_ = -1;
  std::int64_t eos_id_ = -1;
  std::int64_t pad_id_ = -1;
  int vocab_size_ = 0;
};

/// The tokenizer `[tokenizer]` names: kind "byte" or "sentencepiece" (reads `path`).
/// Throws ConfigError naming tokenizer.kind / tokenizer.path, DataError for a bad model file.
std::unique_ptr<Tokenizer> make_tokenizer(const config::TokenizerConfig& cfg);

}  // namespace dnpo::data
