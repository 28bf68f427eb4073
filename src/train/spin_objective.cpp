// SPIN: the policy and the frozen reference each score chosen and rejected in one forward over
// [chosen; rejected]; the pair loss is the DPO sigmoid loss on the log-ratio margin.
#include "dnpo/train/spin_objective.h"

#include <ATen/ATen.h>

#include "dnpo/train/dnpo_loss.h"

namespace dnpo::train {

SpinObjective::SpinObjective(PairData data,
                             ShardedLlama& policy,
                             const config::RunConfig& cfg,
                             std::int64_t pad_id,
                             dist::Comm& comm)
    : PairObjective(std::move(data),
                    pad_id,
                    comm,
                    comm.device(),
                    cfg.train.reuse_reference ? 2 : 0,
                    pair_packing(cfg)),
      policy_(policy),
      reference_(policy.frozen_copy()),
      beta_(cfg.loss.beta) {
  models_.trained = {{"policy", policy.units()}};
  models_.frozen = {{"reference", reference_->units()}};
  models_.modules = {&policy, reference_.get()};
}

at::Tensor SpinObjective::micro_batch_loss(std::size_t index,
                                           double weight,
                                           StepStats& stats,
                                           Phase& phase) {
  const auto& m = micro_[index];
  const auto b = to_device(m, device_);
  phase.begin("dnpo::policy_forward");
  const auto policy = pair_logprobs(policy_, b);
  const auto ref = reference_logprobs(index, b, weight, phase);
  phase.begin("dnpo::loss");
  auto loss =
      spin_pair_losses(policy.chosen, policy.rejected, ref.chosen, ref.rejected, beta_).sum() /
      global_pairs_;
  const auto margins = ((policy.chosen - ref.chosen) - (policy.rejected - ref.rejected)).detach();
  stats.model_loss.add(loss, weight);
  add_pair_stats(stats, margins, policy.chosen, policy.rejected, m, weight);
  return loss;
}

PairLogprobs SpinObjective::reference_logprobs(std::size_t index,
                                               const DevicePairBatch& b,
                                               double weight,
                                               Phase& phase) {
  if (reference_known()) {
    const auto known = known_reference(index);
    return {known[0], known[1]};
  }
  phase.begin("dnpo::reference_forward");
  const at::NoGradGuard no_grad;
  auto ref = pair_logprobs(*reference_, b);
  keep_reference(index, weight, at::stack({ref.chosen, ref.rejected}));
  return ref;
}

}  // namespace dnpo::train
