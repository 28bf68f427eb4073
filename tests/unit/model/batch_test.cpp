// pad_batch (left/right padding, masks, pad_to) and truncate_sequence.
#include "dnpo/model/batch.h"

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dnpo/common/error.h"

namespace dnpo::model {
namespace {

std::vector<std::int64_t> row(const at::Tensor& t, std::int64_t b) {
  auto r = t[b].contiguous();
  return {r.data_ptr<std::int64_t>(), r.data_ptr<std::int64_t>() + r.numel()};
}

using Ids = std::vector<std::int64_t>;

TEST(PadBatch, RightPaddingMarksExactlyTheResponseTokens) {
  const std::vector<TokenSequence> seqs{{{1, 2, 3}, {4, 5}}, {{1, 7}, {8, 9, 10, 11}}};
  const auto batch = pad_batch(seqs, 99, PadSide::kRight);
  ASSERT_EQ(batch.input_ids.sizes(), at::IntArrayRef({2, 6}));
  EXPECT_EQ(row(batch.input_ids, 0), (Ids{1, 2, 3, 4, 5, 99}));
  EXPECT_EQ(row(batch.input_ids, 1), (Ids{1, 7, 8, 9, 10, 11}));
  EXPECT_EQ(row(batch.attention_mask, 0), (Ids{1, 1, 1, 1, 1, 0}));
  EXPECT_EQ(row(batch.attention_mask, 1), (Ids{1, 1, 1, 1, 1, 1}));
  EXPECT_EQ(row(batch.loss_mask, 0), (Ids{0, 0, 0, 1, 1, 0}));
  EXPECT_EQ(row(batch.loss_mask, 1), (Ids{0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(batch.num_response_tokens, 6);
  EXPECT_EQ(batch.loss_mask.sum().item<std::int64_t>(), batch.num_response_tokens);
  EXPECT_EQ(batch.input_ids.scalar_type(), at::kLong);
  EXPECT_EQ(batch.attention_mask.scalar_type(), at::kLong);
  EXPECT_EQ(batch.loss_mask.scalar_type(), at::kLong);
}

TEST(PadBatch, LeftPaddingMarksExactlyTheResponseTokens) {
  const std::vector<TokenSequence> seqs{{{1, 2, 3}, {4, 5}}, {{1, 7}, {8, 9, 10, 11}}};
  const auto batch = pad_batch(seqs, 99, PadSide::kLeft);
  EXPECT_EQ(row(batch.input_ids, 0), (Ids{99, 1, 2, 3, 4, 5}));
  EXPECT_EQ(row(batch.attention_mask, 0), (Ids{0, 1, 1, 1, 1, 1}));
  EXPECT_EQ(row(batch.loss_mask, 0), (Ids{0, 0, 0, 0, 1, 1}));
  EXPECT_EQ(row(batch.loss_mask, 1), (Ids{0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(batch.num_response_tokens, 6);
}

TEST(PadBatch, PadToWidensAndEmptyPromptsDropTheUnscorableFirstToken) {
  // A response with no prompt: its first token has no logits before it.
  const std::vector<TokenSequence> seqs{{{}, {4, 5, 6}}, {{1}, {}}};
  const auto right = pad_batch(seqs, 0, PadSide::kRight, 5);
  ASSERT_EQ(right.input_ids.size(1), 5);
  EXPECT_EQ(row(right.loss_mask, 0), (Ids{0, 1, 1, 0, 0}));
  EXPECT_EQ(row(right.loss_mask, 1), (Ids{0, 0, 0, 0, 0}));
  EXPECT_EQ(row(right.attention_mask, 1), (Ids{1, 0, 0, 0, 0}));
  EXPECT_EQ(right.num_response_tokens, 2);
  const auto left = pad_batch(seqs, 0, PadSide::kLeft, 5);
  EXPECT_EQ(row(left.loss_mask, 0), (Ids{0, 0, 0, 1, 1}));
  EXPECT_EQ(row(left.input_ids, 0), (Ids{0, 0, 4, 5, 6}));
  // pad_to smaller than the longest sequence does not cut.
  EXPECT_EQ(pad_batch(seqs, 0, PadSide::kRight, 2).input_ids.size(1), 3);
}

TEST(PadBatch, RejectsEmptyInput) {
  EXPECT_THROW(pad_batch({}, 0), Error);
  EXPECT_THROW(pad_batch(std::vector<TokenSequence>{TokenSequence{}, TokenSequence{}}, 0), Error);
}

TEST(TruncateSequence, LeavesShortSequencesAlone) {
  TokenSequence seq{{1, 2, 3}, {4, 5}};
  EXPECT_FALSE(truncate_sequence(seq, 5, 3));
  EXPECT_EQ(seq.prompt, (Ids{1, 2, 3}));
  EXPECT_EQ(seq.response, (Ids{4, 5}));
}

TEST(TruncateSequence, PromptKeepsItsLastTokensThenResponseIsCut) {
  TokenSequence seq{{1, 2, 3, 4, 5}, {6, 7, 8, 9}};
  EXPECT_TRUE(truncate_sequence(seq, 6, 3));
  EXPECT_EQ(seq.prompt, (Ids{3, 4, 5}));
  EXPECT_EQ(seq.response, (Ids{6, 7, 8}));

  TokenSequence only_response{{1, 2}, {3, 4, 5, 6}};
  EXPECT_TRUE(truncate_sequence(only_response, 4, 3));
  EXPECT_EQ(only_response.prompt, (Ids{1, 2}));
  EXPECT_EQ(only_response.response, (Ids{3, 4}));

  TokenSequence only_prompt{{1, 2, 3, 4}, {5}};
  EXPECT_TRUE(truncate_sequence(only_prompt, 10, 2));
  EXPECT_EQ(only_prompt.prompt, (Ids{3, 4}));
  EXPECT_EQ(only_prompt.response, (Ids{5}));
}

TEST(TruncateSequence, PromptLongerThanMaxLengthLeavesNoResponse) {
  TokenSequence seq{{1, 2, 3, 4, 5}, {6, 7}};
  EXPECT_TRUE(truncate_sequence(seq, 3, 10));
  EXPECT_EQ(seq.prompt, (Ids{3, 4, 5}));
  EXPECT_TRUE(seq.response.empty());
  EXPECT_EQ(static_cast<std::int64_t>(seq.prompt.size() + seq.response.size()), 3);
}

}  // namespace
}  // namespace dnpo::model
