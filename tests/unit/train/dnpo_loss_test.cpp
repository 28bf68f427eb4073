// The losses as tensor math: DSL labels, SPIN/DPO, response rows, sequence log-probs (masking,
// padding side, chunking), NPO (chunk and key invariance, fixed noise, penalty, gradient
// routing), the data order and the learning-rate schedule.
#include "dnpo/train/dnpo_loss.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dnpo/common/counter_rng.h"
#include "dnpo/common/error.h"
#include "dnpo/model/batch.h"
#include "dnpo/model/llama.h"
#include "dnpo/model/random.h"
#include "dnpo/train/lr_schedule.h"
#include "dnpo/train/trainer.h"
#include "tiny_model.h"

namespace dnpo::train {
namespace {

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

double scalar(const at::Tensor& t) {
  return t.item<double>();
}

// --- DSL ---------------------------------------------------------------------------------------

TEST(Dsl, TiesGoToTheGeneratedAnswer) {
  EXPECT_TRUE(dsl_generated_is_positive(70, 70, 0));
  EXPECT_FALSE(dsl_generated_is_positive(69, 70, 0));
  EXPECT_TRUE(dsl_generated_is_positive(71, 70, 0));
  // threshold 5: the generated answer needs a 5-point lead.
  EXPECT_TRUE(dsl_generated_is_positive(75, 70, 5));
  EXPECT_FALSE(dsl_generated_is_positive(74, 70, 5));
  EXPECT_FALSE(dsl_generated_is_positive(70, 70, 5));
}

// --- SPIN / sigmoid loss -----------------------------------------------------------------------

TEST(DnpoLoss, EqualLogprobsGiveLog2) {
  const auto pc = at::tensor({-3.0, -10.0, 0.0}, at::kDouble);
  const auto rc = at::tensor({-1.0, -7.0, -2.0}, at::kDouble);
  const auto losses = spin_pair_losses(pc, pc, rc, rc, 0.1);
  ASSERT_EQ(losses.sizes(), at::IntArrayRef({3}));
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(losses[i].item<double>(), std::log(2.0), 1e-12);
  }
}

TEST(DnpoLoss, SpinLossUsesTheFourTermMargin) {
  const auto pc = at::tensor({-3.0}, at::kDouble);
  const auto pr = at::tensor({-5.0}, at::kDouble);
  const auto rc = at::tensor({-4.0}, at::kDouble);
  const auto rr = at::tensor({-4.5}, at::kDouble);
  // m = (−3 + 4) − (−5 + 4.5) = 1.5
  const double beta = 0.7;
  const double expected = std::log1p(std::exp(-beta * 1.5));
  EXPECT_NEAR(scalar(spin_pair_losses(pc, pr, rc, rr, beta)[0]), expected, 1e-12);
  // A larger margin for the chosen answer lowers the loss.
  EXPECT_LT(scalar(spin_pair_losses(pc + 1, pr, rc, rr, beta)[0]), expected);
}

TEST(DnpoLoss, NegLogSigmoidIsStable) {
  const std::vector<double> ts{-1000, -80, -20, -1, -1e-3, 0, 1e-3, 1, 20, 80, 1000};
  const auto values = neg_log_sigmoid(at::tensor(ts, at::kDouble));
  const auto values_f = neg_log_sigmoid(at::tensor(ts, at::kDouble).to(at::kFloat));
  for (std::size_t i = 0; i < ts.size(); ++i) {
    const double t = ts[i];
    // log(1 + e^{−t}) written without overflow: max(−t, 0) + log1p(e^{−|t|}).
    const double expected = std::max(-t, 0.0) + std::log1p(std::exp(-std::abs(t)));
    EXPECT_NEAR(values[i].item<double>(), expected, 1e-12 * std::max(1.0, std::abs(t))) << t;
    EXPECT_TRUE(std::isfinite(values_f[i].item<float>())) << t;
    EXPECT_NEAR(values_f[i].item<float>(), expected, 1e-6 * std::max(1.0, std::abs(t))) << t;
  }
}

// --- response rows and sequence log-probs ------------------------------------------------------

TEST(ResponseRows, RowMajorOrderAndShiftedHiddenRows) {
  const auto ids = at::tensor({10, 11, 12, 13, 20, 21, 22, 23}, at::kLong).reshape({2, 4});
  const auto mask = at::tensor({0, 0, 1, 1, 0, 1, 0, 1}, at::kLong).reshape({2, 4});
  const auto rows = response_rows(ids, mask);
  auto vec = [](const at::Tensor& t) {
    auto c = t.contiguous();
    return std::vector<std::int64_t>(c.data_ptr<std::int64_t>(),
                                     c.data_ptr<std::int64_t>() + c.numel());
  };
  EXPECT_EQ(vec(rows.sample), (std::vector<std::int64_t>{0, 0, 1, 1}));
  EXPECT_EQ(vec(rows.position), (std::vector<std::int64_t>{2, 3, 1, 3}));
  EXPECT_EQ(vec(rows.hidden_row), (std::vector<std::int64_t>{1, 2, 4, 6}));
  EXPECT_EQ(vec(rows.target), (std::vector<std::int64_t>{12, 13, 21, 23}));
  // Position 0 has no logits before it; shapes must agree.
  EXPECT_THROW(response_rows(ids, at::tensor({1, 0, 0, 0, 0, 0, 0, 0}, at::kLong).reshape({2, 4})),
               Error);
  EXPECT_THROW(response_rows(ids, at::zeros({2, 3}, at::kLong)), Error);
  EXPECT_EQ(response_rows(ids, at::zeros({2, 4}, at::kLong)).hidden_row.numel(), 0);
}

config::ModelConfig tiny_config() {
  return test::tiny_model_config();
}

const std::vector<model::TokenSequence>& sequences() {
  static const std::vector<model::TokenSequence> s{
      {{1, 5, 6, 7}, {8, 9, 2}}, {{1, 4}, {30, 31, 32, 33, 2}}, {{1, 11, 12, 13, 14, 15}, {16, 2}}};
  return s;
}

at::Tensor seq_logprobs(const model::LlamaModel& m,
                        const model::TokenBatch& b,
                        std::int64_t chunk = 1024) {
  at::NoGradGuard no_grad;
  const auto hidden = m.forward_hidden(b.input_ids, b.attention_mask);
  return sequence_logprobs(hidden, m.lm_head(), b.input_ids, b.loss_mask, chunk);
}

TEST(SequenceLogprobs, EqualsManualSumOverResponsePositionsOnly) {
  const model::LlamaModel m(tiny_config(), 3);
  const auto b = model::pad_batch(sequences(), 0, model::PadSide::kRight);
  at::NoGradGuard no_grad;
  const auto logits = m.logits(m.forward_hidden(b.input_ids, b.attention_mask));
  const auto logp = at::log_softmax(logits.to(at::kDouble), -1);
  const auto got = seq_logprobs(m, b);
  ASSERT_EQ(got.sizes(), at::IntArrayRef({3}));
  EXPECT_EQ(got.scalar_type(), at::kFloat);
  for (std::int64_t row = 0; row < 3; ++row) {
    const auto& seq = sequences()[row];
    const auto start = static_cast<std::int64_t>(seq.prompt.size());
    double expected = 0;
    for (std::size_t j = 0; j < seq.response.size(); ++j) {
      const auto t = start + static_cast<std::int64_t>(j);
      expected += logp[row][t - 1][seq.response[j]].item<double>();
    }
    EXPECT_NEAR(got[row].item<double>(), expected, 1e-4) << "row " << row;
  }
  // Chunking the rows changes nothing.
  EXPECT_LT(max_abs_diff(seq_logprobs(m, b, 1), got), 1e-5);
  EXPECT_LT(max_abs_diff(seq_logprobs(m, b, 4), got), 1e-5);
}

TEST(SequenceLogprobs, FromResponseRowsEqualsFromMasks) {
  const model::LlamaModel m(tiny_config(), 3);
  const auto b = model::pad_batch(sequences(), 0, model::PadSide::kRight);
  at::NoGradGuard no_grad;
  const auto hidden = m.forward_hidden(b.input_ids, b.attention_mask);
  const auto rows = response_rows(b.input_ids, b.loss_mask);
  EXPECT_TRUE(at::equal(sequence_logprobs(hidden, m.lm_head(), rows, 3),
                        sequence_logprobs(hidden, m.lm_head(), b.input_ids, b.loss_mask, 3)));
  EXPECT_TRUE(at::equal(sft_loss(hidden, m.lm_head(), rows, 7.0),
                        sft_loss(hidden, m.lm_head(), b.input_ids, b.loss_mask, 7.0)));
}

TEST(SequenceLogprobs, LeftAndRightPaddingAgree) {
  const model::LlamaModel m(tiny_config(), 4);
  const auto right = seq_logprobs(m, model::pad_batch(sequences(), 0, model::PadSide::kRight));
  const auto left = seq_logprobs(m, model::pad_batch(sequences(), 0, model::PadSide::kLeft));
  const auto wide = seq_logprobs(m, model::pad_batch(sequences(), 0, model::PadSide::kLeft, 12));
  EXPECT_LT(max_abs_diff(left, right), 1e-4);
  EXPECT_LT(max_abs_diff(wide, right), 1e-4);
}

TEST(SequenceLogprobs, PadIdsDoNotMatterButResponseTokensDo) {
  const model::LlamaModel m(tiny_config(), 5);
  const auto pad0 = seq_logprobs(m, model::pad_batch(sequences(), 0, model::PadSide::kRight));
  const auto pad45 = seq_logprobs(m, model::pad_batch(sequences(), 45, model::PadSide::kRight));
  const auto left45 = seq_logprobs(m, model::pad_batch(sequences(), 45, model::PadSide::kLeft));
  EXPECT_LT(max_abs_diff(pad0, pad45), 1e-5);
  EXPECT_LT(max_abs_diff(pad0, left45), 1e-4);
  // A different response token changes its row only.
  auto changed = sequences();
  changed[1].response[2] = 44;
  const auto other = seq_logprobs(m, model::pad_batch(changed, 0, model::PadSide::kRight));
  EXPECT_GT(std::abs((other[1] - pad0[1]).item<double>()), 1e-3);
  EXPECT_LT(std::abs((other[0] - pad0[0]).item<double>()), 1e-6);
}

TEST(SftLoss, IsTokenMeanCrossEntropyOverTheGlobalCount) {
  const model::LlamaModel m(tiny_config(), 6);
  const auto b = model::pad_batch(sequences(), 0, model::PadSide::kRight);
  at::NoGradGuard no_grad;
  const auto hidden = m.forward_hidden(b.input_ids, b.attention_mask);
  const auto sum = seq_logprobs(m, b).sum().item<double>();
  const auto loss = sft_loss(hidden, m.lm_head(), b.input_ids, b.loss_mask, 40.0);
  EXPECT_NEAR(scalar(loss), -sum / 40.0, 1e-5);
  EXPECT_EQ(b.num_response_tokens, 3 + 5 + 2);
  EXPECT_THROW(sft_loss(hidden, m.lm_head(), b.input_ids, b.loss_mask, 0.0), Error);
}

// --- NPO ---------------------------------------------------------------------------------------

constexpr std::int64_t kB = 2, kT = 6, kC = 8, kV = 11;

// Two pairs; the negatives have 3 and 2 response rows (5 in all).
NpoInputs npo_inputs() {
  NpoInputs in;
  in.policy_chosen = at::tensor({-4.0, -6.0}, at::kFloat).requires_grad_(true);
  in.policy_rejected = at::tensor({-5.0, -5.5}, at::kFloat).requires_grad_(true);
  in.ref_chosen = at::tensor({-4.5, -6.2}, at::kFloat);
  in.ref_hidden = model::counter_normal({kB, kT, kC}, 1.0, 101);
  in.ref_lm_head = model::counter_normal({kV, kC}, 0.5, 102);
  in.rejected_ids = at::tensor({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0}, at::kLong).reshape({kB, kT});
  in.rejected_loss_mask =
      at::tensor({0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0}, at::kLong).reshape({kB, kT});
  in.global_pairs = 4;  // as if a second micro-batch held two more pairs
  in.global_penalty_elements = 5.0 * kV;
  return in;
}

void use_keys(NpoInputs& in, std::uint64_t step) {
  const auto rows = response_rows(in.rejected_ids, in.rejected_loss_mask);
  in.draws = {};
  for (std::int64_t j = 0; j < rows.sample.numel(); ++j) {
    const auto b = static_cast<std::uint64_t>(rows.sample[j].item<std::int64_t>());
    const auto t = static_cast<std::uint64_t>(rows.position[j].item<std::int64_t>());
    in.draws.row_keys1.push_back(draw_key(7, 1, step, b, t, RandomStream::kNoiseEps1));
    in.draws.row_keys2.push_back(draw_key(7, 1, step, b, t, RandomStream::kNoiseEps2));
  }
}

config::NpoConfig npo_config(int chunk) {
  config::NpoConfig cfg;
  cfg.chunk_positions = chunk;
  cfg.head_init = "normal";
  cfg.head_init_std = 0.3;  // s varies across the vocabulary
  return cfg;
}

// Σ log_softmax(z + s ε)[target] per sample over the negatives' response rows, in double.
at::Tensor manual_noisy(const NpoInputs& in, const at::Tensor& s, const at::Tensor& eps) {
  const auto rows = response_rows(in.rejected_ids, in.rejected_loss_mask);
  const auto h = in.ref_hidden.reshape({-1, kC}).index_select(0, rows.hidden_row).to(at::kDouble);
  const auto z = at::linear(h, in.ref_lm_head.to(at::kDouble));
  const auto logp = at::log_softmax(z + s.to(at::kDouble) * eps.to(at::kDouble), -1);
  const auto picked = logp.gather(1, rows.target.unsqueeze(1)).squeeze(1);
  return at::zeros({kB}, at::kDouble).index_add(0, rows.sample, picked);
}

at::Tensor response_hidden(const NpoInputs& in) {
  const auto rows = response_rows(in.rejected_ids, in.rejected_loss_mask);
  return in.ref_hidden.reshape({-1, kC}).index_select(0, rows.hidden_row);
}

TEST(NpoLoss, MatchesTheFormulaWithExplicitNoise) {
  const auto cfg = npo_config(256);
  const model::NoiseHead head(cfg, kC, kV, 5);
  auto in = npo_inputs();
  in.draws.eps1 = model::counter_normal({5, kV}, 1.0, 201);
  in.draws.eps2 = model::counter_normal({5, kV}, 1.0, 202);
  const double beta = 0.5;
  const auto terms = npo_loss(in, &head, cfg, beta);

  at::NoGradGuard no_grad;
  const auto s = head.sigma(response_hidden(in));  // (5, V)
  const auto r1 = manual_noisy(in, s, in.draws.eps1);
  const auto r2 = manual_noisy(in, s, in.draws.eps2);
  EXPECT_LT(max_abs_diff(terms.noisy_rejected_1.to(at::kDouble), r1), 1e-4);
  EXPECT_LT(max_abs_diff(terms.noisy_rejected_2.to(at::kDouble), r2), 1e-4);
  const auto margin = (in.policy_chosen - in.policy_rejected).detach().to(at::kDouble);
  const auto rc = in.ref_chosen.to(at::kDouble);
  const auto m1 = margin - (rc - r1);
  const auto m2 = margin - (rc - r2);
  const double model_loss = at::softplus(-beta * m1).sum().item<double>() / 4.0;
  const double noise_loss = at::softplus(-beta * m2).sum().item<double>() / 4.0;
  const double penalty = s.sum().item<double>() / (5.0 * kV);
  EXPECT_LT(max_abs_diff(terms.margins.to(at::kDouble), m1), 1e-4);
  EXPECT_NEAR(scalar(terms.model_loss), model_loss, 1e-5);
  EXPECT_NEAR(scalar(terms.noise_loss), noise_loss, 1e-5);
  EXPECT_NEAR(scalar(terms.penalty), penalty, 1e-5);
  EXPECT_NEAR(scalar(terms.total), model_loss - noise_loss + cfg.alpha * penalty, 1e-5);
  EXPECT_NEAR(terms.sum_s.item<double>(), s.sum().item<double>(), 1e-3);
  EXPECT_EQ(terms.num_s, 5 * kV);
  // The two noise draws differ, so the two noisy log-probs differ.
  EXPECT_GT(max_abs_diff(r1, r2), 1e-3);
}

// The trainer hands npo_loss the negatives' rows made from the host copy of the batch (no
// nonzero on the GPU); the result is the same as when npo_loss makes them.
TEST(NpoLoss, GivenResponseRowsGiveTheSameTerms) {
  const model::NoiseHead head(npo_config(2), kC, kV, 5);
  auto in = npo_inputs();
  in.draws.eps1 = model::counter_normal({5, kV}, 1.0, 401);
  in.draws.eps2 = model::counter_normal({5, kV}, 1.0, 402);
  const auto made = npo_loss(in, &head, npo_config(2), 0.3);
  in.rejected_rows = to_device(response_rows(in.rejected_ids, in.rejected_loss_mask), at::kCPU);
  const auto given = npo_loss(in, &head, npo_config(2), 0.3);
  EXPECT_TRUE(at::equal(made.noisy_rejected_1, given.noisy_rejected_1));
  EXPECT_TRUE(at::equal(made.noisy_rejected_2, given.noisy_rejected_2));
  EXPECT_EQ(scalar(made.total), scalar(given.total));
  EXPECT_EQ(made.sum_s.item<double>(), given.sum_s.item<double>());
  // rows of another batch are used as given: they must match the draws
  in.rejected_rows =
      response_rows(in.rejected_ids.narrow(0, 0, 1), in.rejected_loss_mask.narrow(0, 0, 1));
  EXPECT_THROW(npo_loss(in, &head, npo_config(2), 0.3), Error);
}

TEST(NpoLoss, ChunkingDoesNotChangeExplicitNoiseResults) {
  const model::NoiseHead head(npo_config(1), kC, kV, 5);
  auto in = npo_inputs();
  in.draws.eps1 = model::counter_normal({5, kV}, 1.0, 301);
  in.draws.eps2 = model::counter_normal({5, kV}, 1.0, 302);
  const auto one = npo_loss(in, &head, npo_config(1), 0.1);
  const auto many = npo_loss(in, &head, npo_config(1000), 0.1);
  const auto two = npo_loss(in, &head, npo_config(2), 0.1);
  for (const auto* other : {&many, &two}) {
    EXPECT_LT(max_abs_diff(one.noisy_rejected_1, other->noisy_rejected_1), 1e-5);
    EXPECT_LT(max_abs_diff(one.noisy_rejected_2, other->noisy_rejected_2), 1e-5);
    EXPECT_NEAR(scalar(one.total), scalar(other->total), 1e-6);
    EXPECT_NEAR(scalar(one.penalty), scalar(other->penalty), 1e-6);
  }
}

TEST(NpoLoss, RowKeysAreDeterministicAndChunkInvariant) {
  const model::NoiseHead head(npo_config(1), kC, kV, 5);
  auto in = npo_inputs();
  use_keys(in, 3);
  const auto a = npo_loss(in, &head, npo_config(1), 0.1);
  const auto b = npo_loss(in, &head, npo_config(1), 0.1);
  const auto c = npo_loss(in, &head, npo_config(1000), 0.1);
  EXPECT_TRUE(at::equal(a.noisy_rejected_1, b.noisy_rejected_1));
  EXPECT_TRUE(at::equal(a.noisy_rejected_2, b.noisy_rejected_2));
  EXPECT_EQ(scalar(a.total), scalar(b.total));
  EXPECT_LT(max_abs_diff(a.noisy_rejected_1, c.noisy_rejected_1), 1e-5);
  EXPECT_LT(max_abs_diff(a.noisy_rejected_2, c.noisy_rejected_2), 1e-5);
  EXPECT_NEAR(scalar(a.total), scalar(c.total), 1e-6);
  // Keys and explicit rows of the same draws agree.
  auto explicit_in = npo_inputs();
  explicit_in.draws.eps1 = model::counter_normal_rows(in.draws.row_keys1, kV);
  explicit_in.draws.eps2 = model::counter_normal_rows(in.draws.row_keys2, kV);
  const auto d = npo_loss(explicit_in, &head, npo_config(1000), 0.1);
  EXPECT_LT(max_abs_diff(a.noisy_rejected_1, d.noisy_rejected_1), 1e-5);
  EXPECT_NEAR(scalar(a.total), scalar(d.total), 1e-6);
  // Another step draws other noise.
  use_keys(in, 4);
  const auto e = npo_loss(in, &head, npo_config(1), 0.1);
  EXPECT_GT(max_abs_diff(a.noisy_rejected_1, e.noisy_rejected_1), 1e-4);
}

TEST(NpoLoss, FixedNoiseNeedsNoHeadAndTotalIsModelLoss) {
  auto cfg = npo_config(2);
  cfg.fixed_noise = true;
  cfg.fixed_sigma = 0.5;
  auto in = npo_inputs();
  use_keys(in, 0);
  const auto terms = npo_loss(in, nullptr, cfg, 0.1);
  EXPECT_EQ(scalar(terms.total), scalar(terms.model_loss));
  EXPECT_EQ(scalar(terms.penalty), 0.0);
  EXPECT_NEAR(terms.sum_s.item<double>(), 0.5 * 5 * kV, 1e-4);
  // s ≡ 0.5 everywhere: the noisy log-prob is the manual one with s = 0.5.
  const auto eps1 = model::counter_normal_rows(in.draws.row_keys1, kV);
  const auto r1 = manual_noisy(in, at::full({5, kV}, 0.5), eps1);
  EXPECT_LT(max_abs_diff(terms.noisy_rejected_1.to(at::kDouble), r1), 1e-4);
  // Without fixed noise a head is required.
  cfg.fixed_noise = false;
  EXPECT_THROW(npo_loss(in, nullptr, cfg, 0.1), Error);
}

TEST(NpoLoss, ZeroSigmaGivesTheCleanReferenceLogprob) {
  auto cfg = npo_config(2);
  cfg.fixed_noise = true;
  cfg.fixed_sigma = 0.0;
  auto in = npo_inputs();
  use_keys(in, 0);
  const auto terms = npo_loss(in, nullptr, cfg, 0.1);
  const auto clean =
      sequence_logprobs(in.ref_hidden, in.ref_lm_head, in.rejected_ids, in.rejected_loss_mask);
  EXPECT_LT(max_abs_diff(terms.noisy_rejected_1, clean), 1e-5);
  EXPECT_LT(max_abs_diff(terms.noisy_rejected_2, clean), 1e-5);
  // Then m1 is SPIN's margin and the model loss is SPIN's loss.
  const auto spin =
      spin_pair_losses(in.policy_chosen, in.policy_rejected, in.ref_chosen, clean, 0.1).sum() /
      in.global_pairs;
  EXPECT_NEAR(scalar(terms.model_loss), scalar(spin), 1e-6);
}

TEST(NpoLoss, PenaltyMeanAndMeanSquare) {
  auto in = npo_inputs();
  use_keys(in, 0);
  auto cfg = npo_config(2);
  const model::NoiseHead head(cfg, kC, kV, 9);
  at::Tensor s;
  {
    at::NoGradGuard no_grad;
    s = head.sigma(response_hidden(in)).to(at::kDouble);
  }
  cfg.penalty = "mean";
  EXPECT_NEAR(
      scalar(npo_loss(in, &head, cfg, 0.1).penalty), s.sum().item<double>() / (5.0 * kV), 1e-6);
  cfg.penalty = "mean_sq";
  EXPECT_NEAR(scalar(npo_loss(in, &head, cfg, 0.1).penalty),
              s.pow(2).sum().item<double>() / (5.0 * kV),
              1e-6);
  // alpha weights the penalty in the total.
  cfg.penalty = "mean";
  cfg.alpha = 0.0;
  const auto no_penalty = npo_loss(in, &head, cfg, 0.1);
  EXPECT_NEAR(
      scalar(no_penalty.total), scalar(no_penalty.model_loss - no_penalty.noise_loss), 1e-6);
}

TEST(NpoLoss, PenaltyOverAllPositions) {
  auto in = npo_inputs();
  use_keys(in, 0);
  auto cfg = npo_config(5);
  cfg.penalty_positions = "all";
  const model::NoiseHead head(cfg, kC, kV, 9);
  EXPECT_EQ(penalty_rows(cfg, in.rejected_loss_mask), kB * kT);
  EXPECT_EQ(penalty_rows(npo_config(5), in.rejected_loss_mask), 5);
  in.global_penalty_elements = static_cast<double>(kB * kT * kV);
  double expected = 0;
  {
    at::NoGradGuard no_grad;
    expected = head.sigma(in.ref_hidden.reshape({-1, kC})).to(at::kDouble).sum().item<double>() /
               static_cast<double>(kB * kT * kV);
  }
  EXPECT_NEAR(scalar(npo_loss(in, &head, cfg, 0.1).penalty), expected, 1e-6);
}

TEST(NpoLoss, GradientsReachThetaFromModelLossAndPhiFromNoiseLossAndPenalty) {
  const auto cfg = npo_config(2);
  model::NoiseHead head(cfg, kC, kV, 5);
  head.set_requires_grad(true);
  auto grads = [&](auto pick) {
    auto in = npo_inputs();
    use_keys(in, 1);
    for (auto& p : head.parameters()) {
      p.mutable_grad() = at::Tensor();
    }
    auto terms = npo_loss(in, &head, cfg, 0.5);
    pick(terms).backward();
    std::vector<at::Tensor> out{in.policy_chosen.grad().clone(), in.policy_rejected.grad().clone()};
    for (const auto& p : head.parameters()) {
      out.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
    }
    return out;
  };
  const auto total = grads([](const NpoTerms& t) { return t.total; });
  const auto model_only = grads([](const NpoTerms& t) { return t.model_loss + 0 * t.penalty; });
  const auto phi_only = grads(
      [&](const NpoTerms& t) { return -t.noise_loss + cfg.alpha * t.penalty + 0 * t.model_loss; });
  ASSERT_EQ(total.size(), model_only.size());
  // θ side (policy log-probs): exactly the model loss's gradient, nothing from the noise loss.
  for (std::size_t i = 0; i < 2; ++i) {
    EXPECT_LT(max_abs_diff(total[i], model_only[i]), 1e-7);
    EXPECT_GT(total[i].abs().max().item<double>(), 1e-4);
    EXPECT_EQ(phi_only[i].abs().max().item<double>(), 0.0);
  }
  // φ side (head parameters): exactly the noise loss + penalty gradient, nothing from ε1's term.
  double phi_norm = 0;
  for (std::size_t i = 2; i < total.size(); ++i) {
    EXPECT_LT(max_abs_diff(total[i], phi_only[i]), 1e-6);
    EXPECT_EQ(model_only[i].abs().max().item<double>(), 0.0);
    phi_norm += total[i].abs().sum().item<double>();
  }
  EXPECT_GT(phi_norm, 1e-4);
}

// The noisy term's backward is written by hand (noisy_negative.cpp); here it must equal autograd
// of the formula in double for both heads, both penalties, with and without a clamp that cuts
// part of s, and leave the caller's ε untouched.
TEST(NpoLoss, HeadGradientsEqualAutogradOfTheFormula) {
  for (const std::string kind : {"ln_gelu_linear", "linear"}) {
    for (const std::string penalty : {"mean", "mean_sq"}) {
      for (const double max_sigma : {0.0, 1.0}) {
        SCOPED_TRACE(kind + " " + penalty + " max_sigma " + std::to_string(max_sigma));
        auto cfg = npo_config(2);
        cfg.head = kind;
        cfg.penalty = penalty;
        cfg.max_sigma = max_sigma;
        cfg.alpha = 0.7;
        model::NoiseHead head(cfg, kC, kV, 5);
        head.set_requires_grad(true);
        auto in = npo_inputs();
        in.draws.eps1 = model::counter_normal({5, kV}, 1.0, 211);
        in.draws.eps2 = model::counter_normal({5, kV}, 1.0, 212);
        const auto eps2_before = in.draws.eps2.clone();
        const double beta = 0.5;
        npo_loss(in, &head, cfg, beta).total.backward();
        EXPECT_TRUE(at::equal(in.draws.eps2, eps2_before));

        // the same objective's φ part in double: −noise_loss + α·penalty
        std::vector<at::Tensor> params;
        for (const auto& p : head.parameters()) {
          params.push_back(p.detach().to(at::kDouble).requires_grad_(true));
        }
        const auto h = response_hidden(in).to(at::kDouble);
        const auto f =
            kind == "linear"
                ? at::linear(h, params[0], params[1])
                : at::linear(at::gelu(at::layer_norm(h, {kC}, params[0], params[1])), params[2]);
        auto s = cfg.scale * at::exp(f);
        if (max_sigma > 0) {
          const double clamped = (s > max_sigma).to(at::kDouble).mean().item<double>();
          ASSERT_GT(clamped, 0.05);  // the clamp cuts part of s, not all of it
          ASSERT_LT(clamped, 0.95);
          s = at::clamp_max(s, max_sigma);
        }
        const auto r2 = manual_noisy(in, s, in.draws.eps2);
        const auto margin = (in.policy_chosen - in.policy_rejected).detach().to(at::kDouble);
        const auto m2 = margin - (in.ref_chosen.to(at::kDouble) - r2);
        const auto noise_loss = at::softplus(-beta * m2).sum() / in.global_pairs;
        const auto pen = (penalty == "mean_sq" ? s.pow(2).sum() : s.sum()) / (5.0 * kV);
        (-noise_loss + cfg.alpha * pen).backward();
        const auto actual = head.parameters();
        for (std::size_t i = 0; i < params.size(); ++i) {
          const auto expected = params[i].grad();
          const double scale = expected.abs().max().item<double>();
          ASSERT_GT(scale, 1e-6) << "parameter " << i;
          EXPECT_LT(max_abs_diff(actual[i].grad().to(at::kDouble), expected), 1e-4 * scale)
              << "parameter " << i;
        }
      }
    }
  }
}

TEST(NpoLoss, RejectsInconsistentInputs) {
  const model::NoiseHead head(npo_config(2), kC, kV, 5);
  auto in = npo_inputs();
  use_keys(in, 0);
  in.draws.row_keys1.pop_back();
  EXPECT_THROW(npo_loss(in, &head, npo_config(2), 0.1), Error);
  use_keys(in, 0);
  in.global_pairs = 0;
  EXPECT_THROW(npo_loss(in, &head, npo_config(2), 0.1), Error);
}

// --- noise head ----------------------------------------------------------------------------------

TEST(NoiseHead, StartsAtTheScaleAndClampsAtMaxSigma) {
  const auto h = model::counter_normal({3, kC}, 1.0, 401);
  for (const char* kind : {"ln_gelu_linear", "linear"}) {
    config::NpoConfig cfg;
    cfg.head = kind;
    cfg.scale = 0.7;
    cfg.head_init = "normal";
    cfg.head_init_std = 0.0;  // f ≡ 0 → s ≡ c
    const model::NoiseHead zero(cfg, kC, kV, 1);
    const auto s = zero.sigma(h);
    ASSERT_EQ(s.sizes(), at::IntArrayRef({3, kV})) << kind;
    EXPECT_LT((s - 0.7).abs().max().item<double>(), 1e-6) << kind;
    cfg.head_init_std = 0.5;
    cfg.max_sigma = 0.9;
    const model::NoiseHead clamped(cfg, kC, kV, 1);
    const auto sc = clamped.sigma(h);
    EXPECT_LE(sc.max().item<double>(), 0.9 + 1e-7) << kind;
    EXPECT_GT(sc.min().item<double>(), 0.0) << kind;
    EXPECT_GT((sc - sc.mean()).abs().max().item<double>(), 1e-3) << kind;
    // Rebuilt from its named tensors, the head computes the same s.
    const model::NoiseHead copy(cfg, clamped.named_parameters());
    EXPECT_TRUE(at::equal(copy.sigma(h), sc)) << kind;
  }
  config::NpoConfig bad;
  bad.head = "mlp";
  EXPECT_THROW(model::NoiseHead(bad, kC, kV, 1), ConfigError);
  config::NpoConfig linear;
  linear.head = "linear";
  EXPECT_THROW(model::NoiseHead(linear, model::NamedTensors{{"proj.weight", at::zeros({kV, kC})}}),
               DataError);
}

// --- data order and learning rate ---------------------------------------------------------------

TEST(EpochOrder, IsAPermutationThatChangesPerEpoch) {
  const auto a = epoch_order(100, 1234, 0, 0);
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::int64_t> iota(100);
  std::iota(iota.begin(), iota.end(), 0);
  EXPECT_EQ(sorted, iota);
  EXPECT_NE(a, iota);
  EXPECT_EQ(a, epoch_order(100, 1234, 0, 0));
  EXPECT_NE(a, epoch_order(100, 1234, 0, 1));
  EXPECT_NE(a, epoch_order(100, 1234, 1, 0));
  EXPECT_NE(a, epoch_order(100, 1235, 0, 0));
  EXPECT_TRUE(epoch_order(0, 1, 0, 0).empty());
}

TEST(LrSchedule, WarmupThenLinearDecayToMinRatio) {
  config::TrainConfig cfg;
  cfg.lr = 1e-3;
  cfg.warmup_ratio = 0.1;
  cfg.min_lr_ratio = 0.1;
  const std::int64_t total = 100;  // 10 warm-up steps, 90 decay steps
  for (std::int64_t s = 0; s < 10; ++s) {
    EXPECT_NEAR(lr_at(cfg, s, total), 1e-3 * static_cast<double>(s + 1) / 10.0, 1e-15) << s;
  }
  EXPECT_NEAR(lr_at(cfg, 10, total), 1e-3, 1e-15);
  // Linear: equal decrements; halfway through the decay lr is the mean of lr and lr·min.
  const double d1 = lr_at(cfg, 20, total) - lr_at(cfg, 21, total);
  const double d2 = lr_at(cfg, 70, total) - lr_at(cfg, 71, total);
  EXPECT_NEAR(d1, d2, 1e-15);
  EXPECT_NEAR(d1, 1e-3 * 0.9 / 90.0, 1e-15);
  EXPECT_NEAR(lr_at(cfg, 55, total), 1e-3 * (1.0 + 0.1) / 2.0, 1e-15);
  EXPECT_NEAR(lr_at(cfg, total, total), 1e-4, 1e-15);
  EXPECT_GT(lr_at(cfg, total - 1, total), 1e-4);
  EXPECT_NEAR(lr_at(cfg, total + 5, total), 1e-4, 1e-15);  // clamped past the end
}

TEST(LrSchedule, ConstantAndNoWarmup) {
  config::TrainConfig cfg;
  cfg.lr = 2e-4;
  cfg.warmup_ratio = 0.25;
  cfg.lr_schedule = "constant";
  EXPECT_NEAR(lr_at(cfg, 0, 8), 1e-4, 1e-15);  // warm-up still applies: 2 steps
  for (std::int64_t s = 2; s < 8; ++s) {
    EXPECT_EQ(lr_at(cfg, s, 8), 2e-4) << s;
  }
  cfg.lr_schedule = "linear";
  cfg.warmup_ratio = 0.0;
  cfg.min_lr_ratio = 0.0;
  EXPECT_EQ(lr_at(cfg, 0, 4), 2e-4);
  EXPECT_NEAR(lr_at(cfg, 2, 4), 1e-4, 1e-15);
  // Warm-up length rounds up: 0.1 × 15 = 1.5 → 2 steps.
  cfg.warmup_ratio = 0.1;
  EXPECT_NEAR(lr_at(cfg, 0, 15), 1e-4, 1e-15);
  EXPECT_NEAR(lr_at(cfg, 1, 15), 2e-4, 1e-15);
}

}  // namespace
}  // namespace dnpo::train
