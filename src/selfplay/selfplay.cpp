// The self-play loop: phases, their checkpoints, and the per-iteration report; see selfplay.h.
#include "dnpo/selfplay/selfplay.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "dnpo/common/timer.h"
#include "dnpo/config/loader.h"
#include "dnpo/data/chat_template.h"
#include "dnpo/data/jsonl.h"
#include "dnpo/data/tokenizer.h"
#include "dnpo/judge/judge.h"
#include "dnpo/judge/verdict_book.h"
#include "dnpo/model/batch.h"
#include "dnpo/model/sampler.h"
#include "dnpo/selfplay/labeling.h"
#include "dnpo/selfplay/report.h"
#include "dnpo/selfplay/text_metrics.h"
#include "dnpo/train/checkpointing.h"
#include "dnpo/train/dnpo_loss.h"
#include "dnpo/train/driver_parts.h"
#include "dnpo/train/evaluate.h"
#include "dnpo/train/metrics.h"
#include "dnpo/train/trainer.h"
#include "selfplay_state.h"

namespace dnpo::selfplay {
namespace fs = std::filesystem;
using Json = nlohmann::json;
using detail::dump;
using detail::LoopState;
using detail::restore_sample;
using detail::restore_state;
using detail::sample_json;
using detail::state_json;
using train::detail::barrier;
using train::detail::is_rank0;

namespace {

constexpr const char* kBlob = "selfplay";      // the loop's state in every checkpoint
constexpr const char* kGenerate = "generate";  // the stage name of generation checkpoints
constexpr double kJudgeReportEveryS = 10;      // progress while waiting for the last verdicts

/// The judge's counts summed over the ranks (collective), for the progress line.
struct JudgeProgress {
  double judged = 0;  // scored (cache hits included)
  double pending = 0;
  double failed = 0;  // fell back to SPIN, dropped or failed
  double attempts = 0;
  double unharvested = 0;  // verdicts the loop still waits for (its own count)

  static JudgeProgress of_job(const judge::Judge& judge,
                              std::size_t unharvested,
                              dist::Comm* comm,
                              int world) {
    const auto s = judge.stats();
    auto t = at::tensor({static_cast<double>(s.scored),
                         static_cast<double>(s.pending),
                         static_cast<double>(s.spin_fallback + s.dropped + s.failed),
                         static_cast<double>(s.attempts),
                         static_cast<double>(unharvested)},
                        at::kDouble);
    if (comm != nullptr && world > 1) {
      comm->all_reduce_sum(t).wait();
    }
    const auto* v = t.data_ptr<double>();
    return {v[0], v[1], v[2], v[3], v[4]};
  }
  /// "judge: 1200 judged, 35 pending, 0 failed, 41.3 req/s" (no rate for the in-process rule
  /// judge, which sends no requests)
  std::string text(double seconds) const {
    auto line =
        fmt::format("judge: {:.0f} judged, {:.0f} pending, {:.0f} failed", judged, pending, failed);
    if (attempts > 0 && seconds > 0) {
      line += fmt::format(", {:.1f} req/s", attempts / seconds);
    }
    return line;
  }
};

struct PhaseTimes {
  double generate_s = 0;
  double judge_wait_s = 0;  // from the end of generation until the last verdict was in
  double train_s = 0;
  double eval_s = 0;
};

Json eval_json(const train::EvalReport& r) {
  Json j = {{"prompts", r.prompts},
            {"sampled_exact", r.sampled.exact},
            {"sampled_score", r.sampled.mean_score},
            {"sampled_exact_by_task", r.sampled.exact_by_task}};
  if (r.sampled.judged > 0) {
    j["sampled_judge_score"] = r.sampled.judge_score;
  }
  if (r.has_greedy) {
    j["greedy_exact"] = r.greedy.exact;
    j["greedy_score"] = r.greedy.mean_score;
  }
  return j;
}

/// The policy as it samples: whole on every rank (one gather per iteration), or gathered a layer
/// at a time with every rank decoding in lockstep (each forward is collective).
class SamplingPolicy {
 public:
  SamplingPolicy(train::ShardedLlama& policy,
                 const config::RunConfig& cfg,
                 const data::Tokenizer& tokenizer,
                 std::uint64_t iteration)
      : cfg_(cfg),
        tokenizer_(tokenizer),
        keys_{cfg.run.seed, iteration},
        per_layer_(cfg.selfplay.generation == "per_layer"),
        layered_(policy) {
    if (!per_layer_) {
      whole_.emplace(policy.config(), policy.gather_parameters(true));
      whole_->prepare_for_decoding(model::decoding_dtype(cfg.sample.dtype));
    }
  }

  std::vector<model::Generation> generate(const std::vector<model::GenerationRequest>& requests) {
    const auto eos = tokenizer_.eos_id();
    const auto pad = tokenizer_.pad_id();
    if (per_layer_) {
      return model::generate(layered_, requests, cfg_.sample, eos, pad, keys_, true);
    }
    return model::generate(*whole_, requests, cfg_.sample, eos, pad, keys_);
  }

  /// A round with nothing to generate on this rank: decoding layer by layer, a one-token
  /// stand-in still matches the other ranks' gathers.
  void idle_round() {
    if (per_layer_) {
      generate({{{tokenizer_.bos_id()}, 0}});
    }
  }

  /// The dtype its matrices decode in, for the log.
  std::string dtype() const {
    return per_layer_ ? cfg_.train.dtype : c10::toString(whole_->weights().lm_head.scalar_type());
  }

 private:
  const config::RunConfig& cfg_;
  const data::Tokenizer& tokenizer_;
  model::SamplingKeys keys_;
  bool per_layer_;
  std::optional<model::LlamaModel> whole_;
  train::ShardedDecoder layered_;
};

/// A generation phase on this rank: the judge it asks (shut when a stop is requested) and the
/// clock since its first round.
struct GenerationRun {
  std::unique_ptr<judge::Judge> judge;
  Timer clock;
};

class SelfplayLoop {
 public:
  SelfplayLoop(const config::RunConfig& cfg, dist::Comm* comm)
      : cfg_(cfg),
        comm_(comm),
        rank_(comm == nullptr ? 0 : comm->rank()),
        world_(comm == nullptr ? 1 : comm->world_size()),
        dir_(train::prepare_run_dir(cfg, comm)),
        tokenizer_(data::make_tokenizer(cfg.tokenizer)),
        chat_(cfg.chat, *tokenizer_),
        checkpointer_(cfg.checkpoint, train::detail::checkpoint_dir(cfg), comm),
        metrics_(is_rank0(comm) ? dir_ + "/metrics.jsonl" : "") {}

  void run();

 private:
  void load_data();
  void train_model_0(const std::optional<std::string>& resume);
  /// What this rank still owes an iteration: human answers never judged, answers generated but
  /// not judged (a resumed run), and prompts not generated yet.
  struct WorkLeft {
    std::vector<std::size_t> human;
    std::vector<std::size_t> judge;
    std::vector<std::size_t> generate;
  };

  void generate_and_judge(std::int64_t rounds_done_before);
  WorkLeft work_left() const;
  /// collective: the most rounds of sample.batch_size prompts any rank has to generate.
  std::int64_t count_rounds(std::size_t prompts) const;
  /// Asks for the verdicts on the human (or generated) answers of these prompts.
  void ask_judge(judge::Judge& judge, const std::vector<std::size_t>& prompts, bool human);
  /// Generates round `round`'s batch of `todo` and hands it to the judge.
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
  /// Whether iteration t trains a noise head (NPO with a learned head).
  bool trains_noise_head(std::uint64_t t) const;
  /// An empty sharded head for the one carried over iterations (filled by a copy or a load).
  void make_carried_head();
  train::TrainSummary train_iteration(const LabeledPairs& labeled,
                                      const std::optional<std::string>& resume);
  /// Held-out eval of the current policy (rank 0), and — after an iteration's training, given
  /// its labels — the log-prob histogram data of its positive, negative and generated answers.
  std::optional<train::EvalReport> evaluate_policy(const LabeledPairs* labeled = nullptr);
  Json write_logprobs(const model::LlamaModel& model, const LabeledPairs& labeled) const;
  void write_iteration_files(const LabeledPairs& labeled) const;
  void write_reports() const;
  /// Rank 0: BLEU and ROUGE-L of this iteration's answers against the previous iteration's
  /// positives (its pairs' chosen answers; the human answer where the pair was skipped as
  /// identical), over the tokenizer's ids (App. F). Empty at iteration 0.
  Json similarity_to_previous_positives() const;
  bool mine(std::size_t index) const {
    return static_cast<int>(index % static_cast<std::size_t>(world_)) == rank_;
  }

  const config::RunConfig& cfg_;
  dist::Comm* comm_;
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
  Json logprob_means_;  // rank 0: of the last iteration's answers under the model it trained
  // npo.fresh_head_each_iteration = false: the last NPO iteration's trained head, which the next
  // one starts from (and which generation checkpoints carry).
  std::unique_ptr<train::ShardedNoiseHead> carried_head_;
  std::int64_t judge_requests_ = 0;  // this iteration, this rank: answers sent to the judge
  std::int64_t judge_reused_ = 0;    // ... and answers that took an earlier or in-flight verdict
};

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

train::StageState SelfplayLoop::generate_stage_state(std::int64_t rounds_done,
                                                     std::int64_t rounds_total) {
  train::StageState s;
  s.position.stage = kGenerate;
  s.position.iteration = state_.iteration;
  s.position.steps_done = rounds_done;
  s.position.total_steps = rounds_total;
  s.trained = {{"policy", policy_->units()}};
  if (carried_head_) {
    s.trained.push_back({"noise_head", {carried_head_->unit()}});
  }
  s.resolved_config = config::to_toml(cfg_);
  s.blobs[kBlob] = dump(state_json(state_));
  return s;
}

bool SelfplayLoop::trains_noise_head(std::uint64_t t) const {
  const auto cfg_t = iteration_config(cfg_, t);
  return cfg_t.train.loss == "npo" && !cfg_t.npo.fixed_noise;
}

void SelfplayLoop::make_carried_head() {
  carried_head_ = std::make_unique<train::ShardedNoiseHead>(
      cfg_.npo,
      cfg_.model.hidden_size,
      cfg_.model.vocab_size,
      cfg_.run.seed,
      comm_,
      train::unit_precision(cfg_, train::compute_device(cfg_, comm_)));
}

// Every rank sends the samples and human verdicts of its own prompts; all ranks merge them, so
// every rank then holds the same, complete state.
void SelfplayLoop::share_my_results() {
  Json mine_json = {{"s", Json::array()}, {"h", Json::array()}};
  for (std::size_t i = 0; i < state_.samples.size(); ++i) {
    if (mine(i)) {
      mine_json["s"].push_back(sample_json(state_.samples[i]));
      mine_json["h"].push_back(
          Json::array({i, judge::verdict_json(state_.human[i]), state_.known_json(i)}));
    }
  }
  for (const auto& text : dist::all_gather_text(comm_, mine_json.dump())) {
    const auto j = Json::parse(text);
    for (const auto& s : j.at("s")) {
      restore_sample(s, *tokenizer_, state_);
    }
    for (const auto& h : j.at("h")) {
      const auto i = h.at(0).get<std::size_t>();
      state_.human[i] = judge::verdict_from(h.at(1));
      state_.restore_known(i, h.at(2));
    }
  }
}

SelfplayLoop::WorkLeft SelfplayLoop::work_left() const {
  WorkLeft left;
  for (std::size_t i = 0; i < prompts_.size(); ++i) {
    if (!mine(i)) {
      continue;
    }
    if (!state_.human[i]) {
      left.human.push_back(i);
    }
    const auto& s = state_.samples[i];
    if (!s.generated) {
      left.generate.push_back(i);
    } else if (!s.generated_verdict) {
      left.judge.push_back(i);
    }
  }
  return left;
}

std::int64_t SelfplayLoop::count_rounds(std::size_t prompts) const {
  const auto batch = static_cast<std::size_t>(cfg_.sample.batch_size);
  const auto mine = static_cast<std::int64_t>((prompts + batch - 1) / batch);
  if (comm_ == nullptr || world_ == 1) {
    return mine;
  }
  auto all = at::zeros({world_}, at::kDouble);
  all[rank_] = static_cast<double>(mine);
  comm_->all_reduce_sum(all).wait();
  return static_cast<std::int64_t>(all.max().item<double>());
}

// One request per distinct (prompt, answer): an answer equal to one judged before (the human
// answer, or an earlier iteration's) takes that verdict; one equal to an answer in flight waits
// for it.
void SelfplayLoop::ask_judge(judge::Judge& judge,
                             const std::vector<std::size_t>& prompts,
                             bool human) {
  for (const auto i : prompts) {
    const auto& answer = human ? prompts_[i].answer : state_.samples[i].answer;
    judge::VerdictBook::Reader reader;
    if (human) {
      reader = [this, i](const Verdict& v) { state_.human[i] = v; };
    } else {
      reader = [this, i](const Verdict& v) { state_.samples[i].generated_verdict = v; };
    }
    if (state_.verdicts.ask(state_.key(i, answer), std::move(reader)) !=
        judge::VerdictBook::Asked::kNew) {
      ++judge_reused_;
    }
  }
  judge_requests_ += static_cast<std::int64_t>(state_.verdicts.send(judge));
}

void SelfplayLoop::generate_round(SamplingPolicy& sampler,
                                  judge::Judge& judge,
                                  const std::vector<std::size_t>& todo,
                                  std::int64_t round) {
  const auto batch = static_cast<std::size_t>(cfg_.sample.batch_size);
  const auto begin = static_cast<std::size_t>(round) * batch;
  if (begin >= todo.size()) {
    sampler.idle_round();
    return;
  }
  const auto end = std::min(todo.size(), begin + batch);
  const std::vector<std::size_t> indices(todo.begin() + static_cast<std::ptrdiff_t>(begin),
                                         todo.begin() + static_cast<std::ptrdiff_t>(end));
  std::vector<model::GenerationRequest> requests;
  for (const auto i : indices) {
    requests.push_back({chat_.encode_prompt(prompts_[i].prompt), i});
  }
  const auto generations = sampler.generate(requests);
  for (std::size_t k = 0; k < indices.size(); ++k) {
    auto& s = state_.samples[indices[k]];
    s.generated = true;
    s.tokens = generations[k].tokens;
    s.answer = tokenizer_->decode(s.tokens);
    s.finished = generations[k].finished;
  }
  ask_judge(judge, indices, false);  // judged while the next batch generates
}

// Before a checkpoint: every verdict in so far, on every rank. Before a stop, the judge is shut
// first, so no request starts or completes unrecorded: a resumed run re-sends only the requests
// that were in flight.
void SelfplayLoop::checkpoint_boundary(GenerationRun& run,
                                       std::int64_t rounds_done,
                                       std::int64_t rounds_total) {
  checkpointer_.at_boundary(
      [&](bool stopping) {
        if (stopping) {
          run.judge.reset();
        }
        state_.verdicts.collect(stopping);
        share_my_results();
        return generate_stage_state(rounds_done, rounds_total);
      },
      rounds_done);
}

void SelfplayLoop::generate_and_judge(std::int64_t rounds_done_before) {
  const auto t = state_.iteration;
  SamplingPolicy sampler(*policy_, cfg_, *tokenizer_, t);
  GenerationRun run;
  run.judge = judge::make_judge(judge::rank_share(cfg_.judge, rank_, world_));
  const auto left = work_left();
  ask_judge(*run.judge, left.human, true);
  ask_judge(*run.judge, left.judge, false);
  // Every rank runs the same number of rounds, so the checkpoint boundaries (collective) line up.
  const auto rounds = count_rounds(left.generate.size());
  log::info_rank0(
      "iteration {}: generating for {} prompts on {} rank(s) ({} rounds of {} per rank; "
      "matrices in {})",
      t,
      prompts_.size(),
      world_,
      rounds,
      cfg_.sample.batch_size,
      sampler.dtype());
  std::optional<train::Progress> progress;
  if (is_rank0(comm_)) {
    progress.emplace("generate", rounds, cfg_.run.log_every);
  }
  run.clock.reset();
  for (std::int64_t round = 0; round < rounds; ++round) {
    generate_round(sampler, *run.judge, left.generate, round);
    state_.verdicts.collect(false);
    const auto judging = judge_progress(*run.judge);
    if (progress) {
      progress->update(round + 1, judging.text(run.clock.seconds()));
    }
    checkpoint_boundary(run, rounds_done_before + round + 1, rounds_done_before + rounds);
  }
  if (progress) {
    progress->finish();
  }
  times_.generate_s = run.clock.seconds();
  const auto boundary = wait_for_verdicts(run, rounds_done_before + rounds);
  share_my_results();
  // The phase's result is committed before training starts.
  checkpointer_.save_now(generate_stage_state(boundary, boundary));
}

// The last verdicts come in short polls that are also checkpoint boundaries, so a job stopped
// while the judge is slow keeps every verdict already in.
std::int64_t SelfplayLoop::wait_for_verdicts(GenerationRun& run, std::int64_t boundary) {
  Timer wait_timer;
  double last_report_s = 0;
  JudgeProgress judging;  // the job's counts as of the last poll
  for (;;) {
    state_.verdicts.wait(std::chrono::milliseconds(100));
    state_.verdicts.collect(false);
    judging = judge_progress(*run.judge);
    if (judging.unharvested == 0) {
      break;
    }
    if (wait_timer.seconds() - last_report_s >= kJudgeReportEveryS) {  // rank 0 decides alone
      last_report_s = wait_timer.seconds();
      log::info_rank0("iteration {}: waiting for the judge; {}",
                      state_.iteration,
                      judging.text(run.clock.seconds()));
    }
    ++boundary;
    checkpoint_boundary(run, boundary, boundary);
  }
  times_.judge_wait_s = wait_timer.seconds();
  log::info_rank0(
      "iteration {}: generated in {:.1f} s; waited {:.2f} s for the judge after generation; {}",
      state_.iteration,
      times_.generate_s,
      times_.judge_wait_s,
      judging.text(run.clock.seconds()));
  return boundary;
}

JudgeProgress SelfplayLoop::judge_progress(const judge::Judge& judge) const {
  return JudgeProgress::of_job(judge, state_.verdicts.in_flight(), comm_, world_);
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

std::optional<train::EvalReport> SelfplayLoop::evaluate_policy(const LabeledPairs* labeled) {
  if (eval_records_.empty() && labeled == nullptr) {
    return std::nullopt;
  }
  Timer timer;
  auto tensors = policy_->gather_parameters(is_rank0(comm_));  // collective
  std::optional<train::EvalReport> report;
  if (is_rank0(comm_)) {
    const model::LlamaModel model(policy_->config(), tensors);
    if (!eval_records_.empty()) {
      auto eval_cfg = cfg_;
      eval_cfg.train.iteration = 0;  // the same draws for every model: differences are the model's
      eval_cfg.judge.backend = "rule";  // the verifier; `dnpo_dist eval` asks an http judge
      report = train::evaluate(eval_cfg, model, *tokenizer_, eval_records_);
    }
    if (labeled != nullptr) {
      logprob_means_ = write_logprobs(model, *labeled);
    }
  }
  barrier(comm_);
  times_.eval_s = timer.seconds();
  return report;
}

// log π(y|x) under the model just trained, of up to kLogprobPairs pairs' positive and negative
// answers and of those prompts' generated answers (paper Fig. 2 and 10): a histogram CSV
// {logp (bin centre), positive, negative, generated} that report.cpp draws; returns the means.
Json SelfplayLoop::write_logprobs(const model::LlamaModel& model,
                                  const LabeledPairs& labeled) const {
  constexpr std::size_t kLogprobPairs = 1000;
  constexpr std::size_t kBatch = 64;
  constexpr int kBins = 40;
  const std::array<const char*, 3> kinds{"positive", "negative", "generated"};
  struct Row {
    std::size_t kind;
    const std::string* prompt;
    const std::string* answer;
  };
  std::vector<Row> rows;
  for (std::size_t i = 0; i < labeled.pairs.size() && i < kLogprobPairs; ++i) {
    const auto& p = labeled.pairs[i];
    rows.push_back({0, &p.prompt, &p.chosen});
    rows.push_back({1, &p.prompt, &p.rejected});
  }
  for (std::size_t i = 0; i < state_.samples.size() && i < kLogprobPairs; ++i) {
    rows.push_back({2, &prompts_[i].prompt, &state_.samples[i].answer});
  }
  const at::NoGradGuard no_grad;
  std::vector<double> logp;
  for (std::size_t begin = 0; begin < rows.size(); begin += kBatch) {
    const auto end = std::min(rows.size(), begin + kBatch);
    std::vector<model::TokenSequence> seqs;
    for (std::size_t i = begin; i < end; ++i) {
      model::TokenSequence seq{chat_.encode_prompt(*rows[i].prompt),
                               chat_.encode_response(*rows[i].answer)};
      model::truncate_sequence(seq, cfg_.data.max_length, cfg_.data.max_prompt_length);
      seqs.push_back(std::move(seq));
    }
    // on the model's device (a GPU's, with run.device = "cuda")
    const auto batch = model::to_device(model::pad_batch(seqs, tokenizer_->pad_id()),
                                        model.weights().embed_tokens.device());
    const auto hidden = model.forward_hidden(batch.input_ids, batch.attention_mask);
    const auto values =
        train::sequence_logprobs(hidden, model.lm_head(), batch.input_ids, batch.loss_mask)
            .to(at::kCPU)
            .contiguous();
    const auto* v = values.data_ptr<float>();
    logp.insert(logp.end(), v, v + (end - begin));
  }
  Json means = Json::object();
  if (logp.empty()) {
    return means;
  }
  const auto [lo_it, hi_it] = std::minmax_element(logp.begin(), logp.end());
  const double lo = *lo_it;
  const double width = std::max(1e-6, (*hi_it - lo) / kBins);
  std::vector<std::array<std::int64_t, 3>> counts(kBins, {0, 0, 0});
  std::array<double, 3> sums{0, 0, 0};
  std::array<std::int64_t, 3> totals{0, 0, 0};
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto bin = std::min(kBins - 1, static_cast<int>((logp[i] - lo) / width));
    counts[static_cast<std::size_t>(bin)][rows[i].kind] += 1;
    sums[rows[i].kind] += logp[i];
    totals[rows[i].kind] += 1;
  }
  fs::create_directories(dir_ + "/plots");
  const auto path = fmt::format("{}/plots/logprobs_iter_{}.csv", dir_, state_.iteration);
  std::ofstream out(path);
  DNPO_CHECK(out.good(), "cannot write '", path, "'");
  out << "logp,positive,negative,generated\n";
  for (int b = 0; b < kBins; ++b) {
    const auto& c = counts[static_cast<std::size_t>(b)];
    out << lo + (b + 0.5) * width << "," << c[0] << "," << c[1] << "," << c[2] << "\n";
  }
  for (std::size_t k = 0; k < kinds.size(); ++k) {
    if (totals[k] > 0) {
      means[kinds[k]] = sums[k] / static_cast<double>(totals[k]);
    }
  }
  return means;
}

void SelfplayLoop::write_iteration_files(const LabeledPairs& labeled) const {
  if (!is_rank0(comm_)) {
    return;
  }
  const auto dir = fmt::format("{}/iter_{}", dir_, state_.iteration);
  fs::create_directories(dir);
  std::ofstream out(dir + "/samples.jsonl");
  DNPO_CHECK(out.good(), "cannot write '", dir, "/samples.jsonl'");
  for (const auto& s : state_.samples) {
    const auto& r = prompts_[static_cast<std::size_t>(s.index)];
    const auto& g = s.generated_verdict;
    const auto& h = state_.human[static_cast<std::size_t>(s.index)];
    Json j = {{"id", r.id},
              {"prompt", r.prompt},
              {"human", r.answer},
              {"generated", s.answer},
              {"finished", s.finished},
              {"outcome_generated", g ? judge::outcome_name(g->outcome) : "none"},
              {"outcome_human", h ? judge::outcome_name(h->outcome) : "none"}};
    if (g && g->outcome == judge::Outcome::kScored) {
      j["score_generated"] = g->score;
    }
    if (h && h->outcome == judge::Outcome::kScored) {
      j["score_human"] = h->score;
    }
    out << dump(j) << "\n";
  }
  // As data::write_pairs_jsonl, but invalid UTF-8 from a byte-level model is replaced, not fatal.
  std::ofstream pairs(dir + "/pairs.jsonl");
  DNPO_CHECK(pairs.good(), "cannot write '", dir, "/pairs.jsonl'");
  for (const auto& p : labeled.pairs) {
    Json j = {{"id", p.id}, {"prompt", p.prompt}, {"chosen", p.chosen}, {"rejected", p.rejected}};
    if (p.score_chosen && p.score_rejected) {
      j["score_chosen"] = *p.score_chosen;
      j["score_rejected"] = *p.score_rejected;
    }
    pairs << dump(j) << "\n";
  }
}

Json SelfplayLoop::similarity_to_previous_positives() const {
  const auto t = state_.iteration;
  const auto path = fmt::format("{}/iter_{}/pairs.jsonl", dir_, t - 1);
  if (t == 0 || !is_rank0(comm_) || !fs::exists(path)) {
    return nullptr;
  }
  std::map<std::string, std::string> chosen;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = Json::parse(line);
    chosen[j.at("id").get<std::string>()] = j.at("chosen").get<std::string>();
  }
  std::vector<TokenIds> generated;
  std::vector<TokenIds> previous;
  for (std::size_t i = 0; i < prompts_.size(); ++i) {
    const auto it = chosen.find(prompts_[i].id);
    generated.push_back(state_.samples[i].tokens);
    previous.push_back(tokenizer_->encode(it != chosen.end() ? it->second : prompts_[i].answer));
  }
  return {{"bleu", corpus_bleu(generated, previous)},
          {"rouge_l", mean_rouge_l(generated, previous)}};
}

void SelfplayLoop::write_reports() const {
  if (!is_rank0(comm_)) {
    return;
  }
  const auto path = dir_ + "/selfplay.jsonl";
  const auto tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    for (const auto& r : state_.reports) {
      out << dump(r) << "\n";
    }
    DNPO_CHECK(out.good(), "cannot write '", tmp, "'");
  }
  fs::rename(tmp, path);
  try {
    write_selfplay_plots(dir_);
  } catch (const std::exception& e) {
    log::warn("plots: {} (the run goes on)", e.what());  // a plot is never worth a lost run
  }
}

void SelfplayLoop::run() {
  load_data();
  const auto resume = train::resume_checkpoint(cfg_.checkpoint, checkpointer_.dir());
  std::optional<train::LoopPosition> stored;
  if (resume) {
    stored = train::read_position(*resume);
  }
  if (!resume) {
    metrics_.restart();  // a run that starts over: no lines of an earlier one
  }
  const bool resume_in_sft = stored && stored->stage == "sft";
  const bool resume_in_loop = stored && !resume_in_sft;

  policy_ = train::detail::make_policy(cfg_, "", comm_);
  log::info_rank0("model: {} parameters", policy_->num_parameters());
  if (resume_in_loop) {
    const auto blobs = train::read_stage_blobs(*resume);
    const auto it = blobs.find(kBlob);
    DNPO_CHECK_WITH(CheckpointError,
                    it != blobs.end(),
                    "checkpoint ",
                    *resume,
                    " (stage '",
                    stored->stage,
                    "') has no self-play state; was it written by `dnpo_dist train`?");
    restore_state(it->second, *resume, *tokenizer_, state_);
    log::info_rank0(
        "resume: self-play iteration {} in stage '{}'", state_.iteration, stored->stage);
  } else {
    if (cfg_.selfplay.sft) {
      train_model_0(resume_in_sft ? resume : std::nullopt);
    }
    Json report = {{"stage", "model_0"}, {"iteration", nullptr}};
    if (const auto eval = evaluate_policy()) {
      report["eval"] = eval_json(*eval);
      log::info_rank0("model_0: sampled {}", train::format_scores(eval->sampled));
    }
    state_.reports = Json::array({report});
    write_reports();
  }

  const auto first = state_.iteration;
  const auto last = static_cast<std::uint64_t>(cfg_.selfplay.iterations);
  for (std::uint64_t t = first; t <= last; ++t) {
    const bool resuming_here = resume_in_loop && t == first;
    const bool resume_generation = resuming_here && stored->stage == kGenerate;
    const bool resume_training = resuming_here && !resume_generation;
    times_ = PhaseTimes{};
    judge_requests_ = 0;
    judge_reused_ = 0;
    if (resume_generation) {
      // The checkpoint holds model_t and the answers and verdicts committed so far.
      if (!cfg_.npo.fresh_head_each_iteration && t > 0 && trains_noise_head(t - 1)) {
        make_carried_head();  // the head carried over from iteration t - 1 is in the checkpoint
      }
      train::StageState s = generate_stage_state(0, 0);
      train::load_stage(*resume, s);
      generate_and_judge(s.position.steps_done);
    } else if (!resume_training) {
      state_.start_iteration(t);
      generate_and_judge(0);
    }
    for (auto& sample : state_.samples) {
      sample.human_verdict = state_.human[static_cast<std::size_t>(sample.index)];
    }
    auto judge_counts = at::tensor(
        {static_cast<double>(judge_requests_), static_cast<double>(judge_reused_)}, at::kDouble);
    if (comm_ != nullptr && world_ > 1) {
      comm_->all_reduce_sum(judge_counts).wait();
    }
    const bool dsl = uses_dsl(cfg_.selfplay, t);
    const auto labeled = label_pairs(
        prompts_, state_.samples, dsl ? Labeling::kDsl : Labeling::kSpin, cfg_.dsl.threshold);
    write_iteration_files(labeled);
    const auto& c = labeled.counts;
    const auto judged = static_cast<double>(std::max<std::int64_t>(1, c.win + c.tie + c.loss));
    log::info_rank0(
        "iteration {} ({} labels): {} prompts, {} identical skipped, {} pairs, {} with the "
        "generated answer positive | generated vs human: win {:.1f}% tie {:.1f}% loss {:.1f}% | "
        "mean score generated {:.1f}, human {:.1f}",
        t,
        dsl ? "dsl" : "spin",
        c.prompts,
        c.identical,
        c.pairs,
        c.generated_positive,
        100.0 * static_cast<double>(c.win) / judged,
        100.0 * static_cast<double>(c.tie) / judged,
        100.0 * static_cast<double>(c.loss) / judged,
        c.mean_score_generated,
        c.mean_score_human);
    Timer train_timer;
    std::optional<train::TrainSummary> summary;
    if (labeled.pairs.empty()) {
      log::warn("iteration {}: no pairs to train on; the policy is unchanged", t);
    } else {
      summary = train_iteration(labeled, resume_training ? resume : std::nullopt);
    }
    times_.train_s = train_timer.seconds();
    Json report = {{"stage", "iteration"},
                   {"iteration", t},
                   {"mode", cfg_.selfplay.mode},
                   {"labels", dsl ? "dsl" : "spin"},
                   {"loss", iteration_config(cfg_, t).train.loss},
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
                   {"judge_requests", judge_counts[0].item<double>()},
                   {"judge_reused", judge_counts[1].item<double>()},
                   {"train_s", times_.train_s}};
    if (summary) {
      report["train_steps"] = summary->steps;
      report["model_loss_first"] = summary->first_loss;
      report["model_loss_last"] = summary->last_loss;
      report["checkpoint"] = summary->checkpoint;
    }
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
    if (is_rank0(comm_)) {
      report["logp_mean_after"] = logprob_means_;  // rank 0's report is the one written
    }
    state_.reports.push_back(report);
    metrics_.set_iteration(t);
    metrics_.write_object(dump(Json{{"kind", "selfplay"}, {"iteration", t}, {"report", report}}));
    write_reports();
  }
  train::detail::save_trained_model(cfg_, *policy_, nullptr, dir_ + "/final", comm_);
  if (is_rank0(comm_)) {
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

}  // namespace

bool uses_dsl(const config::SelfplayConfig& cfg, std::uint64_t t) {
  return t > 0 && (cfg.mode == "dsl" || cfg.mode == "dnpo" || cfg.mode == "fixed_noise");
}

config::RunConfig iteration_config(const config::RunConfig& cfg, std::uint64_t t) {
  auto out = cfg;
  const bool npo = t > 0 && (cfg.selfplay.mode == "npo" || cfg.selfplay.mode == "dnpo" ||
                             cfg.selfplay.mode == "fixed_noise");
  out.train.loss = npo ? "npo" : "spin";
  out.train.lr = cfg.selfplay.lr;
  out.train.epochs = cfg.selfplay.epochs;
  out.train.max_steps = 0;
  out.train.iteration = t;
  out.npo.fixed_noise = cfg.npo.fixed_noise || cfg.selfplay.mode == "fixed_noise";
  return out;
}

void run_selfplay(const config::RunConfig& cfg, dist::Comm* comm) {
  SelfplayLoop loop(cfg, comm);
  loop.run();
}

void run_job(const config::RunConfig& cfg, dist::Comm* comm) {
  train::ensure_demo_data(cfg, comm);
  run_selfplay(cfg, comm);
}

}  // namespace dnpo::selfplay
