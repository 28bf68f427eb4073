// Packed pair batches against padded ones: the same per-pair log-probs and the same NPO terms
// (within fp32 rounding), the negatives found alike in the pair rows and on their own, rows that
// keep to their token budget, and micro-batches balanced in tokens without changing the step.
#include "dnpo/train/pair_batches.h"

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dnpo/data/chat_template.h"
#include "dnpo/data/tokenizer.h"
#include "dnpo/model/llama.h"
#include "dnpo/model/noise_head.h"

namespace dnpo::train {
namespace {

config::RunConfig tiny_config() {
  config::RunConfig cfg;
  cfg.model.vocab_size = 260;
  cfg.model.hidden_size = 32;
  cfg.model.intermediate_size = 64;
  cfg.model.num_hidden_layers = 2;
  cfg.model.num_attention_heads = 4;
  cfg.model.num_key_value_heads = 2;
  cfg.model.max_position_embeddings = 256;
  cfg.model.initializer_range = 0.1;
  cfg.chat.prompt_template = "Q:{prompt}\nA:";
  cfg.data.max_length = 64;
  cfg.data.max_prompt_length = 32;
  return cfg;
}

// Pairs whose prompts and answers vary in length (1-20, 1-40 and 1-25 letters).
std::vector<data::PairRecord> varied_pairs(int count) {
  std::mt19937 rng(5);
  const auto text = [&rng](int longest) {
    std::string s(std::uniform_int_distribution<int>(1, longest)(rng), 'a');
    for (auto& c : s) {
      c = static_cast<char>('a' + std::uniform_int_distribution<int>(0, 25)(rng));
    }
    return s;
  };
  std::vector<data::PairRecord> out;
  for (int i = 0; i < count; ++i) {
    out.push_back({std::to_string(i), text(20), text(40), text(25) + "!", {}, {}});
  }
  return out;
}

struct Fixture {
  config::RunConfig cfg = tiny_config();
  data::ByteTokenizer tokenizer;
  data::ChatTemplate chat{cfg.chat, tokenizer};
  PairData data{varied_pairs(12), chat, cfg.data};
  model::LlamaModel policy{cfg.model, 3};
  std::vector<std::int64_t> ids = [] {
    std::vector<std::int64_t> v(12);
    std::iota(v.begin(), v.end(), std::int64_t{0});
    return v;
  }();

  PairBatch batch(bool packed, std::int64_t row_tokens = 200) const {
    return make_pair_batches(data, {ids}, tokenizer.pad_id(), {packed, row_tokens}).front();
  }
  at::Tensor logprobs(const PairBatch& m) const {
    const auto hidden = policy.forward_hidden(m.batch.input_ids, m.batch.attention_mask);
    return sequence_logprobs(hidden, policy.lm_head(), m.rows);
  }
};

void expect_close(const at::Tensor& got, const at::Tensor& want, double tolerance) {
  ASSERT_EQ(got.sizes(), want.sizes());
  const auto gap = (got - want).abs().max().item<double>();
  EXPECT_LT(gap, tolerance * std::max(1.0, want.abs().max().item<double>()))
      << "got " << got << "\nwant " << want;
}

TEST(PairBatches, PackedLogProbsEqualThePaddedOnes) {
  const Fixture f;
  const auto padded = f.batch(false);
  const auto packed = f.batch(true);
  // several pairs share a row: a row numbers more than one pair's two sequences
  EXPECT_LT(packed.batch.input_ids.size(0), packed.pairs());
  EXPECT_GE(packed.batch.attention_mask.max().item<std::int64_t>(), 4);
  EXPECT_EQ(packed.batch.num_response_tokens, padded.batch.num_response_tokens);
  EXPECT_EQ(packed.rows.hidden_row.numel(), padded.rows.hidden_row.numel());
  // fewer slots than the padded layout, with its tokens all there
  EXPECT_LT(packed.batch.input_ids.numel(), padded.batch.input_ids.numel());
  EXPECT_EQ(packed.batch.attention_mask.gt(0).sum().item<std::int64_t>(),
            padded.batch.attention_mask.gt(0).sum().item<std::int64_t>());
  const at::NoGradGuard no_grad;
  const auto want = f.logprobs(padded);
  ASSERT_EQ(want.size(0), 24);
  expect_close(f.logprobs(packed), want, 1e-5);
  // the chosen's entries alone give the chosen's log-probs
  const auto hidden = f.policy.forward_hidden(packed.batch.input_ids, packed.batch.attention_mask);
  expect_close(sequence_logprobs(hidden, f.policy.lm_head(), packed.chosen_rows()),
               want.narrow(0, 0, 12),
               1e-5);
}

TEST(PairBatches, PackedRowsKeepToTheirTokenBudget) {
  const Fixture f;
  for (const std::int64_t budget : {40, 96, 200}) {
    const auto m = f.batch(true, budget);
    const auto real = m.batch.attention_mask.gt(0).sum(1);
    const auto sequences = std::get<0>(m.batch.attention_mask.max(1));
    for (std::int64_t r = 0; r < real.size(0); ++r) {
      // over budget only as a row of one pair (its chosen and rejected, numbered 1 and 2)
      if (real[r].item<std::int64_t>() > budget) {
        EXPECT_EQ(sequences[r].item<std::int64_t>(), 2) << "budget " << budget << ", row " << r;
      }
    }
    EXPECT_EQ(m.batch.attention_mask.gt(0).sum().item<std::int64_t>(),
              f.batch(false).batch.attention_mask.gt(0).sum().item<std::int64_t>());
  }
  // a budget below every pair: one pair per row, nothing lost
  EXPECT_EQ(f.batch(true, 1).batch.input_ids.size(0), 12);
}

// NPO's terms from its inputs as the objective makes them: the negatives' rows within the pair
// batch, or the negatives run alone; noise keyed on (pair, position) as in training.
NpoTerms npo_terms(const Fixture& f,
                   const PairBatch& m,
                   const model::LlamaModel& reference,
                   const model::NoiseHead& head,
                   const config::NpoConfig& npo,
                   bool alone) {
  const auto pairs = m.pairs();
  const auto logps = f.logprobs(m);
  NpoInputs in;
  in.policy_chosen = logps.narrow(0, 0, pairs);
  in.policy_rejected = logps.narrow(0, pairs, pairs);
  const auto ref_hidden = reference.forward_hidden(m.batch.input_ids, m.batch.attention_mask);
  in.ref_chosen = sequence_logprobs(ref_hidden, reference.lm_head(), m.chosen_rows());
  const auto packing = PairPacking{m.negatives.all_positions.defined(), 200};
  const auto negatives = alone ? negatives_alone(f.data, m, packing, f.tokenizer.pad_id())
                               : NegativeBatch{m.batch, m.negatives};
  const auto hidden =
      alone ? reference.forward_hidden(negatives.batch.input_ids, negatives.batch.attention_mask)
            : ref_hidden;
  const auto& n = negatives.negatives;
  in.ref_hidden = hidden.narrow(0, n.first_row, n.row_count);
  in.ref_lm_head = reference.lm_head();
  in.rejected_rows = n.rows;
  in.penalty_positions = n.all_positions;
  const auto* sample = n.rows.sample.data_ptr<std::int64_t>();
  const auto* position = n.rows.position.data_ptr<std::int64_t>();
  for (std::int64_t j = 0; j < n.rows.sample.numel(); ++j) {
    const auto key = static_cast<std::uint64_t>(m.pair_index[sample[j]] * 1000 + position[j]);
    in.draws.row_keys1.push_back(key);
    in.draws.row_keys2.push_back(key + 777777);
  }
  in.global_pairs = static_cast<double>(pairs);
  in.global_penalty_elements = static_cast<double>(
      m.negatives.penalty_positions(npo, m.batch.input_ids.size(1)) * f.cfg.model.vocab_size);
  return npo_loss(in, &head, npo, 0.5);
}

TEST(PairBatches, PackedNpoTermsEqualThePaddedOnes) {
  const Fixture f;
  const model::LlamaModel reference(f.cfg.model, 4);
  config::NpoConfig npo;
  const model::NoiseHead head(npo, f.cfg.model.hidden_size, f.cfg.model.vocab_size, 6);
  const auto padded = f.batch(false);
  const auto packed = f.batch(true);
  const at::NoGradGuard no_grad;
  for (const bool alone : {false, true}) {
    SCOPED_TRACE(alone ? "negatives alone" : "negatives in the pair rows");
    const auto want = npo_terms(f, padded, reference, head, npo, alone);
    const auto got = npo_terms(f, packed, reference, head, npo, alone);
    expect_close(got.total, want.total, 1e-5);
    expect_close(got.margins, want.margins, 1e-4);
    expect_close(got.noisy_rejected_1, want.noisy_rejected_1, 1e-5);
    expect_close(got.noisy_rejected_2, want.noisy_rejected_2, 1e-5);
    expect_close(got.penalty, want.penalty, 1e-5);
  }
  // penalty "all" covers every token of the negatives when packed, in either view
  npo.penalty_positions = "all";
  std::int64_t tokens = 0;
  for (const auto& p : f.data.pairs) {
    tokens += static_cast<std::int64_t>(p.rejected.prompt.size() + p.rejected.response.size());
  }
  EXPECT_EQ(packed.negatives.penalty_positions(npo, packed.batch.input_ids.size(1)), tokens);
  const auto in_rows = npo_terms(f, packed, reference, head, npo, false);
  const auto on_own = npo_terms(f, packed, reference, head, npo, true);
  expect_close(on_own.penalty, in_rows.penalty, 1e-5);
  expect_close(on_own.total, in_rows.total, 1e-5);
}

TEST(PairBatches, BalancedMicroBatchesKeepTheStepsPairs) {
  const Fixture f;
  const std::vector<std::vector<std::int64_t>> split = {
      {0, 1, 2}, {3, 4, 5}, {6, 7, 8}, {9, 10, 11}};
  const auto balanced = balance_micro_batches(f.data, split);
  ASSERT_EQ(balanced.size(), split.size());
  EXPECT_EQ(balanced, balance_micro_batches(f.data, split));  // deterministic
  std::vector<std::int64_t> all;
  std::vector<std::int64_t> loads;
  std::int64_t longest = 0;
  for (const auto& ids : balanced) {
    EXPECT_FALSE(ids.empty());
    std::int64_t load = 0;
    for (const auto i : ids) {
      all.push_back(i);
      const auto& p = f.data.pairs[static_cast<std::size_t>(i)];
      const auto length =
          static_cast<std::int64_t>(p.chosen.prompt.size() + p.chosen.response.size() +
                                    p.rejected.prompt.size() + p.rejected.response.size());
      load += length;
      longest = std::max(longest, length);
    }
    loads.push_back(load);
  }
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, f.ids);
  // greedy longest-first: no micro-batch exceeds another by more than one pair
  EXPECT_LE(
      *std::max_element(loads.begin(), loads.end()) - *std::min_element(loads.begin(), loads.end()),
      longest);
}

}  // namespace
}  // namespace dnpo::train
