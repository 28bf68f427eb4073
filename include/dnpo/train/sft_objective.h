// Supervised fine-tuning as an Objective: token-mean cross-entropy over the answer tokens of
// prompt/answer records, normalised by the global step's answer tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dnpo/config/config.h"
#include "dnpo/data/chat_template.h"
#include "dnpo/data/jsonl.h"
#include "dnpo/model/batch.h"
#include "dnpo/train/objective.h"

namespace dnpo::train {

/// The records as token sequences, cut to data.max_length (counted).
struct SftData {
  SftData(const std::vector<data::PromptRecord>& records,
          const data::ChatTemplate& chat,
          const config::DataConfig& cfg);
  std::vector<model::TokenSequence> sequences;
  std::int64_t truncated = 0;
};

class SftObjective : public Objective {
 public:
  SftObjective(SftData data, ShardedLlama& policy, std::int64_t pad_id, at::Device device);

  std::string stage() const override {
    return "sft";
  }
  std::string label() const override {
    return "sft";
  }
  std::string describe_data() const override;
  std::int64_t num_samples() const override {
    return static_cast<std::int64_t>(data_.sequences.size());
  }
  void plan_step(std::int64_t step,
                 const std::vector<std::vector<std::int64_t>>& micro_samples) override;
  at::Tensor micro_batch_loss(std::size_t index,
                              double weight,
                              StepStats& stats,
                              Phase& phase) override;
  MetricValues metrics(const StepStats& stats) const override;

 private:
  SftData data_;
  ShardedLlama& policy_;
  std::int64_t pad_id_;
  at::Device device_;
  std::vector<model::TokenBatch> micro_;  // the planned step's micro-batches (host)
  double global_tokens_ = 0;              // the step's answer tokens, over all micro-batches
};

}  // namespace dnpo::train
