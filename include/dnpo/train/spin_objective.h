// SPIN as an Objective: the DPO sigmoid loss ℓ(β[(πc − rc) − (πr − rr)]) of the policy against a
// frozen reference (a copy of the policy as the stage starts), mean over the global step's pairs.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "dnpo/train/pair_batches.h"

namespace dnpo::train {

class SpinObjective : public PairObjective {
 public:
  SpinObjective(
      PairData data, ShardedLlama& policy, double beta, std::int64_t pad_id, at::Device device);

  std::string stage() const override {
    return "spin";
  }
  at::Tensor micro_batch_loss(std::size_t index,
                              double weight,
                              StepStats& stats,
                              Phase& phase) override;

 private:
  ShardedLlama& policy_;
  std::unique_ptr<ShardedLlama> reference_;  // frozen: params only
  double beta_;
};

}  // namespace dnpo::train
