// NPO as an Objective: the policy against a frozen reference whose log-probs of the negative get
// trainable Gaussian noise, in one combined step (dnpo_loss.h, npo_loss). The objective owns the
// noise head (sharded like the policy; none under npo.fixed_noise), the counter keys of its
// draws and its statistics.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dnpo/dist/sharded_unit.h"
#include "dnpo/train/dnpo_loss.h"
#include "dnpo/train/pair_batches.h"

namespace dnpo::train {

class NpoObjective : public PairObjective {
 public:
  /// The noise head starts from `initial_head`'s parameters when given, else fresh from
  /// (run.seed, train.iteration); the same on every rank.
  NpoObjective(PairData data,
               ShardedLlama& policy,
               const config::RunConfig& cfg,
               std::int64_t pad_id,
               dist::Comm& comm,
               dist::UnitPrecision precision,
               const ShardedNoiseHead* initial_head);

  std::string stage() const override {
    return "npo";
  }
  void plan_step(std::int64_t step,
                 const std::vector<std::vector<std::int64_t>>& micro_samples) override;
  at::Tensor micro_batch_loss(std::size_t index,
                              double weight,
                              StepStats& stats,
                              Phase& phase) override;
  /// The pair metrics, then minus_noise_loss (−Σ ℓ(β m2) / pairs, the objective's second term
  /// with the sign it enters the loss with, as the paper plots it), penalty and mean_s.
  MetricValues metrics(const StepStats& stats) const override;

  /// The trained noise head (null under npo.fixed_noise); the objective no longer holds it.
  std::unique_ptr<ShardedNoiseHead> release_noise_head() {
    return std::move(head_);
  }

 private:
  /// The frozen reference's part of micro-batch `index`: the positives' clean log-probs (kept,
  /// or computed and kept) and the negatives' hidden states with the lm_head to read them.
  NpoInputs reference_inputs(std::size_t index, const DevicePairBatch& b, double weight);
  /// ε keys of the negatives' response rows: (seed, iteration, step, pair, position, stream).
  NoiseDraws draws_of(const ResponseRows& rejected_rows, const PairBatch& micro) const;

  ShardedLlama& policy_;
  std::unique_ptr<ShardedLlama> reference_;  // frozen: params only
  std::unique_ptr<ShardedNoiseHead> head_;
  const config::RunConfig& cfg_;
  std::int64_t step_ = 0;  // the planned step
  double global_penalty_elements_ = 0;
};

}  // namespace dnpo::train
