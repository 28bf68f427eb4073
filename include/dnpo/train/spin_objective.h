// SPIN as an Objective: the DPO sigmoid loss ℓ(β[(πc − rc) − (πr − rr)]) of the policy against a
// frozen reference (a copy of the policy as the stage starts), mean over the global step's pairs.
// With train.reuse_reference the reference scores each pair once; later epochs read its values.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "dnpo/train/pair_batches.h"

namespace dnpo::train {

class SpinObjective : public PairObjective {
 public:
  SpinObjective(PairData data,
                ShardedLlama& policy,
                const config::RunConfig& cfg,
                std::int64_t pad_id,
                dist::Comm& comm);

  std::string stage() const override {
    return "spin";
  }
  at::Tensor micro_batch_loss(std::size_t index,
                              double weight,
                              StepStats& stats,
                              Phase& phase) override;

 private:
  /// log π_ref(y+) and log π_ref(y−) of micro-batch `index`: kept from an earlier epoch, or
  /// one reference forward (kept for later epochs).
  PairLogprobs reference_logprobs(std::size_t index,
                                  const DevicePairBatch& b,
                                  double weight,
                                  Phase& phase);

  ShardedLlama& policy_;
  std::unique_ptr<ShardedLlama> reference_;  // frozen: params only
  double beta_;
};

}  // namespace dnpo::train
