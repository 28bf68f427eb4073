// A training stage's state in checkpoints (docs/checkpoints.md): the units' shards and the
// optimizer's state stored by logical tensor name ("policy.model.layers.0.self_attn.q_proj.weight",
// "optimizer.exp_avg.policy.…"), each rank writing and reading only its own pieces, so a
// checkpoint written at N ranks resumes at M; plus where the loop is. The data order, the noise
// and the schedule are pure functions of (seed, iteration, step), so the step is the whole cursor.
// The Checkpointer decides when to save: every N steps or M minutes, at the end of a stage, and
// when any rank was asked to stop (SIGUSR1/SIGTERM; common/preemption.h).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "dnpo/common/timer.h"
#include "dnpo/config/config.h"
#include "dnpo/dist/comm.h"
#include "dnpo/dist/shard_optimizer.h"
#include "dnpo/dist/sharded_unit.h"
#include "dnpo/train/loop_position.h"

namespace dnpo::train {

/// A group of units stored under one prefix ("policy", "reference", "noise_head").
struct UnitGroup {
  std::string prefix;
  std::vector<dist::ShardedUnit*> units;
};

/// State an objective builds up over a stage and a checkpoint carries (the reference's
/// log-probs of the pairs seen so far), identical on every rank: saved as one blob under its
/// name, handed back when the stage resumes.
class CarriedState {
 public:
  virtual ~CarriedState() = default;
  virtual std::string name() const = 0;
  virtual std::string encode() const = 0;
  /// Throws CheckpointError naming `path` when the bytes do not fit this stage.
  virtual void decode(const std::string& bytes, const std::string& path) = 0;
};

/// What a checkpoint of a stage holds. The optimizer's parameters are the shards of the trained
/// groups' units, in order.
struct StageState {
  LoopPosition position;
  std::vector<UnitGroup> trained;
  std::vector<UnitGroup> frozen;
  dist::ShardOptimizer* optimizer = nullptr;
  std::string resolved_config;  ///< TOML, for the record (inspect shows it)
  /// Whatever else the stage carries forward by name (the self-play loop: this iteration's
  /// prompts, answers with their status, judge scores and labels); saved and restored as is.
  std::map<std::string, std::string> blobs;
  /// The objective's carried state (null: none). A checkpoint without it (written before it
  /// existed) leaves it as it is.
  CarriedState* carried = nullptr;
};

/// Thrown on every rank after the preemption checkpoint is committed; dnpo_dist exits 0.
class Preempted : public std::runtime_error {
 public:
  Preempted(const std::string& path, std::int64_t step, int signal_number);
  std::string path;
  std::int64_t step;
  int signal_number;
};

/// collective: writes `state` as checkpoint `name` in `dir` (atomic; `latest` updated last).
std::string save_stage(const std::string& dir,
                       const std::string& name,
                       const StageState& state,
                       bool keep,
                       int keep_last);
/// collective: the loop position stored in a checkpoint (no tensors read).
LoopPosition read_position(const std::string& path);
/// collective: the named stage blobs stored in a checkpoint (no tensors read).
std::map<std::string, std::string> read_stage_blobs(const std::string& path);

/// collective: fills the units' shards, the optimizer's state and the position from `path`
/// (written at any world size). Throws CheckpointError naming the file and tensor on a missing
/// tensor, a shape that differs (another model) or a damaged chunk.
void load_stage(const std::string& path, StageState& state);

/// When to save, and where; one per stage run, on every rank.
class Checkpointer {
 public:
  Checkpointer(const config::CheckpointConfig& cfg, std::string dir, dist::Comm& comm);
  const std::string& dir() const {
    return dir_;
  }
  /// collective: call after each optimizer step. Saves when due (every N steps / M minutes) or
  /// when any rank was asked to stop, in which case it throws Preempted after the save.
  void after_step(const StageState& state);
  /// collective: at a boundary outside an optimizer loop (a round of generation): when any rank
  /// was asked to stop, or the clock or `rounds_done` % every_steps says so, saves
  /// make_state(stopping) (called on every rank, may be collective) and throws Preempted after a
  /// stop request.
  void at_boundary(const std::function<StageState(bool stopping)>& make_state,
                   std::int64_t rounds_done);
  /// collective: a checkpoint now (not kept past keep_last); returns its path.
  std::string save_now(const StageState& state);
  /// collective: the stage's final checkpoint (kept); returns its path.
  std::string save_final(const StageState& state);

 private:
  std::string next_name() const;
  /// collective: {stop requested on any rank, save due by the clock on any rank}.
  std::pair<bool, bool> poll() const;
  config::CheckpointConfig cfg_;
  std::string dir_;
  dist::Comm& comm_;
  Timer since_save_;  // the stage's start, then the last save
};

/// The checkpoint a run resumes from: cfg.resume "none" → nullopt; "auto" → the newest valid
/// one in dir (damaged ones reported and skipped; nullopt if none); else that file, verified.
/// collective.
std::optional<std::string> resume_checkpoint(const config::CheckpointConfig& cfg,
                                             const std::string& dir);

}  // namespace dnpo::train
