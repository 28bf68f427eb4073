// NPO, one micro-batch: policy forward on [chosen; rejected] → sequence log-probs; frozen
// reference forward → clean log-prob of y+ (once per pair under train.reuse_reference; later
// epochs run the reference on y− alone) and hidden states of y−; noise head on those hidden
// states → noisy log-probs with ε1 (s detached) and ε2 → total = ℓ(βm1) − ℓ(βm2) + αP.
#include "dnpo/train/npo_objective.h"

#include <ATen/ATen.h>

#include "dnpo/common/counter_rng.h"
#include "dnpo/model/llama.h"

namespace dnpo::train {

NpoObjective::NpoObjective(PairData data,
                           ShardedLlama& policy,
                           const config::RunConfig& cfg,
                           std::int64_t pad_id,
                           dist::Comm& comm,
                           dist::UnitPrecision precision,
                           const ShardedNoiseHead* initial_head)
    : PairObjective(std::move(data),
                    pad_id,
                    comm,
                    precision.device,
                    cfg.train.reuse_reference ? 1 : 0,
                    pair_packing(cfg)),
      policy_(policy),
      reference_(policy.frozen_copy()),
      cfg_(cfg) {
  models_.trained = {{"policy", policy.units()}};
  models_.modules = {&policy};
  if (!cfg.npo.fixed_noise) {
    head_ = std::make_unique<ShardedNoiseHead>(cfg.npo,
                                               cfg.model.hidden_size,
                                               cfg.model.vocab_size,
                                               fold_key(cfg.run.seed, cfg.train.iteration),
                                               comm,
                                               precision);
    if (initial_head != nullptr) {
      head_->unit()->load_shard_of(*initial_head->unit());
    }
    head_->set_keep_gathered(policy.keep_gathered());  // the stage's choice, made for both
    models_.trained.push_back({"noise_head", {head_->unit()}});
    models_.modules.push_back(head_.get());
  }
  models_.frozen = {{"reference", reference_->units()}};
  models_.modules.push_back(reference_.get());
}

void NpoObjective::plan_step(std::int64_t step,
                             const std::vector<std::vector<std::int64_t>>& micro_samples) {
  PairObjective::plan_step(step, micro_samples);
  step_ = step;
  global_penalty_elements_ = 0;
  for (const auto& m : micro_) {
    global_penalty_elements_ += static_cast<double>(
        m.negatives.penalty_positions(cfg_.npo, m.batch.input_ids.size(1)) * cfg_.model.vocab_size);
  }
}

at::Tensor NpoObjective::micro_batch_loss(std::size_t index,
                                          double weight,
                                          StepStats& stats,
                                          Phase& phase) {
  const auto& m = micro_[index];
  const auto b = to_device(m, device_);
  phase.begin("dnpo::policy_forward");
  const auto policy = pair_logprobs(policy_, b);
  phase.begin("dnpo::reference_forward");
  NpoInputs in = reference_inputs(index, b, weight);
  phase.begin("dnpo::loss");
  in.policy_chosen = policy.chosen;
  in.policy_rejected = policy.rejected;
  // both layouts of the negatives list their response tokens in the same order
  in.draws = draws_of(m.negatives.rows, m);
  in.global_pairs = global_pairs_;
  in.global_penalty_elements = global_penalty_elements_;
  const auto head_params = head_ ? head_->parameters() : std::vector<at::Tensor>{};
  const auto terms = npo_loss(in, head_params, cfg_.npo, cfg_.loss.beta);
  stats.model_loss.add(terms.model_loss, weight);
  stats.noise_loss.add(terms.noise_loss, weight);
  stats.penalty.add(terms.penalty, weight);
  stats.sum_s.add(terms.sum_s, weight);
  stats.num_s.add(weight * static_cast<double>(terms.num_s));
  add_pair_stats(stats, terms.margins, policy.chosen, policy.rejected, m, weight);
  return terms.total;
}

namespace {

// The reference's hidden states of a forward whose rows hold `negatives`, as npo_loss reads them.
void set_negatives(NpoInputs& in,
                   const at::Tensor& hidden,
                   const NegativeRows& negatives,
                   at::Device device) {
  in.ref_hidden = hidden.narrow(0, negatives.first_row, negatives.row_count);
  in.rejected_rows = to_device(negatives.rows, device);
  if (negatives.all_positions.defined()) {
    in.penalty_positions = model::to_device(negatives.all_positions, device);
  }
}

}  // namespace

NpoInputs NpoObjective::reference_inputs(std::size_t index,
                                         const DevicePairBatch& b,
                                         double weight) {
  const auto& m = micro_[index];
  const at::NoGradGuard no_grad;
  NpoInputs in;
  if (reference_known()) {
    // the positives' log-probs from an earlier epoch: the reference runs the negatives alone
    const auto alone = negatives_alone(data_, m, packing_, pad_id_);
    const auto batch = model::to_device(alone.batch, device_);
    auto out = reference_->forward(
        batch.input_ids, batch.attention_mask, model::is_right_padded(alone.batch.attention_mask));
    in.ref_chosen = known_reference(index)[0];
    set_negatives(in, out.hidden, alone.negatives, device_);
    in.ref_lm_head = std::move(out.lm_head);
    return in;
  }
  auto out = reference_->forward(b.batch.input_ids, b.batch.attention_mask, b.right_padded);
  in.ref_chosen = sequence_logprobs(out.hidden, out.lm_head, to_device(m.chosen_rows(), device_));
  keep_reference(index, weight, in.ref_chosen.unsqueeze(0));
  set_negatives(in, out.hidden, m.negatives, device_);
  in.ref_lm_head = std::move(out.lm_head);
  return in;
}

NoiseDraws NpoObjective::draws_of(const ResponseRows& rejected_rows, const PairBatch& micro) const {
  NoiseDraws draws;
  const auto* sample = rejected_rows.sample.data_ptr<std::int64_t>();
  const auto* position = rejected_rows.position.data_ptr<std::int64_t>();
  for (std::int64_t j = 0; j < rejected_rows.sample.numel(); ++j) {
    const auto pair = static_cast<std::uint64_t>(micro.pair_index[sample[j]]);
    const auto pos = static_cast<std::uint64_t>(position[j]);
    const auto key = [&](RandomStream stream) {
      return draw_key(cfg_.run.seed, cfg_.train.iteration, step_, pair, pos, stream);
    };
    draws.row_keys1.push_back(key(RandomStream::kNoiseEps1));
    draws.row_keys2.push_back(key(RandomStream::kNoiseEps2));
  }
  return draws;
}

MetricValues NpoObjective::metrics(const StepStats& stats) const {
  auto values = pair_metrics(stats, global_pairs_);
  const double num_s = stats.num_s.value();
  values.insert(values.end(),
                {{"minus_noise_loss", -stats.noise_loss.value()},
                 {"penalty", stats.penalty.value()},
                 {"mean_s", num_s > 0 ? stats.sum_s.value() / num_s : 0.0}});
  return values;
}

}  // namespace dnpo::train
