// The stage loop, written once for SFT, SPIN and NPO (what differs is an Objective). One
// optimizer step = one global batch, split into micro-batches whose losses are normalised by
// global counts and accumulated. Every rank builds the same list of micro-batches and runs its
// contiguous share of it, so a step's samples, padding and counts do not depend on the world
// size; the models are FSDP units (sharded_llama.h) that gather, release and reduce their
// gradients at the boundaries the loop tells them of.
#include "dnpo/train/trainer.h"

#include <algorithm>
#include <numeric>
#include <optional>

#include <ATen/ATen.h>

#include "dnpo/common/counter_rng.h"
#include "dnpo/common/env.h"
#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "dnpo/common/timer.h"
#include "dnpo/config/loader.h"
#include "dnpo/dist/shard_optimizer.h"
#include "dnpo/train/keep_gathered.h"
#include "dnpo/train/lr_schedule.h"
#include "dnpo/train/npo_objective.h"
#include "dnpo/train/sft_objective.h"
#include "dnpo/train/spin_objective.h"

namespace dnpo::train {

namespace {

std::int64_t total_steps(const config::TrainConfig& cfg, std::int64_t samples) {
  const std::int64_t per_epoch = (samples + cfg.batch_size - 1) / cfg.batch_size;
  return cfg.max_steps > 0 ? cfg.max_steps : per_epoch * cfg.epochs;
}

// Indices of the samples of each global step (epochs wrap; the last batch may be short). The
// epoch's permutation is computed once per epoch, not once per step.
class StepSampler {
 public:
  StepSampler(const config::RunConfig& cfg, std::int64_t samples)
      : cfg_(cfg),
        samples_(samples),
        per_epoch_((samples + cfg.train.batch_size - 1) / cfg.train.batch_size) {}

  std::vector<std::int64_t> at(std::int64_t step) {
    const std::int64_t epoch = step / per_epoch_;
    if (epoch != epoch_) {
      order_ = epoch_order(samples_, cfg_.run.seed, cfg_.train.iteration, epoch);
      epoch_ = epoch;
    }
    const std::int64_t begin = (step % per_epoch_) * cfg_.train.batch_size;
    const std::int64_t end = std::min(samples_, begin + cfg_.train.batch_size);
    return {order_.begin() + begin, order_.begin() + end};
  }

 private:
  const config::RunConfig& cfg_;
  std::int64_t samples_;
  std::int64_t per_epoch_;
  std::int64_t epoch_ = -1;
  std::vector<std::int64_t> order_;
};

std::vector<std::vector<std::int64_t>> split_micro(const std::vector<std::int64_t>& ids,
                                                   int micro) {
  std::vector<std::vector<std::int64_t>> out;
  for (std::size_t i = 0; i < ids.size(); i += static_cast<std::size_t>(micro)) {
    out.emplace_back(ids.begin() + static_cast<std::ptrdiff_t>(i),
                     ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), i + micro)));
  }
  return out;
}

double mean_of(const std::vector<double>& v, bool head) {
  if (v.empty()) {
    return 0;
  }
  const auto n = std::max<std::size_t>(1, v.size() / 10);
  const auto begin = head ? v.begin() : v.end() - static_cast<std::ptrdiff_t>(n);
  return std::accumulate(begin, begin + static_cast<std::ptrdiff_t>(n), 0.0) /
         static_cast<double>(n);
}

std::string format_status(double loss, double margin, double lr, double ms, double tok_s) {
  return fmt::format("loss {:.4f} | margin {:+.2f} | lr {:.1e} | {:.0f} ms | {:.1f}k tok/s",
                     loss,
                     margin,
                     lr,
                     ms,
                     tok_s / 1e3);
}

// Which micro-batches of a step's global list this rank runs: a contiguous range, padded with
// weight-0 repeats to the busiest rank's count so every rank issues the same collectives.
struct MicroShare {
  std::vector<std::size_t> index;
  std::vector<double> weight;  // 1, or 0 for a padding repeat
};

MicroShare micro_share(std::size_t count, int rank, int world) {
  const auto w = static_cast<std::size_t>(world);
  const auto r = static_cast<std::size_t>(rank);
  const std::size_t begin = count * r / w;
  const std::size_t end = count * (r + 1) / w;
  const std::size_t most = (count + w - 1) / w;
  MicroShare share;
  for (std::size_t i = begin; i < end; ++i) {
    share.index.push_back(i);
    share.weight.push_back(1.0);
  }
  while (share.index.size() < most) {
    share.index.push_back(begin < count ? begin : 0);
    share.weight.push_back(0.0);
  }
  return share;
}

// DNPO_TEST_FAIL="RANK:STEP": that rank throws when it starts that step (fault tests).
class InjectedFailure {
 public:
  explicit InjectedFailure(int rank) : rank_(rank) {
    if (const auto spec = env::get(env::kTestFail)) {
      const auto colon = spec->find(':');
      DNPO_CHECK_WITH(ConfigError,
                      colon != std::string::npos,
                      "{} must be RANK:STEP, got '{}'",
                      env::kTestFail,
                      *spec);
      target_rank_ = std::stoi(spec->substr(0, colon));
      target_step_ = std::stoll(spec->substr(colon + 1));
    }
  }
  void check(std::int64_t step) const {
    DNPO_CHECK(!(rank_ == target_rank_ && step == target_step_),
               "injected failure at step {} ({})",
               step,
               env::kTestFail);
  }

 private:
  int rank_;
  int target_rank_ = -1;
  std::int64_t target_step_ = -1;
};

}  // namespace

/// A stage being run: its objective and models, the optimizer over the trained shards, what its
/// checkpoints hold, and where its steps come from.
struct Trainer::StageRun {
  StageRun(const config::RunConfig& cfg, Objective& stage_objective, int rank)
      : objective(stage_objective),
        models(stage_objective.models()),
        units(models.trained_units()),
        sampler(cfg, stage_objective.num_samples()),
        injected(rank) {}
  Objective& objective;
  StageModels& models;
  std::vector<dist::ShardedUnit*> units;  // trained, in order
  std::unique_ptr<dist::ShardOptimizer> optimizer;
  StageState state;
  StepSampler sampler;
  std::optional<Progress> progress;  // rank 0
  InjectedFailure injected;
};

dist::UnitPrecision unit_precision(const config::RunConfig& cfg, at::Device device) {
  dist::UnitPrecision p;
  p.compute = cfg.train.dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  // fp32 by default: Gloo cannot sum bf16, and the fp32 sum is the accurate one; NCCL may sum
  // bf16 (half the bytes) when asked.
  p.reduce = cfg.dist.reduce_dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  p.device = device;
  return p;
}

std::vector<std::int64_t> epoch_order(std::int64_t n,
                                      std::uint64_t seed,
                                      std::uint64_t iteration,
                                      std::int64_t epoch) {
  std::vector<std::pair<std::uint64_t, std::int64_t>> keyed(n);
  for (std::int64_t i = 0; i < n; ++i) {
    keyed[i] = {draw_key(seed, iteration, epoch, i, 0, RandomStream::kShuffle), i};
  }
  std::sort(keyed.begin(), keyed.end());
  std::vector<std::int64_t> order(n);
  for (std::int64_t i = 0; i < n; ++i) {
    order[i] = keyed[i].second;
  }
  return order;
}

Trainer::Trainer(const config::RunConfig& cfg,
                 model::LlamaModel& policy,
                 const data::Tokenizer& tokenizer,
                 MetricsWriter& metrics,
                 dist::Comm& comm)
    : Trainer(cfg, &policy, nullptr, tokenizer, metrics, comm) {}

Trainer::Trainer(const config::RunConfig& cfg,
                 ShardedLlama& policy,
                 const data::Tokenizer& tokenizer,
                 MetricsWriter& metrics,
                 dist::Comm& comm)
    : Trainer(cfg, nullptr, &policy, tokenizer, metrics, comm) {}

Trainer::Trainer(const config::RunConfig& cfg,
                 model::LlamaModel* whole_policy,
                 ShardedLlama* sharded_policy,
                 const data::Tokenizer& tokenizer,
                 MetricsWriter& metrics,
                 dist::Comm& comm)
    : cfg_(cfg),
      whole_policy_(whole_policy),
      sharded_policy_(sharded_policy),
      tokenizer_(tokenizer),
      chat_(cfg.chat, tokenizer),
      metrics_(metrics),
      comm_(comm),
      device_(comm.device()) {
  DNPO_CHECK_WITH(ConfigError,
                  tokenizer.vocab_size() <= cfg.model.vocab_size,
                  "tokenizer has {} ids but model.vocab_size is {}; hint: raise model.vocab_size "
                  "or use the model's own tokenizer",
                  tokenizer.vocab_size(),
                  cfg.model.vocab_size);
}

Trainer::~Trainer() = default;

ShardedLlama& Trainer::begin_policy() {
  if (whole_policy_ != nullptr) {
    // Sharded FSDP needs recompute; one process keeps units and activations instead.
    owned_policy_ = std::make_unique<ShardedLlama>(
        *whole_policy_, comm_, unit_precision(cfg_, device_), true, comm_.world_size() > 1);
  }
  ShardedLlama& policy = whole_policy_ != nullptr ? *owned_policy_ : *sharded_policy_;
  policy.set_prefetch(cfg_.dist.prefetch);
  const auto plan = decide_keep_gathered(cfg_, comm_, policy.num_parameters());
  if (comm_.world_size() > 1) {
    log::info_rank0("{}", plan.why);
  }
  policy.set_keep_gathered(plan.keep);
  return policy;
}

void Trainer::finish_policy() {
  if (whole_policy_ != nullptr) {
    owned_policy_->copy_to(*whole_policy_);
    owned_policy_.reset();
  }
}

TrainSummary Trainer::train_sft(const std::vector<data::PromptRecord>& records) {
  DNPO_CHECK_WITH(DataError, !records.empty(), "sft: the training data has no records");
  SftData data(records, chat_, cfg_.data);
  const auto truncated = data.truncated;
  SftObjective objective(std::move(data), begin_policy(), tokenizer_.pad_id(), device_);
  auto summary = run_stage(objective);
  summary.truncated = truncated;
  finish_policy();
  return summary;
}

TrainSummary Trainer::train_preference(const std::vector<data::PairRecord>& pairs) {
  const auto& loss_kind = cfg_.train.loss;
  DNPO_CHECK_WITH(ConfigError,
                  loss_kind == "spin" || loss_kind == "npo",
                  "train.loss is '{}'; preference training needs \"spin\" or \"npo\"",
                  loss_kind);
  PairData data(pairs, chat_, cfg_.data);
  const auto truncated = data.truncated;
  const auto skipped = data.skipped_identical;
  noise_head_.reset();
  ShardedLlama& policy = begin_policy();
  TrainSummary summary;
  if (loss_kind == "spin") {
    SpinObjective spin(std::move(data), policy, cfg_, tokenizer_.pad_id(), comm_);
    summary = run_stage(spin);
  } else {
    NpoObjective npo(std::move(data),
                     policy,
                     cfg_,
                     tokenizer_.pad_id(),
                     comm_,
                     unit_precision(cfg_, device_),
                     initial_noise_head_);
    summary = run_stage(npo);
    noise_head_ = npo.release_noise_head();
  }
  summary.truncated = truncated;
  summary.skipped_identical = skipped;
  finish_policy();
  return summary;
}

TrainSummary Trainer::run_stage(Objective& objective) {
  const int rank = comm_.rank();
  StageRun run(cfg_, objective, rank);
  std::vector<at::Tensor> trained_shards;
  for (auto* unit : run.units) {
    trained_shards.push_back(unit->shard());
  }
  run.optimizer = std::make_unique<dist::ShardOptimizer>(cfg_.train, trained_shards);
  const auto steps = total_steps(cfg_.train, objective.num_samples());
  auto& state = run.state;
  state.position.stage = objective.stage();
  state.position.iteration = cfg_.train.iteration;
  state.position.total_steps = steps;
  state.blobs = stage_blobs_;
  state.trained = run.models.trained;
  state.frozen = run.models.frozen;
  state.optimizer = run.optimizer.get();
  state.carried = objective.carried_state();
  metrics_.set_iteration(cfg_.train.iteration);
  maybe_resume(state);
  const auto label = objective.label();
  log::info_rank0("{}: {}, {} steps of {} on {} rank(s)",
                  label,
                  objective.describe_data(),
                  steps,
                  cfg_.train.batch_size,
                  comm_.world_size());
  if (rank == 0) {
    run.progress.emplace(label.substr(0, label.find(' ')), steps, cfg_.run.log_every);
  }
  for (std::int64_t step = state.position.steps_done; step < steps; ++step) {
    train_step(run, step);
  }
  if (run.progress) {
    run.progress->finish();
  }
  TrainSummary summary;
  end_stage(state, summary);
  return summary;
}

void Trainer::train_step(StageRun& run, std::int64_t step) {
  run.injected.check(step);
  Timer step_timer;
  const auto steps = run.state.position.total_steps;
  const double lr = lr_at(cfg_.train, step, steps);
  run.optimizer->set_lr(lr);
  Phase phase(cfg_.run.phase_times, device_);
  phase.begin("dnpo::batches");
  const auto samples = run.sampler.at(step);
  const auto micro_samples = split_micro(samples, cfg_.train.micro_batch_size);
  run.objective.plan_step(step, micro_samples);
  StepStats stats;
  forward_backward(run, micro_samples.size(), stats, phase);
  run.objective.finish_step();
  // the models reduce what they deferred and drop what they hold (stale once the optimizer steps)
  phase.begin("dnpo::flush_grads");
  for (auto* module : run.models.modules) {
    module->end_step();
  }
  if (gradient_observer_) {
    gradient_observer_(step, run.units);
  }
  phase.begin("dnpo::clip_grad_norm");
  const auto grad_norm = dist::clip_grad_norm(run.units, comm_, cfg_.train.grad_clip);
  phase.begin("dnpo::optimizer");
  run.optimizer->step();
  run.optimizer->zero_grad();
  phase.begin("dnpo::stats");
  stats.reduce(comm_);
  phase.end();

  const double ms = step_timer.millis();
  const auto step_tokens = static_cast<std::int64_t>(stats.tokens.value());
  const double tok_s = static_cast<double>(step_tokens) / (ms / 1e3);
  MetricValues values = {{"loss", stats.loss.value()}};
  const auto own = run.objective.metrics(stats);
  values.insert(values.end(), own.begin(), own.end());
  values.insert(values.end(),
                {{"lr", lr},
                 {"grad_norm", grad_norm.item<double>()},
                 {"step_ms", ms},
                 {"tokens_per_s", tok_s},
                 {"padding", 1.0 - stats.tokens.value() / std::max(1.0, stats.slots.value())}});
  phase.append_times(values);
  metrics_.write(run.objective.stage(), step + 1, values);
  if (run.progress) {
    const double margin = stats.margin.value() / static_cast<double>(samples.size());
    run.progress->update(step + 1, format_status(stats.loss.value(), margin, lr, ms, tok_s));
  }
  end_step(run.state, stats.model_loss.value(), ms, step_tokens);
}

void Trainer::forward_backward(StageRun& run,
                               std::size_t micro_batches,
                               StepStats& stats,
                               Phase& phase) {
  const auto share = micro_share(micro_batches, comm_.rank(), comm_.world_size());
  for (std::size_t k = 0; k < share.index.size(); ++k) {
    const double weight = share.weight[k];
    const auto loss = run.objective.micro_batch_loss(share.index[k], weight, stats, phase);
    phase.begin("dnpo::backward");
    (loss * weight).backward();
    for (auto* module : run.models.modules) {
      module->end_micro_batch();
    }
    stats.loss.add(loss, weight);
    phase.begin("dnpo::batches");
  }
}

bool Trainer::maybe_resume(StageState& state) {
  state.resolved_config = config::to_toml(cfg_);
  if (!resume_from_) {
    return false;
  }
  const auto& path = *resume_from_;
  const auto stored = read_position(path);
  if (stored.stage != state.position.stage || stored.iteration != state.position.iteration) {
    log::info_rank0(
        "resume: {} holds stage '{}' iteration {}; stage '{}' iteration {} starts "
        "from the beginning",
        path,
        stored.stage,
        stored.iteration,
        state.position.stage,
        state.position.iteration);
    return false;
  }
  DNPO_CHECK_WITH(CheckpointError,
                  stored.total_steps == state.position.total_steps,
                  "checkpoint {} was written for a stage of {} steps; this configuration makes {} "
                  "(train.batch_size, epochs, max_steps or the data differ)",
                  path,
                  stored.total_steps,
                  state.position.total_steps);
  load_stage(path, state);
  restored_from_ = path;
  metrics_.drop_after(state.position.stage, state.position.steps_done);
  log::info_rank0("resume: {} at step {} of {}{}",
                  state.position.stage,
                  state.position.steps_done,
                  state.position.total_steps,
                  state.position.finished ? " (finished)" : "");
  resume_from_.reset();  // one stage resumes from it
  return true;
}

void Trainer::end_step(StageState& state, double loss, double ms, std::int64_t tokens) {
  auto& pos = state.position;
  pos.steps_done += 1;
  pos.step_losses.push_back(loss);
  pos.step_ms.push_back(ms);
  pos.total_tokens += tokens;
  if (checkpointer_ != nullptr) {
    checkpointer_->after_step(state);
  }
}

void Trainer::end_stage(StageState& state, TrainSummary& summary) {
  auto& pos = state.position;
  if (checkpointer_ != nullptr && !pos.finished) {
    pos.finished = true;
    restored_from_ = checkpointer_->save_final(state);
  }
  summary.checkpoint = restored_from_;
  pos.finished = true;
  summary.steps = pos.total_steps;
  summary.step_losses = pos.step_losses;
  summary.step_ms = pos.step_ms;
  summary.first_loss = mean_of(summary.step_losses, true);
  summary.last_loss = mean_of(summary.step_losses, false);
  const double total_ms = std::accumulate(pos.step_ms.begin(), pos.step_ms.end(), 0.0);
  summary.mean_step_ms =
      total_ms / static_cast<double>(std::max<std::size_t>(1, pos.step_ms.size()));
  summary.tokens_per_second =
      total_ms > 0 ? static_cast<double>(pos.total_tokens) / (total_ms / 1e3) : 0.0;
}

}  // namespace dnpo::train
