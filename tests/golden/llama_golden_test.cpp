// Golden tests of the Llama decoder: dnpo's fp32 forward (hidden, logits, sequence log-probs)
// against tests/reference/llama_reference.py (float64). Does not test bf16 or the KV cache.
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dnpo/model/hf_io.h"
#include "dnpo/model/llama.h"
#include "dnpo/train/dnpo_loss.h"
#include "golden_util.h"

namespace dnpo::golden {
namespace {

// fp32 forward vs the float64 reference (rounded to fp32): |a − e| <= atol + rtol·|e|.
constexpr double kHiddenAtol = 1e-5;
constexpr double kHiddenRtol = 1e-4;
constexpr double kLogitsAtol = 1e-5;
constexpr double kLogitsRtol = 1e-4;
constexpr double kLogpAtol = 1e-5;  // seq log-probs are sums of ~4 terms of size ~4
constexpr double kLogpRtol = 1e-4;
// The same sequence left- and right-padded: equal up to fp32 rounding.
constexpr double kPaddingAtol = 1e-5;

// Rows (b, t) with mask[b, t] == 1 of x (B, T, ...), as (M, ...): pad positions are undefined.
at::Tensor real_rows(const at::Tensor& x, const at::Tensor& mask) {
  const auto rows = mask.reshape({-1}).nonzero().squeeze(1);
  return x.reshape({mask.numel(), -1}).index_select(0, rows);
}

// hidden, logits and seq_logps of expected.safetensors for one model case.
void check_forward(const std::string& name) {
  const auto dir = golden_dir() + "/" + name;
  ASSERT_TRUE(golden_present(dir));
  const auto model = model::load_hf_model(dir);
  const auto file = dir + "/expected.safetensors";
  const auto expected = read_tensors(file);
  const auto& ids = tensor_at(expected, "input_ids", file);
  const auto& attention = tensor_at(expected, "attention_mask", file);
  const auto& loss_mask = tensor_at(expected, "loss_mask", file);

  at::NoGradGuard no_grad;
  const auto hidden = model.forward_hidden(ids, attention);  // (B, T, C)
  const auto logits = model.logits(hidden);                  // (B, T, V)
  const auto logps = train::sequence_logprobs(hidden, model.lm_head(), ids, loss_mask);  // (B,)

  EXPECT_TRUE(all_close(name + "/hidden",
                        real_rows(hidden, attention),
                        real_rows(tensor_at(expected, "hidden", file), attention),
                        kHiddenAtol,
                        kHiddenRtol));
  EXPECT_TRUE(all_close(name + "/logits",
                        real_rows(logits, attention),
                        real_rows(tensor_at(expected, "logits", file), attention),
                        kLogitsAtol,
                        kLogitsRtol));
  EXPECT_TRUE(all_close(
      name + "/seq_logps", logps, tensor_at(expected, "seq_logps", file), kLogpAtol, kLogpRtol));
}

// same_rows.safetensors: one sequence left-padded (row 0) and right-padded (row 1).
void check_padding(const std::string& name) {
  const auto dir = golden_dir() + "/" + name;
  ASSERT_TRUE(golden_present(dir));
  const auto model = model::load_hf_model(dir);
  const auto file = dir + "/same_rows.safetensors";
  const auto expected = read_tensors(file);
  const auto& ids = tensor_at(expected, "input_ids", file);
  const auto& attention = tensor_at(expected, "attention_mask", file);
  const auto& loss_mask = tensor_at(expected, "loss_mask", file);

  at::NoGradGuard no_grad;
  const auto hidden = model.forward_hidden(ids, attention);  // (2, T, C)
  const auto logps = train::sequence_logprobs(hidden, model.lm_head(), ids, loss_mask);  // (2,)

  EXPECT_TRUE(all_close(name + "/same_rows.seq_logps",
                        logps,
                        tensor_at(expected, "seq_logps", file),
                        kLogpAtol,
                        kLogpRtol));
  EXPECT_TRUE(all_close(
      name + "/same_rows.seq_logps left vs right", logps[0], logps[1], kPaddingAtol, 0.0));
  EXPECT_TRUE(all_close(name + "/same_rows.hidden left vs right (real positions)",
                        real_rows(hidden[0], attention[0]),
                        real_rows(hidden[1], attention[1]),
                        kPaddingAtol,
                        0.0));
}

TEST(LlamaGolden, GqaTiedForwardMatchesReference) {
  check_forward("gqa_tied");
}

TEST(LlamaGolden, MhaUntiedForwardMatchesReference) {
  check_forward("mha_untied");
}

TEST(LlamaGolden, GqaTiedLeftAndRightPaddingAgree) {
  check_padding("gqa_tied");
}

TEST(LlamaGolden, MhaUntiedLeftAndRightPaddingAgree) {
  check_padding("mha_untied");
}

}  // namespace
}  // namespace dnpo::golden
