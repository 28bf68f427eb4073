// Byte and SentencePiece tokenizers, and the factory keyed by [tokenizer] kind.
// SentencePiece is hidden behind a pointer so no header outside this file includes it.
#include "dnpo/data/tokenizer.h"

#include <array>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "dnpo/common/error.h"
#include "spm_library.h"

namespace dnpo::data {

// --- ByteTokenizer ---

namespace {

// A model may sample any byte: each invalid UTF-8 sequence becomes U+FFFD, exactly as dnpo's
// JSON writers replace it, so the verifier scores the text that a judge receives and a samples
// file shows.
std::string valid_utf8(std::string text) {
  using Json = nlohmann::json;
  return Json::parse(Json(std::move(text)).dump(-1, ' ', false, Json::error_handler_t::replace))
      .get<std::string>();
}

}  // namespace

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
    DNPO_CHECK_WITH(DataError, id >= 0, "byte tokenizer: cannot decode negative token id {}", id);
    if (id < 256) {
      text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
    }
  }
  return valid_utf8(std::move(text));
}

bool ByteTokenizer::is_special(std::int64_t id) const {
  return id >= 256 && id < kVocabSize;
}

// --- SentencePieceTokenizer ---

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& path) : path_(path) {
  std::error_code ec;
  DNPO_CHECK_WITH(DataError,
                  std::filesystem::is_regular_file(path, ec),
                  "SentencePiece model not found: '{}'; expected a tokenizer.model file (config "
                  "key tokenizer.path)",
                  path);
  const auto& spm = detail::spm_library();
  std::array<char, 512> err{};
  void* handle = spm.open(path.c_str(), err.data(), err.size());
  DNPO_CHECK_WITH(DataError,
                  handle != nullptr,
                  "cannot load SentencePiece model '{}': {}; expected a SentencePiece "
                  "tokenizer.model (tokenizer.path)",
                  path,
                  err.data());
  handle_ = std::shared_ptr<void>(handle, spm.close);
  int vocab = 0;
  int bos = -1;
  int eos = -1;
  int pad = -1;
  spm.info(handle, &vocab, &bos, &eos, &pad);
  vocab_size_ = vocab;
  bos_id_ = bos;
  eos_id_ = eos;
  DNPO_CHECK_WITH(DataError,
                  eos_id_ >= 0 && eos_id_ < vocab_size_,
                  "SentencePiece model '{}' has no EOS piece (eos_id {}); expected a model trained "
                  "with an eos_id",
                  path,
                  eos_id_);
  pad_id_ = pad >= 0 ? pad : eos_id_;
}

namespace {

/// Runs the shim's encode or decode (spm_library.h), which share one protocol: shim_call(out,
/// out_size, err, err_size) fills `out` and returns the length of the result, which may pass
/// out_size (then `out` grows to it and the call runs again; the callers' first guesses make
/// that rare), or returns < 0 with the reason in `err`. Leaves `out` holding just the result.
template <typename Buffer, typename ShimCall>
void run_spm(Buffer& out, const char* what, const std::string& model_path, ShimCall shim_call) {
  std::array<char, 512> err{};
  long n = shim_call(out.data(), out.size(), err.data(), err.size());
  if (n > static_cast<long>(out.size())) {
    out.resize(static_cast<std::size_t>(n));
    n = shim_call(out.data(), out.size(), err.data(), err.size());
  }
  DNPO_CHECK_WITH(
      DataError, n >= 0, "SentencePiece {} failed (model '{}'): {}", what, model_path, err.data());
  out.resize(static_cast<std::size_t>(n));
}

}  // namespace

std::vector<std::int64_t> SentencePieceTokenizer::encode(const std::string& text) const {
  const auto& spm = detail::spm_library();
  std::vector<int> pieces(text.size() + 8);  // more pieces than bytes is rare
  run_spm(pieces, "encode", path_, [&](auto... out_and_err) {
    return spm.encode(handle_.get(), text.data(), text.size(), out_and_err...);
  });
  return {pieces.begin(), pieces.end()};
}

std::string SentencePieceTokenizer::decode(const std::vector<std::int64_t>& ids) const {
  std::vector<int> pieces;
  pieces.reserve(ids.size());
  for (const std::int64_t id : ids) {
    DNPO_CHECK_WITH(
        DataError, id >= 0, "SentencePiece tokenizer: cannot decode negative token id {}", id);
    if (id < vocab_size_ && !is_special(id)) {
      pieces.push_back(static_cast<int>(id));
    }
  }
  const auto& spm = detail::spm_library();
  std::string text(pieces.size() * 16 + 16, '\0');
  run_spm(text, "decode", path_, [&](auto... out_and_err) {
    return spm.decode(handle_.get(), pieces.data(), pieces.size(), out_and_err...);
  });
  return text;
}

bool SentencePieceTokenizer::is_special(std::int64_t id) const {
  if (id < 0 || id >= vocab_size_) {
    return false;
  }
  return id == bos_id_ || id == eos_id_ || id == pad_id_ ||
         detail::spm_library().is_control(handle_.get(), static_cast<int>(id)) != 0;
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
            "unknown tokenizer.kind \"{}\"; expected \"byte\" or \"sentencepiece\"",
            cfg.kind);
  return nullptr;
}

}  // namespace dnpo::data
