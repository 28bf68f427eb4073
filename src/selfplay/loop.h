// The self-play loop's class, shared by the files of its phases: selfplay.cpp (the run and its
// iterations), generation.cpp (generating and judging), outputs.cpp (evaluation, files and
// reports). Private to src/selfplay/.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dnpo/config/config.h"
#include "dnpo/data/chat_template.h"
#include "dnpo/data/jsonl.h"
#include "dnpo/data/tokenizer.h"
#include "dnpo/dist/comm.h"
#include "dnpo/judge/judge.h"
#include "dnpo/model/llama.h"
#include "dnpo/selfplay/labeling.h"
#include "dnpo/selfplay/modes.h"
#include "dnpo/train/checkpointing.h"
#include "dnpo/train/driver_parts.h"
#include "dnpo/train/evaluate.h"
#include "dnpo/train/metrics.h"
#include "dnpo/train/sharded_llama.h"
#include "dnpo/train/trainer.h"
#include "selfplay_state.h"

namespace dnpo::selfplay::detail {

constexpr const char* kBlob = "selfplay";      // the loop's state in every checkpoint
constexpr const char* kGenerate = "generate";  // the stage name of generation checkpoints

struct PhaseTimes {
  double generate_s = 0;
  double judge_wait_s = 0;  // from the end of generation until the last verdict was in
  double train_s = 0;
  double eval_s = 0;
};

/// This iteration's requests to the judge, summed over the ranks.
struct JudgeCounts {
  double requests = 0;  // answers sent
  double reused = 0;    // answers that took an earlier or in-flight verdict
};

/// Where an iteration starts: at its beginning, or inside the phase a checkpoint stopped in.
enum class ResumeAt { kStart, kGeneration, kTraining };

// generation.cpp
struct JudgeProgress;
class SamplingPolicy;
struct GenerationRun;

class SelfplayLoop {
 public:
  SelfplayLoop(const config::RunConfig& cfg, dist::Comm& comm);
  ~SelfplayLoop();

  void run();

 private:
  // --- the run and its iterations (selfplay.cpp) ---
  void load_data();
  /// model_0 (SFT, from `resume` when it is an SFT checkpoint) and its report.
  void start(const std::optional<std::string>& resume);
  /// The loop's state from `checkpoint`, written inside an iteration (stage `stage`).
  void restore(const std::string& checkpoint, const std::string& stage);
  void run_iteration(std::uint64_t t, ResumeAt at, const std::optional<std::string>& checkpoint);
  void finish();
  void train_model_0(const std::optional<std::string>& resume);
  /// collective: this iteration's judge requests, over every rank.
  JudgeCounts judge_counts() const;
  /// Pairs from this iteration's answers as `plan` says, written to iter_<t>/ and logged.
  LabeledPairs label_iteration(const IterationPlan& plan);
  train::TrainSummary train_iteration(const LabeledPairs& labeled,
                                      const std::optional<std::string>& resume);
  /// Whether iteration t trains a noise head (NPO with a learned head).
  bool trains_noise_head(std::uint64_t t) const;
  /// An empty sharded head for the one carried over iterations (filled by a copy or a load).
  void make_carried_head();
  nlohmann::json iteration_report(const IterationPlan& plan,
                                  const LabelCounts& counts,
                                  const JudgeCounts& judged,
                                  const std::optional<train::TrainSummary>& summary) const;

  // --- generating and judging (generation.cpp) ---
  /// What this rank still owes an iteration: human answers never judged, answers generated but
  /// not judged (a resumed run), and prompts not generated yet.
  struct WorkLeft {
    std::vector<std::size_t> human;
    std::vector<std::size_t> judge;
    std::vector<std::size_t> generate;
  };
  /// Generation from a checkpoint that holds model_t and the answers and verdicts committed.
  void resume_generation(const std::string& checkpoint);
  void generate_and_judge(std::int64_t rounds_done_before);
  WorkLeft work_left() const;
  /// collective: the most rounds (selfplay.round_prompts) any rank has to generate.
  std::int64_t count_rounds(std::size_t prompts) const;
  /// Asks for the verdicts on the human (or generated) answers of these prompts.
  void ask_judge(judge::Judge& judge, const std::vector<std::size_t>& prompts, bool human);
  /// Generates round `round`'s prompts of `todo` and hands them to the judge.
  void generate_round(SamplingPolicy& sampler,
                      judge::Judge& judge,
                      const std::vector<std::size_t>& todo,
                      std::int64_t round);
  /// collective: a checkpoint when one is due or a stop was requested.
  void checkpoint_boundary(GenerationRun& run, std::int64_t rounds_done, std::int64_t rounds_total);
  /// collective: polls until every rank has every verdict; returns the last boundary's count.
  std::int64_t wait_for_verdicts(GenerationRun& run, std::int64_t boundary);
  JudgeProgress judge_progress(const judge::Judge& judge) const;
  void share_my_results();
  train::StageState generate_stage_state(std::int64_t rounds_done, std::int64_t rounds_total);

  // --- evaluation, files and reports (outputs.cpp) ---
  /// Held-out eval of the current policy (rank 0), and — after an iteration's training, given
  /// its labels — the log-prob histogram data of its positive, negative and generated answers.
  std::optional<train::EvalReport> evaluate_policy(const LabeledPairs* labeled = nullptr);
  nlohmann::json write_logprobs(const model::LlamaModel& model, const LabeledPairs& labeled) const;
  void write_iteration_files(const LabeledPairs& labeled) const;
  /// Rank 0: BLEU and ROUGE-L of this iteration's answers against the previous iteration's
  /// positives (its pairs' chosen answers; the human answer where the pair was skipped as
  /// identical), over the tokenizer's ids (App. F). Empty at iteration 0.
  nlohmann::json similarity_to_previous_positives() const;
  /// Adds `report` to selfplay.jsonl and metrics.jsonl, and redraws the plots.
  void record_report(const nlohmann::json& report);
  void write_reports() const;

  bool mine(std::size_t index) const {
    return static_cast<int>(index % static_cast<std::size_t>(world_)) == rank_;
  }

  const config::RunConfig& cfg_;
  dist::Comm& comm_;
  int rank_;
  int world_;
  std::string dir_;
  std::unique_ptr<data::Tokenizer> tokenizer_;
  data::ChatTemplate chat_;
  train::Checkpointer checkpointer_;
  train::MetricsWriter metrics_;
  std::vector<data::PromptRecord> train_records_;
  std::vector<data::PromptRecord> prompts_;  // the self-play prompts: the first selfplay.prompts
  std::vector<data::PromptRecord> eval_records_;
  std::unique_ptr<train::ShardedLlama> policy_;
  LoopState state_;
  PhaseTimes times_;
  nlohmann::json logprob_means_;  // rank 0: of the last iteration's answers under the model it
                                  // trained
  // npo.fresh_head_each_iteration = false: the last NPO iteration's trained head, which the next
  // one starts from (and which generation checkpoints carry).
  std::unique_ptr<train::ShardedNoiseHead> carried_head_;
  std::int64_t judge_requests_ = 0;  // this iteration, this rank: answers sent to the judge
  std::int64_t judge_reused_ = 0;    // ... and answers that took an earlier or in-flight verdict
};

/// A held-out evaluation as the reports write it.
nlohmann::json eval_json(const train::EvalReport& r);

}  // namespace dnpo::selfplay::detail
