// SPIN as an Objective: the DPO sigmoid loss ℓ(β[(πc − rc) − (πr − rr)]) of the policy against a
// frozen reference (a copy of the policy as the stage starts), mean over the global step's pairs.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "dnpo/train/pair_batches.h"

namespace dnpo::train {

class SpinObjective : public Objective {
 public:
  SpinObjective(
      PairData data, ShardedLlama& policy, double beta, std::int64_t pad_id, at::Device device);

  std::string stage() const override {
    return "spin";
  }
  std::string label() const override {
    return "train (spin)";
  }
  std::string describe_data() const override {
    return data_.describe();
  }
  std::int64_t num_samples() const override {
    return static_cast<std::int64_t>(data_.pairs.size());
  }
  StageModels& models() override {
    return models_;
  }
  void plan_step(std::int64_t step,
                 const std::vector<std::vector<std::int64_t>>& micro_samples) override;
  at::Tensor micro_batch_loss(std::size_t index,
                              double weight,
                              StepStats& stats,
                              Phase& phase) override;
  MetricValues metrics(const StepStats& stats) const override {
    return pair_metrics(stats, global_pairs_);
  }

 private:
  PairData data_;
  ShardedLlama& policy_;
  std::unique_ptr<ShardedLlama> reference_;  // frozen: params only
  double beta_;
  std::int64_t pad_id_;
  at::Device device_;
  StageModels models_;
  std::vector<PairBatch> micro_;  // the planned step's micro-batches (host)
  double global_pairs_ = 0;
};

}  // namespace dnpo::train
