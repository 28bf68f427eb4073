// SentencePiece inside a process that also loads LibTorch (and so libprotobuf): Debian's
// libsentencepiece carries its own protobuf, and sharing one symbol scope crashes at start-up or
// aborts on load. The tokenizer loads it through a shim in a private scope; this proves it.
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dnpo/data/tokenizer.h"

namespace dnpo {
namespace {

TEST(SentencePieceWithTorch, LoadsEncodesAndDecodesNextToLibTorch) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "sanitizer builds load the shim without RTLD_DEEPBIND (their runtimes cannot "
                  "interpose under it), so its SentencePiece meets LibTorch's protobuf";
#endif
  if (std::system("command -v spm_train > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "spm_train (Debian package sentencepiece) is not installed";
  }
  const auto dir = std::filesystem::path(::testing::TempDir()) / "spm_with_torch";
  std::filesystem::create_directories(dir);
  {
    std::ofstream corpus(dir / "corpus.txt");
    for (int i = 0; i < 400; ++i) {
      corpus << "the quick brown fox " << i << " jumps over the lazy dog\n";
    }
  }
  const std::string cmd = "spm_train --input=" + (dir / "corpus.txt").string() +
                          " --model_prefix=" + (dir / "m").string() +
                          " --vocab_size=120 --model_type=bpe > " + (dir / "log").string() +
                          " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "spm_train failed; see " << (dir / "log").string();

  const auto t = at::ones({2, 2}).matmul(at::ones({2, 2}));  // LibTorch is live in this process
  ASSERT_EQ(t.sum().item<float>(), 8.0F);
  const data::SentencePieceTokenizer tokenizer((dir / "m.model").string());
  const std::string text = "the lazy fox jumps";
  const auto ids = tokenizer.encode(text);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(tokenizer.decode(ids), text);
  EXPECT_EQ(tokenizer.vocab_size(), 120);
}

}  // namespace
}  // namespace dnpo
