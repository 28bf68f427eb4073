// What differs between SFT, SPIN and NPO, behind the one interface the stage loop (trainer.h)
// drives: the models a stage reads and trains, a step's micro-batches, one micro-batch's forward
// and loss, and the metrics the stage reports. One file each: sft_objective.h, spin_objective.h,
// npo_objective.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dnpo/train/checkpointing.h"
#include "dnpo/train/phase.h"
#include "dnpo/train/sharded_llama.h"
#include "dnpo/train/step_stats.h"

namespace dnpo::train {

/// metrics.jsonl fields of one step, in order.
using MetricValues = std::vector<std::pair<std::string, double>>;

/// The models of a stage as the loop sees them.
struct StageModels {
  std::vector<UnitGroup> trained;  ///< stepped by the optimizer and checkpointed, policy first
  std::vector<UnitGroup> frozen;   ///< checkpointed, never stepped (the reference)
  /// Told where micro-batches and steps end, in this order; each decides what to release and
  /// when to reduce its gradients.
  std::vector<ShardedModule*> modules;

  /// The trained groups' units, in order (clipping, the gradient observer).
  std::vector<dist::ShardedUnit*> trained_units() const;
};

class Objective {
 public:
  virtual ~Objective() = default;
  /// The stage's name in checkpoints and metrics.jsonl ("sft", "spin", "npo").
  virtual std::string stage() const = 0;
  /// The stage in the log ("sft", "train (npo)"); its first word labels the progress display.
  virtual std::string label() const {
    return "train (" + stage() + ")";
  }
  /// What an epoch runs over ("20 pairs (1 identical skipped, 0 truncated)"), for the log.
  virtual std::string describe_data() const = 0;
  virtual std::int64_t num_samples() const = 0;
  StageModels& models() {
    return models_;
  }

  /// Builds step `step`'s micro-batches on the host, one per list of sample indices. Every rank
  /// builds all of them, so a step's batches and global counts do not depend on the world size.
  virtual void plan_step(std::int64_t step,
                         const std::vector<std::vector<std::int64_t>>& micro_samples) = 0;
  /// Forward and loss of micro-batch `index` of the planned step, normalised by the step's global
  /// counts; adds the micro-batch's statistics times `weight` (0 for a padding repeat) to
  /// `stats`, loss excepted. Returns the loss unweighted, with its graph.
  virtual at::Tensor micro_batch_loss(std::size_t index,
                                      double weight,
                                      StepStats& stats,
                                      Phase& phase) = 0;
  /// After the step's forwards and backwards, on every rank (may be collective).
  virtual void finish_step() {}
  /// The objective's own metrics.jsonl fields after "loss", from the step's reduced stats.
  virtual MetricValues metrics(const StepStats& stats) const = 0;
  /// What the stage's checkpoints carry for the objective (null: nothing).
  virtual CarriedState* carried_state() {
    return nullptr;
  }

 protected:
  StageModels models_;  ///< filled by the objective's constructor
};

}  // namespace dnpo::train
