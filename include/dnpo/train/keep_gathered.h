// dist.reshard_after_forward resolved for a stage: keep the sharded models' units gathered
// through each step (fast, one all-gather per unit per step, no recompute) or reshard after
// every forward (ZeRO-3, the least memory). "auto" keeps them when the memory that takes per
// rank fits the budget (dist.keep_gathered_budget_gb, or half of what is available).
#pragma once

#include <cstdint>
#include <string>

#include "dnpo/config/config.h"
#include "dnpo/dist/comm.h"

namespace dnpo::train {

/// What keeping units gathered costs one rank beyond ZeRO-3, estimated: the policy whole in
/// train.dtype with its fp32 gradient sum, a pair stage's frozen reference in train.dtype, NPO's
/// noise head with its gradient, and one micro-batch's activations kept for backward instead of
/// recomputed (every layer's saved tensors and the logits, for the chosen and rejected sequences
/// of a pair stage).
std::int64_t keep_gathered_bytes(const config::RunConfig& cfg, std::int64_t policy_parameters);

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
