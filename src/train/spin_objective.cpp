// SPIN: the policy and the frozen reference each score chosen and rejected in one forward over
// [chosen; rejected]; the pair loss is the DPO sigmoid loss on the log-ratio margin.
#include "dnpo/train/spin_objective.h"

#include <ATen/ATen.h>

#include "dnpo/train/dnpo_loss.h"

namespace dnpo::train {

SpinObjective::SpinObjective(
    PairData data, ShardedLlama& policy, double beta, std::int64_t pad_id, at::Device device)
    : PairObjective(std::move(data), pad_id, device),
      policy_(policy),
      reference_(policy.frozen_copy()),
      beta_(beta) {
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
  phase.begin("dnpo::reference_forward");
  const auto ref = [&] {
    const at::NoGradGuard no_grad;
    return pair_logprobs(*reference_, b);
  }();
  phase.begin("dnpo::loss");
  auto loss =
      spin_pair_losses(policy.chosen, policy.rejected, ref.chosen, ref.rejected, beta_).sum() /
      global_pairs_;
  const auto margins = ((policy.chosen - ref.chosen) - (policy.rejected - ref.rejected)).detach();
  stats.model_loss.add(loss, weight);
  add_pair_stats(stats, margins, policy.chosen, policy.rejected, m, weight);
  return loss;
}

}  // namespace dnpo::train
