// Generating and judging an iteration's answers, with checkpoints at every round; see loop.h.
#include <algorithm>
#include <chrono>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "dnpo/common/log.h"
#include "dnpo/common/timer.h"
#include "dnpo/config/loader.h"
#include "dnpo/judge/verdict_book.h"
#include "dnpo/model/sampler.h"
#include "loop.h"

namespace dnpo::selfplay::detail {

namespace {

/// Prompts per generation round on a rank (selfplay.round_prompts; see config.h). Layer by layer
/// a round is one batch: every rank then runs the same forwards (a rank without prompts runs a
/// stand-in batch).
std::size_t round_prompts(const config::RunConfig& cfg) {
  const auto batch = static_cast<std::size_t>(cfg.sample.batch_size);
  if (cfg.selfplay.generation == "per_layer") {
    return batch;
  }
  if (cfg.selfplay.round_prompts > 0) {
    return static_cast<std::size_t>(cfg.selfplay.round_prompts);
  }
  return cfg.sample.batching == "continuous" ? 4 * batch : batch;
}

constexpr double kJudgeReportEveryS = 10;  // progress while waiting for the last verdicts
}  // namespace

/// The judge's counts summed over the ranks (collective), for the progress line.
struct JudgeProgress {
  double judged = 0;  // scored (cache hits included)
  double pending = 0;
  double failed = 0;  // fell back to SPIN, dropped or failed
  double attempts = 0;
  double unharvested = 0;  // verdicts the loop still waits for (its own count)

  static JudgeProgress of_job(const judge::Judge& judge,
                              std::size_t unharvested,
                              dist::Comm& comm,
                              int world) {
    const auto s = judge.stats();
    auto t = at::tensor({static_cast<double>(s.scored),
                         static_cast<double>(s.pending),
                         static_cast<double>(s.spin_fallback + s.dropped + s.failed),
                         static_cast<double>(s.attempts),
                         static_cast<double>(unharvested)},
                        at::kDouble);
    if (world > 1) {
      comm.all_reduce_sum(t).wait();
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

  /// "continuous" or "static" (always static layer by layer), for the log.
  std::string batching() const {
    return per_layer_ ? "static" : cfg_.sample.batching;
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

void SelfplayLoop::resume_generation(const std::string& checkpoint) {
  const auto t = state_.iteration;
  if (!cfg_.npo.fresh_head_each_iteration && t > 0 && trains_noise_head(t - 1)) {
    make_carried_head();  // the head carried over from iteration t - 1 is in the checkpoint
  }
  auto s = generate_stage_state(0, 0);
  train::load_stage(checkpoint, s);
  generate_and_judge(s.position.steps_done);
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
  const auto batch = round_prompts(cfg_);
  const auto mine = static_cast<std::int64_t>((prompts + batch - 1) / batch);
  if (world_ == 1) {
    return mine;
  }
  auto all = at::zeros({world_}, at::kDouble);
  all[rank_] = static_cast<double>(mine);
  comm_.all_reduce_sum(all).wait();
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
  const auto batch = round_prompts(cfg_);
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
      "iteration {}: generating for {} prompts on {} rank(s) ({} rounds of {} per rank, {} "
      "batches of {}; matrices in {})",
      t,
      prompts_.size(),
      world_,
      rounds,
      round_prompts(cfg_),
      sampler.batching(),
      cfg_.sample.batch_size,
      sampler.dtype());
  std::optional<train::Progress> progress;
  if (comm_.rank() == 0) {
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

}  // namespace dnpo::selfplay::detail
