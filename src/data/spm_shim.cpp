// A C interface over libsentencepiece, built as its own module (libdnpo_spm_shim.so) and loaded
// with dlopen(RTLD_LOCAL | RTLD_DEEPBIND). Debian's libsentencepiece carries its own copy of
// protobuf-lite 3.14 and exports its symbols; in one symbol scope with LibTorch's libprotobuf 3.21
// either LibTorch crashes at start-up or SentencePiece aborts on a version check. Isolated like
// this, each keeps its own protobuf. Only plain C types cross this boundary.
#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <sentencepiece_processor.h>

namespace {

void copy_message(const std::string& message, char* err, std::size_t err_len) {
  if (err != nullptr && err_len > 0) {
    std::strncpy(err, message.c_str(), err_len - 1);
    err[err_len - 1] = '\0';
  }
}

}  // namespace

extern "C" {

/// A loaded model, or null with the reason in err.
void* dnpo_spm_open(const char* path, char* err, std::size_t err_len) {
  // No exception may cross this C boundary: a protobuf that is not SentencePiece's own (the shim
  // loaded without RTLD_DEEPBIND, as in sanitizer builds) throws from Load.
  try {
    auto processor = std::make_unique<sentencepiece::SentencePieceProcessor>();
    const auto status = processor->Load(path);
    if (!status.ok()) {
      copy_message(status.ToString(), err, err_len);
      return nullptr;
    }
    return processor.release();
  } catch (const std::exception& e) {
    copy_message(e.what(), err, err_len);
    return nullptr;
  }
}

void dnpo_spm_close(void* handle) {
  delete static_cast<sentencepiece::SentencePieceProcessor*>(handle);
}

/// vocab size, bos, eos, pad, unk ids (-1 when the model has none).
void dnpo_spm_info(void* handle, int* vocab, int* bos, int* eos, int* pad) {
  const auto* p = static_cast<const sentencepiece::SentencePieceProcessor*>(handle);
  *vocab = p->GetPieceSize();
  *bos = p->bos_id();
  *eos = p->eos_id();
  *pad = p->pad_id();
}

int dnpo_spm_is_control(void* handle, int id) {
  return static_cast<const sentencepiece::SentencePieceProcessor*>(handle)->IsControl(id) ? 1 : 0;
}

/// Encodes text into ids; returns how many ids the text has (write at most cap), or -1 with err.
long dnpo_spm_encode(void* handle,
                     const char* text,
                     std::size_t len,
                     int* ids,
                     std::size_t cap,
                     char* err,
                     std::size_t err_len) {
  std::vector<int> pieces;
  const auto status = static_cast<const sentencepiece::SentencePieceProcessor*>(handle)->Encode(
      std::string(text, len), &pieces);
  if (!status.ok()) {
    copy_message(status.ToString(), err, err_len);
    return -1;
  }
  std::memcpy(ids, pieces.data(), std::min(cap, pieces.size()) * sizeof(int));
  return static_cast<long>(pieces.size());
}

/// Decodes ids into text; returns the text's length in bytes (write at most cap), or -1 with err.
long dnpo_spm_decode(void* handle,
                     const int* ids,
                     std::size_t n,
                     char* out,
                     std::size_t cap,
                     char* err,
                     std::size_t err_len) {
  std::string text;
  const auto status = static_cast<const sentencepiece::SentencePieceProcessor*>(handle)->Decode(
      std::vector<int>(ids, ids + n), &text);
  if (!status.ok()) {
    copy_message(status.ToString(), err, err_len);
    return -1;
  }
  // `out` is a length-counted buffer (the length is returned), not a C string: no NUL is wanted.
  // NOLINTNEXTLINE(bugprone-not-null-terminated-result): length-counted, see above
  std::memcpy(out, text.data(), std::min(cap, text.size()));
  return static_cast<long>(text.size());
}

}  // extern "C"
