// dist.reshard_after_forward resolved for a stage: keep the sharded models' units gathered
// through each step (fast, one all-gather per unit per step, no recompute) or reshard after
// every forward (ZeRO-3, the least memory). "auto" keeps them when the memory that takes per
// rank fits the budget (dist.keep_gathered_budget_gb, or half of what is available) and the
// whole copies cost at most twice the rank's shard of the model state.
#pragma once

#include <cstdint>
#include <string>

#include "dnpo/config/config.h"
#include "dnpo/dist/comm.h"

namespace dnpo::train {

/// What keeping units gathered costs one rank beyond ZeRO-3, estimated.
struct KeepGatheredCost {
  /// The policy whole in train.dtype with its fp32 gradient sum, a pair stage's frozen reference
  /// in train.dtype, NPO's noise head with its gradient.
  std::int64_t gathered_weights = 0;
  /// One micro-batch's activations kept for backward instead of recomputed (every layer's saved
  /// tensors and the logits, for the chosen and rejected sequences of a pair stage).
  std::int64_t activations = 0;
  /// What the rank holds either way: its shard of the fp32 masters, gradients and optimizer state
  /// of what trains, and of the frozen reference.
  std::int64_t shard = 0;

  std::int64_t need() const {
    return gathered_weights + activations;
  }
};

KeepGatheredCost keep_gathered_cost(const config::RunConfig& cfg,
                                    std::int64_t policy_parameters,
                                    int world_size);

/// Sharding over N ranks was asked for to divide the model's memory; once whole copies would
/// cost more than this many times the rank's own shard (from about 4 ranks in a pair stage),
/// "auto" keeps that division and reshards.
inline constexpr std::int64_t kKeepGatheredMaxShardMultiple = 2;

/// "auto"'s rule for one rank: the whole need fits the budget, and the gathered copies stay
/// within kKeepGatheredMaxShardMultiple × the shard.
bool keeps_gathered(const KeepGatheredCost& cost, double budget_bytes);

struct KeepGathered {
  bool keep = false;
  std::string why;  ///< one line for the log: the setting, and for "auto" the estimate and budget
};

/// collective: the stage's choice, the same on every rank (an "auto" budget is each rank's own
/// free memory; the ranks keep only when every one of them can). "auto" on one rank: false.
KeepGathered decide_keep_gathered(const config::RunConfig& cfg,
                                  dist::Comm& comm,
                                  std::int64_t policy_parameters);

}  // namespace dnpo::train
