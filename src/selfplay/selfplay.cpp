// The self-play loop: the run, its iterations and their reports; see selfplay.h. The phases of
// an iteration live in generation.cpp and outputs.cpp.
#include "dnpo/selfplay/selfplay.h"

#include <algorithm>
#include <optional>

#include <fmt/format.h>

#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "dnpo/common/timer.h"
#include "dnpo/selfplay/report.h"
#include "loop.h"

namespace dnpo::selfplay {
namespace detail {
using Json = nlohmann::json;

SelfplayLoop::SelfplayLoop(const config::RunConfig& cfg, dist::Comm& comm)
    : cfg_(cfg),
      comm_(comm),
      rank_(comm.rank()),
      world_(comm.world_size()),
      dir_(train::prepare_run_dir(cfg, comm)),
      tokenizer_(data::make_tokenizer(cfg.tokenizer)),
      chat_(cfg.chat, *tokenizer_),
      checkpointer_(cfg.checkpoint, train::detail::checkpoint_dir(cfg), comm),
      metrics_(comm.rank() == 0 ? dir_ + "/metrics.jsonl" : "") {}

SelfplayLoop::~SelfplayLoop() = default;

void SelfplayLoop::run() {
  load_data();
  const auto resume = train::resume_checkpoint(cfg_.checkpoint, checkpointer_.dir());
  std::optional<train::LoopPosition> stored;
  if (resume) {
    stored = train::read_position(*resume);
  } else {
    metrics_.restart();  // a run that starts over: no lines of an earlier one
  }
  policy_ = train::detail::make_policy(cfg_, "", comm_);
  log::info_rank0("model: {} parameters", policy_->num_parameters());
  // A checkpoint of SFT resumes model_0's training; any other resumes inside an iteration.
  const bool resume_in_loop = stored && stored->stage != "sft";
  if (resume_in_loop) {
    restore(*resume, stored->stage);
  } else {
    start(stored ? resume : std::nullopt);
  }
  const auto first = state_.iteration;
  const auto last = static_cast<std::uint64_t>(cfg_.selfplay.iterations);
  for (std::uint64_t t = first; t <= last; ++t) {
    auto at = ResumeAt::kStart;
    if (resume_in_loop && t == first) {
      at = stored->stage == kGenerate ? ResumeAt::kGeneration : ResumeAt::kTraining;
    }
    run_iteration(t, at, resume);
  }
  finish();
}

void SelfplayLoop::load_data() {
  DNPO_CHECK_WITH(ConfigError, !cfg_.data.train_file.empty(), "selfplay needs data.train_file");
  train_records_ = data::read_prompts_jsonl(cfg_.data.train_file);
  prompts_ = train_records_;
  if (cfg_.selfplay.prompts > 0 && static_cast<int>(prompts_.size()) > cfg_.selfplay.prompts) {
    prompts_.resize(static_cast<std::size_t>(cfg_.selfplay.prompts));
  }
  if (!cfg_.data.eval_file.empty() && (cfg_.selfplay.eval_each_iteration)) {
    eval_records_ = data::read_prompts_jsonl(cfg_.data.eval_file);
  }
  std::vector<std::string> questions;
  for (const auto& p : prompts_) {
    questions.push_back(p.prompt);
  }
  state_ = LoopState(std::move(questions));
  state_.start_iteration(0);
}

void SelfplayLoop::start(const std::optional<std::string>& resume) {
  if (cfg_.selfplay.sft) {
    train_model_0(resume);
  }
  Json report = {{"stage", "model_0"}, {"iteration", nullptr}};
  if (const auto eval = evaluate_policy()) {
    report["eval"] = eval_json(*eval);
    log::info_rank0("model_0: sampled {}", train::format_scores(eval->sampled));
  }
  state_.reports = Json::array({report});
  write_reports();
}

void SelfplayLoop::restore(const std::string& checkpoint, const std::string& stage) {
  const auto blobs = train::read_stage_blobs(checkpoint);
  const auto it = blobs.find(kBlob);
  DNPO_CHECK_WITH(
      CheckpointError,
      it != blobs.end(),
      "checkpoint {} (stage '{}') has no self-play state; was it written by `dnpo_dist train`?",
      checkpoint,
      stage);
  restore_state(it->second, checkpoint, *tokenizer_, state_);
  log::info_rank0("resume: self-play iteration {} in stage '{}'", state_.iteration, stage);
}

void SelfplayLoop::run_iteration(std::uint64_t t,
                                 ResumeAt at,
                                 const std::optional<std::string>& checkpoint) {
  times_ = PhaseTimes{};
  judge_requests_ = 0;
  judge_reused_ = 0;
  if (at == ResumeAt::kGeneration) {
    resume_generation(*checkpoint);
  } else if (at == ResumeAt::kStart) {
    state_.start_iteration(t);
    generate_and_judge(0);
  }
  const auto judged = judge_counts();
  const auto& plan = iteration_plan(cfg_.selfplay, t);
  const auto labeled = label_iteration(plan);
  Timer train_timer;
  std::optional<train::TrainSummary> summary;
  if (labeled.pairs.empty()) {
    log::warn("iteration {}: no pairs to train on; the policy is unchanged", t);
  } else {
    summary = train_iteration(labeled, at == ResumeAt::kTraining ? checkpoint : std::nullopt);
  }
  times_.train_s = train_timer.seconds();
  auto report = iteration_report(plan, labeled.counts, judged, summary);
  if (const auto eval = evaluate_policy(&labeled)) {
    report["eval"] = eval_json(*eval);
    log::info_rank0("iteration {} → model_{}: sampled {}{}",
                    t,
                    t + 1,
                    train::format_scores(eval->sampled),
                    eval->has_greedy ? fmt::format(" | greedy exact {:.3f}", eval->greedy.exact)
                                     : std::string());
  }
  report["vs_previous_positives"] = similarity_to_previous_positives();
  report["eval_s"] = times_.eval_s;
  if (comm_.rank() == 0) {
    report["logp_mean_after"] = logprob_means_;  // rank 0's report is the one written
  }
  record_report(report);
}

void SelfplayLoop::finish() {
  train::detail::save_trained_model(cfg_, *policy_, nullptr, dir_ + "/final", comm_);
  if (comm_.rank() == 0) {
    log::info_rank0("self-play done:\n{}", selfplay_table({dir_}));
    log::info_rank0(
        "reports: {}/selfplay.jsonl | plots: {}/plots | final model: {}/final | "
        "checkpoints: {}",
        dir_,
        dir_,
        dir_,
        checkpointer_.dir());
  }
}

void SelfplayLoop::train_model_0(const std::optional<std::string>& resume) {
  train::Trainer trainer(cfg_, *policy_, *tokenizer_, metrics_, comm_);
  trainer.set_checkpointing(&checkpointer_, resume);
  const auto summary = trainer.train_sft(train_records_);
  log::info_rank0("sft done: {} steps, loss {:.4f} → {:.4f}, {:.0f} ms/step",
                  summary.steps,
                  summary.first_loss,
                  summary.last_loss,
                  summary.mean_step_ms);
  train::detail::save_trained_model(cfg_, *policy_, &summary, dir_ + "/sft", comm_);
}

JudgeCounts SelfplayLoop::judge_counts() const {
  auto counts = at::tensor(
      {static_cast<double>(judge_requests_), static_cast<double>(judge_reused_)}, at::kDouble);
  if (world_ > 1) {
    comm_.all_reduce_sum(counts).wait();
  }
  return {counts[0].item<double>(), counts[1].item<double>()};
}

LabeledPairs SelfplayLoop::label_iteration(const IterationPlan& plan) {
  for (auto& sample : state_.samples) {
    sample.human_verdict = state_.human[static_cast<std::size_t>(sample.index)];
  }
  auto labeled = label_pairs(prompts_, state_.samples, plan.labeling, cfg_.dsl.threshold);
  write_iteration_files(labeled);
  const auto& c = labeled.counts;
  const auto judged = static_cast<double>(std::max<std::int64_t>(1, c.win + c.tie + c.loss));
  log::info_rank0(
      "iteration {} ({} labels): {} prompts, {} identical skipped, {} pairs, {} with the "
      "generated answer positive | generated vs human: win {:.1f}% tie {:.1f}% loss {:.1f}% | "
      "mean score generated {:.1f}, human {:.1f}",
      state_.iteration,
      labeling_name(plan.labeling),
      c.prompts,
      c.identical,
      c.pairs,
      c.generated_positive,
      100.0 * static_cast<double>(c.win) / judged,
      100.0 * static_cast<double>(c.tie) / judged,
      100.0 * static_cast<double>(c.loss) / judged,
      c.mean_score_generated,
      c.mean_score_human);
  return labeled;
}

train::TrainSummary SelfplayLoop::train_iteration(const LabeledPairs& labeled,
                                                  const std::optional<std::string>& resume) {
  const auto cfg_t = iteration_config(cfg_, state_.iteration);
  train::Trainer trainer(cfg_t, *policy_, *tokenizer_, metrics_, comm_);
  trainer.set_checkpointing(&checkpointer_, resume);
  trainer.set_stage_blobs({{kBlob, dump(state_json(state_))}});
  trainer.set_initial_noise_head(carried_head_.get());
  auto summary = trainer.train_preference(labeled.pairs);
  if (!cfg_.npo.fresh_head_each_iteration && trainer.noise_head() != nullptr) {
    if (!carried_head_) {
      make_carried_head();
    }
    carried_head_->unit()->load_shard_of(*trainer.noise_head()->unit());  // for the next one
  }
  return summary;
}

bool SelfplayLoop::trains_noise_head(std::uint64_t t) const {
  const auto cfg_t = iteration_config(cfg_, t);
  return cfg_t.train.loss == "npo" && !cfg_t.npo.fixed_noise;
}

void SelfplayLoop::make_carried_head() {
  carried_head_ =
      std::make_unique<train::ShardedNoiseHead>(cfg_.npo,
                                                cfg_.model.hidden_size,
                                                cfg_.model.vocab_size,
                                                cfg_.run.seed,
                                                comm_,
                                                train::unit_precision(cfg_, comm_.device()));
}

Json SelfplayLoop::iteration_report(const IterationPlan& plan,
                                    const LabelCounts& c,
                                    const JudgeCounts& judged_by,
                                    const std::optional<train::TrainSummary>& summary) const {
  const auto judged = static_cast<double>(std::max<std::int64_t>(1, c.win + c.tie + c.loss));
  Json report = {{"stage", "iteration"},
                 {"iteration", state_.iteration},
                 {"mode", cfg_.selfplay.mode},
                 {"labels", labeling_name(plan.labeling)},
                 {"loss", plan.objective},
                 {"prompts", c.prompts},
                 {"pairs", c.pairs},
                 {"generated_positive", c.generated_positive},
                 {"identical", c.identical},
                 {"spin_fallback", c.spin_fallback},
                 {"dropped", c.dropped},
                 {"win", c.win},
                 {"tie", c.tie},
                 {"loss_count", c.loss},
                 {"tie_different_text", c.tie_different_text},
                 {"tie_rate", static_cast<double>(c.tie) / judged},
                 {"generated_at_least_human", static_cast<double>(c.win + c.tie) / judged},
                 {"mean_score_generated", c.mean_score_generated},
                 {"mean_score_human", c.mean_score_human},
                 {"generate_s", times_.generate_s},
                 {"judge_wait_s", times_.judge_wait_s},
                 {"judge_requests", judged_by.requests},
                 {"judge_reused", judged_by.reused},
                 {"train_s", times_.train_s}};
  if (summary) {
    report["train_steps"] = summary->steps;
    report["model_loss_first"] = summary->first_loss;
    report["model_loss_last"] = summary->last_loss;
    report["checkpoint"] = summary->checkpoint;
  }
  return report;
}

}  // namespace detail

void run_selfplay(const config::RunConfig& cfg, dist::Comm& comm) {
  detail::SelfplayLoop loop(cfg, comm);
  loop.run();
}

void run_job(const config::RunConfig& cfg, dist::Comm& comm) {
  train::ensure_demo_data(cfg, comm);
  run_selfplay(cfg, comm);
}

}  // namespace dnpo::selfplay
