// One SPIN or NPO objective over whole (unsharded) models on any device: the GPU agreement test
// and the GPU benchmark share it. The Trainer does the same with FSDP units, micro-batches and
// ranks; this is the single-process core, written from the losses alone. Test/bench only.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include "dnpo/common/counter_rng.h"
#include "dnpo/config/config.h"
#include "dnpo/model/llama.h"
#include "dnpo/model/noise_head.h"
#include "dnpo/train/dnpo_loss.h"

namespace dnpo::test {

/// B pairs, right-padded to T: chosen rows 0..B-1, rejected rows B..2B-1 of one (2B, T) batch.
struct PairBatch {
  at::Tensor input_ids;       // (2B, T) int64
  at::Tensor attention_mask;  // (2B, T) int64
  at::Tensor loss_mask;       // (2B, T) int64: response tokens
  std::int64_t pairs() const {
    return input_ids.size(0) / 2;
  }
  PairBatch to(const at::Device& device) const {
    return {input_ids.to(device), attention_mask.to(device), loss_mask.to(device)};
  }
};

/// Random pairs: prompt of prompt_len tokens, responses of random length up to T - prompt_len,
/// right padding. Deterministic for a seed (CPU generator).
inline PairBatch random_pairs(std::int64_t pairs,
                              std::int64_t steps,
                              std::int64_t prompt_len,
                              std::int64_t vocab,
                              std::uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  const auto rows = 2 * pairs;
  auto ids = at::randint(1, vocab, {rows, steps}, gen, at::kLong);
  auto lengths = at::randint(steps / 2, steps + 1, {rows}, gen, at::kLong);
  lengths.narrow(0, 0, 1).fill_(steps);  // at least one row without padding
  auto positions = at::arange(steps, at::kLong).unsqueeze(0);
  auto attention = (positions < lengths.unsqueeze(1)).to(at::kLong);
  auto loss = attention * (positions >= prompt_len).to(at::kLong);
  return {ids * attention, attention, loss};
}

struct PairObjective {
  at::Tensor total;       // () the value to backpropagate
  at::Tensor model_loss;  // () the policy's term
};

/// SPIN (head null): mean ℓ(β margin). NPO: the combined single-step objective with noise drawn
/// from counter keys of (seed, step) — the same numbers on every device.
inline PairObjective pair_objective(const model::LlamaModel& policy,
                                    const model::LlamaModel& reference,
                                    const model::NoiseHead* head,
                                    const config::NpoConfig& npo,
                                    const PairBatch& batch,
                                    double beta,
                                    std::uint64_t seed,
                                    std::uint64_t step) {
  const auto pairs = batch.pairs();
  const auto hidden = policy.forward_hidden(batch.input_ids, batch.attention_mask);
  const auto logp =
      train::sequence_logprobs(hidden, policy.lm_head(), batch.input_ids, batch.loss_mask);
  at::Tensor ref_hidden;
  at::Tensor ref_logp;
  {
    at::NoGradGuard no_grad;
    ref_hidden = reference.forward_hidden(batch.input_ids, batch.attention_mask);
    ref_logp =
        train::sequence_logprobs(ref_hidden, reference.lm_head(), batch.input_ids, batch.loss_mask);
  }
  const auto chosen = logp.narrow(0, 0, pairs);
  const auto rejected = logp.narrow(0, pairs, pairs);
  if (head == nullptr) {
    const auto losses = train::spin_pair_losses(
        chosen, rejected, ref_logp.narrow(0, 0, pairs), ref_logp.narrow(0, pairs, pairs), beta);
    const auto total = losses.mean();
    return {total, total.detach()};
  }
  train::NpoInputs in;
  in.policy_chosen = chosen;
  in.policy_rejected = rejected;
  in.ref_chosen = ref_logp.narrow(0, 0, pairs);
  in.ref_hidden = ref_hidden.narrow(0, pairs, pairs);
  in.ref_lm_head = reference.lm_head();
  in.rejected_ids = batch.input_ids.narrow(0, pairs, pairs);
  in.rejected_loss_mask = batch.loss_mask.narrow(0, pairs, pairs);
  const auto rows = train::response_rows(in.rejected_ids, in.rejected_loss_mask);
  const auto samples_cpu = rows.sample.to(at::kCPU);
  const auto positions_cpu = rows.position.to(at::kCPU);
  const auto samples = samples_cpu.accessor<std::int64_t, 1>();
  const auto positions = positions_cpu.accessor<std::int64_t, 1>();
  for (std::int64_t i = 0; i < samples.size(0); ++i) {
    const auto b = static_cast<std::uint64_t>(samples[i]);
    const auto t = static_cast<std::uint64_t>(positions[i]);
    in.draws.row_keys1.push_back(draw_key(seed, 0, step, b, t, RandomStream::kNoiseEps1));
    in.draws.row_keys2.push_back(draw_key(seed, 0, step, b, t, RandomStream::kNoiseEps2));
  }
  in.global_pairs = static_cast<double>(pairs);
  in.global_penalty_elements = static_cast<double>(train::penalty_rows(npo, in.rejected_loss_mask) *
                                                   reference.config().vocab_size);
  // As the Trainer's sharded head: parameters cast (differentiably) to the compute dtype.
  std::vector<at::Tensor> head_params;
  for (const auto& p : head->parameters()) {
    head_params.push_back(p.to(ref_hidden.scalar_type()));
  }
  const auto terms = train::npo_loss(in, head_params, npo, beta);
  return {terms.total, terms.model_loss.detach()};
}

}  // namespace dnpo::test
