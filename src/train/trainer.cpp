// The training loops. One optimizer step = one global batch, split into micro-batches whose
// losses are normalised by global counts (pairs, tokens, penalty elements) and accumulated. Every
// rank builds the same list of micro-batches and runs its contiguous share of it, so a step's
// samples, padding and counts do not depend on the world size; the models are FSDP units
// (sharded_llama.h) whose gradients are summed over ranks by reduce-scatter.
// One NPO step, top to bottom: policy forward on [chosen; rejected] → sequence log-probs;
// frozen reference forward → clean log-prob of y+ and hidden states of y−; noise head on those
// hidden states → noisy log-probs with ε1 (s detached) and ε2 → total = ℓ(βm1) − ℓ(βm2) + αP;
// backward; clip; optimizer step.
#include "dnpo/train/trainer.h"

#include <algorithm>
#include <numeric>
#include <optional>

#include <ATen/record_function.h>
#include <torch/torch.h>

#include "dnpo/common/counter_rng.h"
#include "dnpo/common/env.h"
#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "dnpo/common/timer.h"
#include "dnpo/config/loader.h"
#include "dnpo/dist/shard_optimizer.h"
#include "dnpo/model/batch.h"
#include "dnpo/train/dnpo_loss.h"
#include "dnpo/train/lr_schedule.h"
#include "dnpo/train/sharded_llama.h"

namespace dnpo::train {

namespace {

/// Names the phases of a step for LibTorch's profiler (dnpo_step_bench --profile) and, with
/// run.phase_times, times them on the wall clock. A phase ends when the next begins or at end();
/// a phase begun once per micro-batch adds up over the step. Free when neither is on. On a GPU
/// the timing waits for the device at every boundary: it is for diagnosis, not for speed.
class Phase {
 public:
  Phase(bool timed, const at::Device& device) : timed_(timed), device_(device) {}

  void begin(const char* name) {
    close_timed();
    current_.emplace(at::RecordScope::USER_SCOPE);  // ends the previous phase first
    if (current_->isActive()) {
      current_->before(name);
    }
    if (timed_) {
      name_ = name;
      clock_.reset();
    }
  }
  void end() {
    close_timed();
    current_.reset();
  }
  /// metrics.jsonl fields: "ms_<phase>" (the "dnpo::" dropped), in order of first use.
  void append_times(std::vector<std::pair<std::string, double>>& values) const {
    for (const auto& [name, ms] : ms_) {
      values.emplace_back("ms_" + name, ms);
    }
  }

 private:
  void close_timed() {
    if (name_ == nullptr) {
      return;
    }
    if (!device_.is_cpu()) {
      // one read waits for the work queued so far on the device's current stream
      (void)at::zeros({}, at::TensorOptions(device_)).item<float>();
    }
    std::string name(name_);
    name = name.substr(name.rfind(':') + 1);
    const auto it = std::find_if(
        ms_.begin(), ms_.end(), [&](const auto& entry) { return entry.first == name; });
    (it == ms_.end() ? ms_.emplace_back(name, 0.0).second : it->second) += clock_.millis();
    name_ = nullptr;
  }

  bool timed_;
  at::Device device_;
  std::optional<at::RecordFunction> current_;
  const char* name_ = nullptr;  // the phase being timed
  Timer clock_;
  std::vector<std::pair<std::string, double>> ms_;
};

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

// A step's statistics, summed where they are computed and read once at the step's end: a host
// read per micro-batch would stall a GPU's queue each time.
class StepStats {
 public:
  explicit StepStats(std::size_t count) : host_(count, 0.0), device_(count) {}
  void add(std::size_t i, double value) {
    host_[i] += value;
  }
  void add(std::size_t i, const at::Tensor& value, double weight) {
    auto v = value.detach().sum().to(at::kDouble) * weight;
    device_[i] = device_[i].defined() ? device_[i] + v : v;
  }
  /// The sums: one host read for all the tensor-valued ones.
  std::vector<double> read() const {
    std::vector<at::Tensor> parts;
    std::vector<std::size_t> where;
    for (std::size_t i = 0; i < device_.size(); ++i) {
      if (device_[i].defined()) {
        parts.push_back(device_[i].reshape({1}));
        where.push_back(i);
      }
    }
    auto out = host_;
    if (!parts.empty()) {
      const auto values = at::cat(parts).cpu();
      const auto* p = values.data_ptr<double>();
      for (std::size_t k = 0; k < where.size(); ++k) {
        out[where[k]] += p[k];
      }
    }
    return out;
  }

 private:
  std::vector<double> host_;
  std::vector<at::Tensor> device_;
};

// Sums per-step statistics over ranks (one small all-reduce per step).
void sum_over_ranks(std::vector<double>& values, dist::Comm* comm) {
  if (comm == nullptr || comm->world_size() == 1) {
    return;
  }
  auto t = at::tensor(values, at::kDouble);
  comm->all_reduce_sum(t).wait();
  const auto* p = t.data_ptr<double>();
  values.assign(p, p + t.numel());
}

// DNPO_TEST_FAIL="RANK:STEP": that rank throws when it starts that step (fault tests).
class InjectedFailure {
 public:
  explicit InjectedFailure(int rank) : rank_(rank) {
    if (const auto spec = env::get(env::kTestFail)) {
      const auto colon = spec->find(':');
      DNPO_CHECK_WITH(ConfigError,
                      colon != std::string::npos,
                      env::kTestFail,
                      " must be RANK:STEP, got '",
                      *spec,
                      "'");
      target_rank_ = std::stoi(spec->substr(0, colon));
      target_step_ = std::stoll(spec->substr(colon + 1));
    }
  }
  void check(std::int64_t step) const {
    DNPO_CHECK(!(rank_ == target_rank_ && step == target_step_),
               "injected failure at step ",
               step,
               " (",
               env::kTestFail,
               ")");
  }

 private:
  int rank_;
  int target_rank_ = -1;
  std::int64_t target_step_ = -1;
};

int rank_of(const dist::Comm* comm) {
  return comm == nullptr ? 0 : comm->rank();
}
int world_of(const dist::Comm* comm) {
  return comm == nullptr ? 1 : comm->world_size();
}

}  // namespace

dist::UnitPrecision unit_precision(const config::RunConfig& cfg, at::Device device) {
  dist::UnitPrecision p;
  p.compute = cfg.train.dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  // fp32 by default: Gloo cannot sum bf16, and the fp32 sum is the accurate one; NCCL may sum
  // bf16 (half the bytes) when asked.
  p.reduce = cfg.dist.reduce_dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  p.device = device;
  return p;
}

at::Device compute_device(const config::RunConfig& cfg, const dist::Comm* comm) {
  return comm != nullptr ? comm->device() : dist::rank_device(cfg.run.device, 0);
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
                 dist::Comm* comm)
    : Trainer(cfg, &policy, nullptr, tokenizer, metrics, comm) {}

Trainer::Trainer(const config::RunConfig& cfg,
                 ShardedLlama& policy,
                 const data::Tokenizer& tokenizer,
                 MetricsWriter& metrics,
                 dist::Comm* comm)
    : Trainer(cfg, nullptr, &policy, tokenizer, metrics, comm) {}

Trainer::Trainer(const config::RunConfig& cfg,
                 model::LlamaModel* whole_policy,
                 ShardedLlama* sharded_policy,
                 const data::Tokenizer& tokenizer,
                 MetricsWriter& metrics,
                 dist::Comm* comm)
    : cfg_(cfg),
      whole_policy_(whole_policy),
      sharded_policy_(sharded_policy),
      tokenizer_(tokenizer),
      chat_(cfg.chat, tokenizer),
      metrics_(metrics),
      comm_(comm),
      device_(compute_device(cfg, comm)) {
  DNPO_CHECK_WITH(ConfigError,
                  tokenizer.vocab_size() <= cfg.model.vocab_size,
                  "tokenizer has ",
                  tokenizer.vocab_size(),
                  " ids but model.vocab_size is ",
                  cfg.model.vocab_size,
                  "; hint: raise model.vocab_size or use the model's own tokenizer");
}

ShardedLlama& Trainer::begin_policy() {
  if (whole_policy_ != nullptr) {
    // Sharded FSDP needs recompute; one process keeps units and activations instead.
    owned_policy_ = std::make_unique<ShardedLlama>(
        *whole_policy_, comm_, unit_precision(cfg_, device_), true, world_of(comm_) > 1);
    owned_policy_->set_prefetch(cfg_.dist.prefetch);
    owned_policy_->set_keep_gathered(!cfg_.dist.reshard_after_forward);
    return *owned_policy_;
  }
  sharded_policy_->set_prefetch(cfg_.dist.prefetch);
  sharded_policy_->set_keep_gathered(!cfg_.dist.reshard_after_forward);
  return *sharded_policy_;
}

void Trainer::finish_policy() {
  if (whole_policy_ != nullptr) {
    owned_policy_->copy_to(*whole_policy_);
    owned_policy_.reset();
  }
}

TrainSummary Trainer::train_sft(const std::vector<data::PromptRecord>& records) {
  DNPO_CHECK_WITH(DataError, !records.empty(), "sft: the training data has no records");
  TrainSummary summary;
  // --- tokenize once ---
  std::vector<model::TokenSequence> sequences;
  sequences.reserve(records.size());
  for (const auto& r : records) {
    model::TokenSequence seq{chat_.encode_prompt(r.prompt), chat_.encode_response(r.answer)};
    summary.truncated +=
        model::truncate_sequence(seq, cfg_.data.max_length, cfg_.data.max_prompt_length) ? 1 : 0;
    sequences.push_back(std::move(seq));
  }
  // --- the policy as FSDP units; the optimizer steps this rank's shards ---
  ShardedLlama& policy = begin_policy();
  const auto units = policy.units();
  auto optimizer = std::make_unique<dist::ShardOptimizer>(cfg_.train, policy.shards());
  const auto steps = total_steps(cfg_.train, static_cast<std::int64_t>(sequences.size()));
  StageState state;
  state.position.stage = "sft";
  state.position.iteration = cfg_.train.iteration;
  state.blobs = stage_blobs_;
  metrics_.set_iteration(cfg_.train.iteration);
  state.position.total_steps = steps;
  state.trained = {{"policy", units}};
  state.optimizer = optimizer.get();
  maybe_resume(state);
  const int rank = rank_of(comm_);
  log::info_rank0("sft: {} samples, {} steps of {} on {} rank(s) ({} truncated)",
                  sequences.size(),
                  steps,
                  cfg_.train.batch_size,
                  world_of(comm_),
                  summary.truncated);
  std::optional<Progress> progress;
  if (rank == 0) {
    progress.emplace("sft", steps, cfg_.run.log_every);
  }
  const InjectedFailure injected(rank);
  StepSampler sampler(cfg_, static_cast<std::int64_t>(sequences.size()));

  for (std::int64_t step = state.position.steps_done; step < steps; ++step) {
    injected.check(step);
    Timer step_timer;
    const double lr = lr_at(cfg_.train, step, steps);
    optimizer->set_lr(lr);
    Phase phase(cfg_.run.phase_times, device_);
    phase.begin("dnpo::batches");
    // --- the step's micro-batches (every rank builds all), normalised by global answer tokens ---
    std::vector<model::TokenBatch> micro;
    double global_tokens = 0;
    for (const auto& ids : split_micro(sampler.at(step), cfg_.train.micro_batch_size)) {
      std::vector<model::TokenSequence> seqs;
      seqs.reserve(ids.size());
      for (const auto i : ids) {
        seqs.push_back(sequences[i]);
      }
      micro.push_back(model::pad_batch(seqs, tokenizer_.pad_id()));
      global_tokens += static_cast<double>(micro.back().num_response_tokens);
    }
    // --- this rank's share: forward, backward (gradients reduce-scattered unit by unit) ---
    StepStats step_stats(2);  // loss, tokens
    const auto share = micro_share(micro.size(), rank, world_of(comm_));
    for (std::size_t k = 0; k < share.index.size(); ++k) {
      const auto& host_batch = micro[share.index[k]];
      const auto batch = model::to_device(host_batch, device_);
      // what the forward and the loss need to know of the masks, read from the host copy: on a
      // GPU, reading them from the device copy would make the host wait
      const auto rows =
          to_device(response_rows(host_batch.input_ids, host_batch.loss_mask), device_);
      phase.begin("dnpo::policy_forward");
      auto out = policy.forward(
          batch.input_ids, batch.attention_mask, model::is_right_padded(host_batch.attention_mask));
      phase.begin("dnpo::loss");
      auto loss = sft_loss(out.hidden, out.lm_head, rows, global_tokens) * share.weight[k];
      out = {};  // the graph holds what backward needs
      phase.begin("dnpo::backward");
      loss.backward();
      if (!policy.keep_gathered()) {
        policy.release();
      }
      phase.begin("dnpo::step_stats");
      step_stats.add(0, loss, 1.0);
      step_stats.add(1, share.weight[k] * host_batch.attention_mask.sum().item<double>());
      phase.begin("dnpo::batches");
    }
    phase.begin("dnpo::flush_grads");
    policy.flush_grads();
    policy.release();  // kept units are stale once the optimizer steps
    if (gradient_observer_) {
      gradient_observer_(step, units);
    }
    // --- clip on the global norm, step the shards ---
    phase.begin("dnpo::clip_grad_norm");
    const auto grad_norm = dist::clip_grad_norm(units, comm_, cfg_.train.grad_clip);
    phase.begin("dnpo::optimizer");
    optimizer->step();
    optimizer->zero_grad();
    phase.begin("dnpo::stats");
    auto stats = step_stats.read();
    sum_over_ranks(stats, comm_);
    phase.end();

    const double loss_value = stats[0];
    const auto step_tokens = static_cast<std::int64_t>(stats[1]);
    const double ms = step_timer.millis();
    const double tok_s = static_cast<double>(step_tokens) / (ms / 1e3);
    std::vector<std::pair<std::string, double>> values = {{"loss", loss_value},
                                                          {"lr", lr},
                                                          {"grad_norm", grad_norm.item<double>()},
                                                          {"step_ms", ms},
                                                          {"tokens_per_s", tok_s}};
    phase.append_times(values);
    metrics_.write("sft", step + 1, values);
    if (progress) {
      progress->update(step + 1, format_status(loss_value, 0, lr, ms, tok_s));
    }
    end_step(state, loss_value, ms, step_tokens);
  }
  if (progress) {
    progress->finish();
  }
  end_stage(state, summary);
  finish_policy();
  return summary;
}

TrainSummary Trainer::train_preference(const std::vector<data::PairRecord>& pairs_in) {
  const auto& loss_kind = cfg_.train.loss;
  DNPO_CHECK_WITH(ConfigError,
                  loss_kind == "spin" || loss_kind == "npo",
                  "train.loss is '",
                  loss_kind,
                  "'; preference training needs \"spin\" or \"npo\"");
  TrainSummary summary;
  // --- tokenize; pairs with identical texts carry no signal: skip and count them ---
  struct TokenPair {
    model::TokenSequence chosen, rejected;
    std::int64_t index;  // global pair index: keys the noise draws
  };
  std::vector<TokenPair> pairs;
  for (std::size_t i = 0; i < pairs_in.size(); ++i) {
    const auto& p = pairs_in[i];
    if (p.chosen == p.rejected) {
      ++summary.skipped_identical;
      continue;
    }
    const auto prompt = chat_.encode_prompt(p.prompt);
    TokenPair tp{{prompt, chat_.encode_response(p.chosen)},
                 {prompt, chat_.encode_response(p.rejected)},
                 static_cast<std::int64_t>(i)};
    const bool cut_c =
        model::truncate_sequence(tp.chosen, cfg_.data.max_length, cfg_.data.max_prompt_length);
    const bool cut_r =
        model::truncate_sequence(tp.rejected, cfg_.data.max_length, cfg_.data.max_prompt_length);
    summary.truncated += (cut_c || cut_r) ? 1 : 0;
    pairs.push_back(std::move(tp));
  }
  DNPO_CHECK_WITH(DataError,
                  !pairs.empty(),
                  "train: no usable pairs (",
                  pairs_in.size(),
                  " given, ",
                  summary.skipped_identical,
                  " with identical chosen and rejected)");

  // --- models, all sharded: the policy trains; the reference is a frozen copy of it (params
  // only); a fresh noise head (same seed on every rank, then sharded) ---
  const bool npo = loss_kind == "npo";
  ShardedLlama& policy = begin_policy();
  const auto reference_units = policy.frozen_copy();
  ShardedLlama& reference = *reference_units;
  auto units = policy.units();
  auto trained = policy.shards();
  noise_head_.reset();
  std::unique_ptr<ShardedNoiseHead> head;
  const auto head_seed = fold_key(cfg_.run.seed, cfg_.train.iteration);
  if (npo && !cfg_.npo.fixed_noise) {
    head = std::make_unique<ShardedNoiseHead>(cfg_.npo,
                                              cfg_.model.hidden_size,
                                              cfg_.model.vocab_size,
                                              head_seed,
                                              comm_,
                                              unit_precision(cfg_, device_));
    if (initial_noise_head_ != nullptr) {
      head->unit()->load_shard_of(*initial_noise_head_->unit());
    }
    head->set_keep_gathered(!cfg_.dist.reshard_after_forward);
    units.push_back(head->unit());
    trained.push_back(head->unit()->shard());
  }
  auto optimizer = std::make_unique<dist::ShardOptimizer>(cfg_.train, trained);
  const auto steps = total_steps(cfg_.train, static_cast<std::int64_t>(pairs.size()));
  StageState state;
  state.position.stage = loss_kind;
  state.position.iteration = cfg_.train.iteration;
  state.blobs = stage_blobs_;
  metrics_.set_iteration(cfg_.train.iteration);
  state.position.total_steps = steps;
  state.trained = {{"policy", policy.units()}};
  if (head) {
    state.trained.push_back({"noise_head", {head->unit()}});
  }
  state.frozen = {{"reference", reference.units()}};
  state.optimizer = optimizer.get();
  maybe_resume(state);
  const int rank = rank_of(comm_);
  log::info_rank0(
      "train ({}): {} pairs ({} identical skipped, {} truncated), {} steps of {} on {} rank(s)",
      loss_kind,
      pairs.size(),
      summary.skipped_identical,
      summary.truncated,
      steps,
      cfg_.train.batch_size,
      world_of(comm_));
  std::optional<Progress> progress;
  if (rank == 0) {
    progress.emplace("train", steps, cfg_.run.log_every);
  }
  const InjectedFailure injected(rank);
  StepSampler sampler(cfg_, static_cast<std::int64_t>(pairs.size()));
  const double beta = cfg_.loss.beta;

  for (std::int64_t step = state.position.steps_done; step < steps; ++step) {
    injected.check(step);
    Timer step_timer;
    const double lr = lr_at(cfg_.train, step, steps);
    optimizer->set_lr(lr);
    Phase phase(cfg_.run.phase_times, device_);
    phase.begin("dnpo::batches");
    // --- micro-batches: chosen and rejected padded together, one concatenated forward ---
    struct Micro {
      model::TokenBatch batch;  // rows [0, m) chosen, [m, 2m) rejected
      std::vector<std::int64_t> pair_index;
    };
    std::vector<Micro> micro;
    const auto step_ids = sampler.at(step);
    const auto global_pairs = static_cast<double>(step_ids.size());
    double global_penalty_elements = 0;
    for (const auto& ids : split_micro(step_ids, cfg_.train.micro_batch_size)) {
      std::vector<model::TokenSequence> seqs;
      Micro m;
      for (const auto i : ids) {
        seqs.push_back(pairs[i].chosen);
        m.pair_index.push_back(pairs[i].index);
      }
      for (const auto i : ids) {
        seqs.push_back(pairs[i].rejected);
      }
      m.batch = model::pad_batch(seqs, tokenizer_.pad_id());
      const auto rows = static_cast<std::int64_t>(ids.size());
      global_penalty_elements += static_cast<double>(
          penalty_rows(cfg_.npo, m.batch.loss_mask.narrow(0, rows, rows)) * cfg_.model.vocab_size);
      micro.push_back(std::move(m));
    }

    // loss, model loss, noise loss, penalty, Σ margin, correct, Σ log π(y+), Σ log π(y−), Σ s,
    // count of s, tokens — summed over this rank's micro-batches, then over ranks
    enum Stat {
      kLoss,
      kModel,
      kNoise,
      kPenalty,
      kMargin,
      kCorrect,
      kChosen,
      kRejected,
      kSumS,
      kNumS,
      kTokens,
      kNumStats
    };
    StepStats step_stats(kNumStats);
    const auto share = micro_share(micro.size(), rank, world_of(comm_));
    for (std::size_t k = 0; k < share.index.size(); ++k) {
      const auto& m = micro[share.index[k]];
      const double weight = share.weight[k];
      const auto rows = static_cast<std::int64_t>(m.pair_index.size());
      const auto b = model::to_device(m.batch, device_);
      // NPO reads the negatives' reference logits only with noise (its own pass below), so
      // the clean ones are computed for the positives alone: one vocabulary product less.
      const auto ref_rows = npo ? rows : 2 * rows;
      // What the forwards and the losses need to know of the masks, read from the host copy:
      // on a GPU, reading them from the device copy would make the host wait.
      const bool right_padded = model::is_right_padded(m.batch.attention_mask);
      const auto host_rows = [&m](std::int64_t begin, std::int64_t count) {
        return response_rows(m.batch.input_ids.narrow(0, begin, count),
                             m.batch.loss_mask.narrow(0, begin, count));
      };
      const auto both_rows = to_device(host_rows(0, 2 * rows), device_);
      const auto reference_rows =
          ref_rows == 2 * rows ? both_rows : to_device(host_rows(0, ref_rows), device_);
      const auto rejected_rows = npo ? host_rows(rows, rows) : ResponseRows{};
      // policy: log π_θ(y+), log π_θ(y−)
      phase.begin("dnpo::policy_forward");
      auto logps = [&] {
        const auto out = policy.forward(b.input_ids, b.attention_mask, right_padded);
        return sequence_logprobs(out.hidden, out.lm_head, both_rows);
      }();
      auto policy_chosen = logps.narrow(0, 0, rows);
      auto policy_rejected = logps.narrow(0, rows, rows);
      // frozen reference: clean log-probs and the negatives' hidden states
      phase.begin("dnpo::reference_forward");
      at::Tensor ref_hidden, ref_logps, ref_lm_head;
      {
        at::NoGradGuard no_grad;
        const auto out = reference.forward(b.input_ids, b.attention_mask, right_padded);
        ref_hidden = out.hidden;
        ref_logps =
            sequence_logprobs(ref_hidden.narrow(0, 0, ref_rows), out.lm_head, reference_rows);
        if (npo) {
          ref_lm_head = out.lm_head;
        }
      }
      auto ref_chosen = ref_logps.narrow(0, 0, rows);
      // The reference's gathered units go now (unless kept for the step): the noisy term keeps
      // its own reference to the lm_head, which autograd frees once that term's backward has run.
      if (!reference.keep_gathered()) {
        reference.release();
      }

      phase.begin("dnpo::loss");
      at::Tensor loss, margins;
      if (!npo) {
        const auto ref_rejected = ref_logps.narrow(0, rows, rows);
        loss =
            spin_pair_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta).sum() /
            global_pairs;
        margins = ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)).detach();
        step_stats.add(kModel, loss, weight);
      } else {
        NpoInputs in;
        in.policy_chosen = policy_chosen;
        in.policy_rejected = policy_rejected;
        in.ref_chosen = ref_chosen;
        in.ref_hidden = ref_hidden.narrow(0, rows, rows);
        in.ref_lm_head = std::move(ref_lm_head);
        in.rejected_ids = b.input_ids.narrow(0, rows, rows);
        in.rejected_loss_mask = b.loss_mask.narrow(0, rows, rows);
        in.rejected_rows = to_device(rejected_rows, device_);
        // ε keys: (seed, iteration, step, global pair index, position, stream) — per row
        const auto* sample = rejected_rows.sample.data_ptr<std::int64_t>();
        const auto* position = rejected_rows.position.data_ptr<std::int64_t>();
        for (std::int64_t j = 0; j < rejected_rows.sample.numel(); ++j) {
          const auto pair = static_cast<std::uint64_t>(m.pair_index[sample[j]]);
          const auto pos = static_cast<std::uint64_t>(position[j]);
          in.draws.row_keys1.push_back(draw_key(
              cfg_.run.seed, cfg_.train.iteration, step, pair, pos, RandomStream::kNoiseEps1));
          in.draws.row_keys2.push_back(draw_key(
              cfg_.run.seed, cfg_.train.iteration, step, pair, pos, RandomStream::kNoiseEps2));
        }
        in.global_pairs = global_pairs;
        in.global_penalty_elements = global_penalty_elements;
        const auto head_params = head ? head->parameters() : std::vector<at::Tensor>{};
        auto terms = npo_loss(in, head_params, cfg_.npo, beta);
        loss = terms.total;
        margins = terms.margins;
        step_stats.add(kModel, terms.model_loss, weight);
        step_stats.add(kNoise, terms.noise_loss, weight);
        step_stats.add(kPenalty, terms.penalty, weight);
        step_stats.add(kSumS, terms.sum_s, weight);
        step_stats.add(kNumS, weight * static_cast<double>(terms.num_s));
      }
      phase.begin("dnpo::backward");
      (loss * weight).backward();
      if (!policy.keep_gathered()) {
        policy.release();
      }
      if (head && !head->keep_gathered()) {
        head->release();
      }
      phase.begin("dnpo::step_stats");
      step_stats.add(kLoss, loss, weight);
      step_stats.add(kMargin, margins, weight);
      step_stats.add(kCorrect, margins > 0, weight);
      step_stats.add(kChosen, policy_chosen, weight);
      step_stats.add(kRejected, policy_rejected, weight);
      step_stats.add(kTokens, weight * m.batch.attention_mask.sum().item<double>());
      phase.begin("dnpo::batches");
    }
    phase.begin("dnpo::flush_grads");
    policy.flush_grads();
    policy.release();  // kept units are stale once the optimizer steps
    if (head) {
      head->flush_grads();
      head->release();
    }
    // The reference is frozen: units kept gathered stay valid for the whole stage, so it is
    // gathered once per stage instead of once per step.
    if (!reference.keep_gathered()) {
      reference.release();
    }
    if (gradient_observer_) {
      gradient_observer_(step, units);
    }
    phase.begin("dnpo::clip_grad_norm");
    const auto grad_norm = dist::clip_grad_norm(units, comm_, cfg_.train.grad_clip);
    phase.begin("dnpo::optimizer");
    optimizer->step();
    optimizer->zero_grad();
    phase.begin("dnpo::stats");
    auto stats = step_stats.read();
    sum_over_ranks(stats, comm_);
    phase.end();

    const double ms = step_timer.millis();
    const auto step_tokens = static_cast<std::int64_t>(stats[kTokens]);
    const double tok_s = static_cast<double>(step_tokens) / (ms / 1e3);
    const double margin = stats[kMargin] / global_pairs;
    std::vector<std::pair<std::string, double>> values = {
        {"loss", stats[kLoss]},
        {"model_loss", stats[kModel]},
        {"margin", margin},
        {"reward_accuracy", stats[kCorrect] / global_pairs},
        {"logp_chosen", stats[kChosen] / global_pairs},
        {"logp_rejected", stats[kRejected] / global_pairs},
        {"lr", lr},
        {"grad_norm", grad_norm.item<double>()},
        {"step_ms", ms},
        {"tokens_per_s", tok_s}};
    if (npo) {
      values.insert(values.end(),
                    {{"noise_loss", stats[kNoise]},
                     {"penalty", stats[kPenalty]},
                     {"mean_s", stats[kNumS] > 0 ? stats[kSumS] / stats[kNumS] : 0.0}});
    }
    phase.append_times(values);
    metrics_.write(loss_kind, step + 1, values);
    if (progress) {
      progress->update(step + 1, format_status(stats[kLoss], margin, lr, ms, tok_s));
    }
    end_step(state, stats[kModel], ms, step_tokens);
  }
  if (progress) {
    progress->finish();
  }
  end_stage(state, summary);
  finish_policy();
  if (head) {
    noise_head_ = std::move(head);
  }
  return summary;
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
                  "checkpoint ",
                  path,
                  " was written for a stage of ",
                  stored.total_steps,
                  " steps; this configuration makes ",
                  state.position.total_steps,
                  " (train.batch_size, epochs, max_steps or the data differ)");
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
