// The stage loop: SFT on prompt/answer records and preference training (SPIN or NPO) on
// chosen/rejected pairs, sharded over the ranks of a Comm (FSDP units, see sharded_llama.h) or in
// one process. What differs between the stages is an Objective (objective.h).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dnpo/config/config.h"
#include "dnpo/data/chat_template.h"
#include "dnpo/data/jsonl.h"
#include "dnpo/data/tokenizer.h"
#include "dnpo/dist/sharded_unit.h"
#include "dnpo/model/llama.h"
#include "dnpo/model/noise_head.h"
#include "dnpo/train/checkpointing.h"
#include "dnpo/train/metrics.h"
#include "dnpo/train/sharded_llama.h"

namespace dnpo::train {

/// What a finished loop reports (per-step values are in metrics.jsonl).
struct TrainSummary {
  std::int64_t steps = 0;
  double first_loss = 0;  ///< mean loss of the first 10% of steps (model loss for NPO)
  double last_loss = 0;   ///< mean loss of the last 10% of steps
  double mean_step_ms = 0;
  std::vector<double> step_ms;      ///< wall time of every optimizer step
  std::vector<double> step_losses;  ///< loss of every step (model loss for NPO), global
  double tokens_per_second = 0;
  std::int64_t truncated = 0;          ///< samples cut to data.max_length
  std::int64_t skipped_identical = 0;  ///< pairs whose chosen and rejected texts are equal
  std::string checkpoint;              ///< the stage's final checkpoint ("" without checkpointing)
};

/// Sees the gradients of a step after backward, before clipping and the optimizer (tests).
/// Called on every rank with the trained units (policy, then the noise head); may be collective.
using GradientObserver =
    std::function<void(std::int64_t step, const std::vector<dist::ShardedUnit*>& units)>;

class Objective;
class Phase;
struct StepStats;

class Trainer {
 public:
  /// policy is trained in place (every rank passes the same model and data; each trains on its
  /// share of every global batch); metrics may be a disabled writer (ranks other than 0).
  Trainer(const config::RunConfig& cfg,
          model::LlamaModel& policy,
          const data::Tokenizer& tokenizer,
          MetricsWriter& metrics,
          dist::Comm& comm);

  /// Trains an already sharded policy in place (a model too large to hold whole on one rank).
  Trainer(const config::RunConfig& cfg,
          ShardedLlama& policy,
          const data::Tokenizer& tokenizer,
          MetricsWriter& metrics,
          dist::Comm& comm);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  void set_gradient_observer(GradientObserver observer) {
    gradient_observer_ = std::move(observer);
  }
  /// Saves checkpoints through `checkpointer` (null: none). When `resume_from` is a checkpoint of
  /// the same stage and iteration (written at any world size), the next stage run continues
  /// from it; one of another stage is ignored (logged).
  void set_checkpointing(Checkpointer* checkpointer, std::optional<std::string> resume_from) {
    checkpointer_ = checkpointer;
    resume_from_ = std::move(resume_from);
  }

  /// NPO's noise head starts from this one's parameters instead of a fresh one (the self-play
  /// loop carrying the head over iterations, npo.fresh_head_each_iteration = false); null = fresh.
  /// Not owned; must outlive the next train_preference().
  void set_initial_noise_head(const ShardedNoiseHead* head) {
    initial_noise_head_ = head;
  }

  /// Named blobs every checkpoint of the next stage carries (the self-play loop's state).
  void set_stage_blobs(std::map<std::string, std::string> blobs) {
    stage_blobs_ = std::move(blobs);
  }

  /// Supervised fine-tuning: token-mean cross-entropy over answer tokens.
  TrainSummary train_sft(const std::vector<data::PromptRecord>& records);

  /// Preference training with train.loss "spin" or "npo"; the reference is a frozen copy of the
  /// policy as it is when this is called, and (for NPO) a fresh noise head is created.
  TrainSummary train_preference(const std::vector<data::PairRecord>& pairs);

  /// The noise head of the last NPO run (null before one, or under npo.fixed_noise).
  /// (Sharded; ShardedNoiseHead::copy_to, a collective, gives whole tensors.)
  ShardedNoiseHead* noise_head() const {
    return noise_head_.get();
  }

 private:
  Trainer(const config::RunConfig& cfg,
          model::LlamaModel* whole_policy,
          ShardedLlama* sharded_policy,
          const data::Tokenizer& tokenizer,
          MetricsWriter& metrics,
          dist::Comm& comm);
  /// The policy as units: the one given, or one made from the whole model (and copied back by
  /// finish_policy()).
  ShardedLlama& begin_policy();
  void finish_policy();
  struct StageRun;
  /// Setup, resume, the steps and the stage's end, for any objective.
  TrainSummary run_stage(Objective& objective);
  /// One optimizer step: plan, forward and backward, the models' step end, clip, step, report.
  void train_step(StageRun& run, std::int64_t step);
  /// This rank's share of the step's micro-batches, each forward, loss and backward.
  void forward_backward(StageRun& run, std::size_t micro_batches, StepStats& stats, Phase& phase);
  /// Restores `state` from resume_from_ when that checkpoint is this stage's (and drops the
  /// metrics lines past its step); returns whether it did.
  bool maybe_resume(StageState& state);
  /// After step `steps_done`: record it, then checkpoint when due (may throw Preempted).
  void end_step(StageState& state, double loss, double ms, std::int64_t tokens);
  /// The stage's final checkpoint (unless it was restored finished), and its summary.
  void end_stage(StageState& state, TrainSummary& summary);

  const config::RunConfig& cfg_;
  model::LlamaModel* whole_policy_ = nullptr;
  ShardedLlama* sharded_policy_ = nullptr;
  std::unique_ptr<ShardedLlama> owned_policy_;
  const data::Tokenizer& tokenizer_;
  data::ChatTemplate chat_;
  MetricsWriter& metrics_;
  dist::Comm& comm_;
  at::Device device_;  // where the units, batches and losses live
  std::unique_ptr<ShardedNoiseHead> noise_head_;
  GradientObserver gradient_observer_;
  Checkpointer* checkpointer_ = nullptr;
  std::optional<std::string> resume_from_;
  std::map<std::string, std::string> stage_blobs_;
  const ShardedNoiseHead* initial_noise_head_ = nullptr;
  std::string restored_from_;  // the checkpoint the stage was restored from, then its final one
};

/// How FSDP units gather and reduce: train.dtype gathers (bf16 or fp32) over fp32 masters;
/// gradients are summed over ranks in dist.reduce_dtype; everything lives on `device`.
dist::UnitPrecision unit_precision(const config::RunConfig& cfg, at::Device device);

/// Order of the samples in an epoch: a counter-based permutation of 0..n-1 (same on every rank).
std::vector<std::int64_t> epoch_order(std::int64_t n,
                                      std::uint64_t seed,
                                      std::uint64_t iteration,
                                      std::int64_t epoch);

}  // namespace dnpo::train
