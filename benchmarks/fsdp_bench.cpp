// FSDP benchmark, run under mpirun (or alone as a world of one): builds the policy sharded a unit
// at a time (never whole on a rank), trains SFT or NPO steps through the Trainer (which adds the
// frozen reference, the noise head and the optimizer, all sharded) and prints one JSON line from
// rank 0: median step time, tokens/s, collective bytes per step (counted and from theory), and
// peak RSS of every rank.
// Usage: mpirun -np N dnpo_fsdp_bench --loss npo|sft [--vocab V --hidden C --layers L
//          --intermediate I --heads H --batch B --micro M --prompt-len P --response-len R
//          --steps S --warmup W --threads T --prefetch 0|1 --reshard-after-forward 0|1
//          --reduce-scatter ring|mpi|allreduce|reduce --all-gather gloo|ring --profile FILE
//          --phases]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <unistd.h>

#include "bench_common.h"
#include "dnpo/common/allocator.h"
#include "dnpo/common/log.h"
#include "dnpo/common/main.h"
#include "dnpo/data/tokenizer.h"
#include "dnpo/dist/comm.h"
#include "dnpo/dist/mpi_env.h"
#include "dnpo/model/llama.h"
#include "dnpo/train/trainer.h"

namespace {

const dnpo::dist::CommBytes& last_of(const std::vector<dnpo::dist::CommBytes>& v) {
  static const dnpo::dist::CommBytes none;
  return v.empty() ? none : v.back();
}

// Every rank's value, on every rank (a one-hot sum).
std::vector<double> per_rank(double value, dnpo::dist::Comm& comm) {
  auto t = at::zeros({comm.world_size()}, at::kDouble);
  t[comm.rank()] = value;
  comm.all_reduce_sum(t).wait();
  return {t.data_ptr<double>(), t.data_ptr<double>() + t.numel()};
}

struct Options {
  std::string loss = "npo", reduce_scatter = "ring";
  int vocab = 260, hidden = 128, layers = 4, intermediate = 0, heads = 0, batch = 16, micro = 0;
  int prompt_len = 24, response_len = 24, steps = 6, warmup = 2, threads = 1, prefetch = 1;
  std::string reshard_after_forward = "1";
  std::string all_gather = dnpo::config::DistConfig{}.all_gather;
  std::string profile;
  bool tied = false, phases = false;
};

void add_options(CLI::App& app, Options& o) {
  app.add_option("--loss", o.loss);
  app.add_option("--vocab", o.vocab);
  app.add_option("--hidden", o.hidden);
  app.add_option("--layers", o.layers);
  app.add_option("--intermediate", o.intermediate, "default 11/4 hidden");
  app.add_option("--heads", o.heads, "default hidden/64");
  app.add_option("--batch", o.batch, "global batch");
  app.add_option("--micro", o.micro, "micro-batch (default batch/world)");
  app.add_option("--prompt-len", o.prompt_len);
  app.add_option("--response-len", o.response_len);
  app.add_option("--steps", o.steps, "timed steps");
  app.add_option("--warmup", o.warmup, "untimed steps first");
  app.add_option("--threads", o.threads);
  app.add_option("--profile", o.profile, "rank 0 writes LibTorch's op trace of every step (JSON)");
  app.add_option("--prefetch", o.prefetch);
  app.add_option(
         "--reshard-after-forward",
         o.reshard_after_forward,
         "dist.reshard_after_forward: 0 keeps units gathered for the step, 1 reshards, auto "
         "keeps them where the memory fits")
      ->check(CLI::IsMember({"0", "1", "auto"}));
  app.add_option("--reduce-scatter", o.reduce_scatter);
  app.add_option("--all-gather", o.all_gather);
  app.add_flag("--tied", o.tied);
  app.add_flag("--phases", o.phases, "also print rank 0's median wall time per step phase");
}

dnpo::config::RunConfig make_config(const Options& o, int world) {
  dnpo::config::RunConfig cfg;
  cfg.model.vocab_size = o.vocab;
  cfg.model.hidden_size = o.hidden;
  cfg.model.intermediate_size = o.intermediate > 0 ? o.intermediate : o.hidden * 11 / 4;
  cfg.model.num_hidden_layers = o.layers;
  cfg.model.num_attention_heads = o.heads > 0 ? o.heads : std::max(1, o.hidden / 64);
  cfg.model.num_key_value_heads = cfg.model.num_attention_heads;
  cfg.model.tie_word_embeddings = o.tied;
  cfg.model.max_position_embeddings = o.prompt_len + o.response_len + 16;
  cfg.chat.prompt_template = "{prompt}";
  cfg.data.max_length = o.prompt_len + o.response_len + 8;
  cfg.data.max_prompt_length = o.prompt_len + 4;
  cfg.train.loss = o.loss;
  cfg.train.batch_size = o.batch;
  cfg.train.micro_batch_size = o.micro > 0 ? o.micro : std::max(1, o.batch / world);
  cfg.train.max_steps = o.steps + o.warmup;
  cfg.train.reuse_reference = false;  // every step does a first epoch's work (the same batch)
  cfg.train.lr = 1e-5;
  cfg.run.log_every = 1000000;
  cfg.dist.prefetch = o.prefetch != 0;
  cfg.dist.reshard_after_forward = o.reshard_after_forward == "auto" ? "auto"
                                   : o.reshard_after_forward == "0"  ? "false"
                                                                     : "true";
  cfg.dist.reduce_scatter = o.reduce_scatter;
  cfg.dist.all_gather = o.all_gather;
  return cfg;
}

struct CommTheory {
  double gather = 0, scatter = 0;  // bytes per step
};

// Theory per micro-batch, from the unit sizes: the policy gathers every unit in forward and
// again in backward except the head (held through the loss; a tied embedding's backward reuses
// that held buffer), the reference gathers each unit once (a tied embedding twice), the noise
// head once; every trained unit is reduce-scattered once per use. Units kept gathered
// (--reshard-after-forward 0): the policy and the noise head are gathered once per step and
// their gradients reduce-scattered once per step; the frozen reference is gathered once per
// stage, in the first (untimed) step.
CommTheory comm_theory(dnpo::train::ShardedLlama& policy,
                       const dnpo::config::RunConfig& cfg,
                       const Options& o,
                       int world) {
  const bool keep = policy.keep_gathered();  // as the trainer chose for the stage
  double gather = 0, scatter = 0, gather_once = 0, scatter_once = 0;
  const auto units = policy.units();
  const auto bytes = [world](const dnpo::dist::ShardedUnit* u) {
    return static_cast<double>(u->shard_numel() * world * 4);
  };
  for (std::size_t i = 0; i < units.size(); ++i) {
    const bool is_head = i + 1 == units.size() && !o.tied;
    const bool is_embed = i == 0;
    const double uses = is_head ? 1 : 2;  // policy gathers
    const double ref_uses = is_embed && o.tied ? 2 : 1;
    const double rs = is_embed && o.tied ? 2 : 1;
    if (keep) {
      gather_once += bytes(units[i]);
      scatter_once += bytes(units[i]);
    } else {
      gather += (uses + (o.loss == "sft" ? 0 : ref_uses)) * bytes(units[i]);
      scatter += rs * bytes(units[i]);
    }
  }
  if (o.loss == "npo") {
    // W (V×C) plus b (V) for "linear", or LayerNorm weight and bias (2C) for "ln_gelu_linear"
    const double head = static_cast<double>(o.vocab) * o.hidden +
                        (cfg.npo.head == "linear" ? o.vocab : 2.0 * o.hidden);
    const double padded = std::ceil(head / world) * world * 4;
    (keep ? gather_once : gather) += padded;
    (keep ? scatter_once : scatter) += padded;
  }
  const double micro_per_rank =
      std::ceil(static_cast<double>(o.batch) / cfg.train.micro_batch_size / world);
  if (world == 1) {
    return {};
  }
  return {gather * micro_per_rank + gather_once, scatter * micro_per_rank + scatter_once};
}

/// What rank 0 reports besides the steps: every rank's memory and page faults, the bytes moved.
struct Measured {
  std::vector<double> rss, faults_per_step, rss_at_start, rss_after_build;
  dnpo::dist::CommBytes first, last;  // at the first timed step's start and the last's end
  double spans = 1;                   // timed steps (1 for a memory-only run)
  std::int64_t largest_unit = 0;
};

nlohmann::json config_json(const Options& o,
                           const dnpo::config::RunConfig& cfg,
                           int world,
                           dnpo::train::ShardedLlama& policy,
                           std::int64_t largest_unit) {
  return {{"loss", o.loss},
          {"world", world},
          {"vocab", o.vocab},
          {"hidden", o.hidden},
          {"layers", o.layers},
          {"intermediate", cfg.model.intermediate_size},
          {"tied", o.tied},
          {"batch", o.batch},
          {"micro", cfg.train.micro_batch_size},
          {"prompt_len", o.prompt_len},
          {"response_len", o.response_len},
          {"threads", o.threads},
          {"heap", dnpo::heap_name()},
          {"prefetch", o.prefetch != 0},
          {"reshard_after_forward", cfg.dist.reshard_after_forward},
          {"kept_gathered", policy.keep_gathered()},
          {"reduce_scatter", o.reduce_scatter},
          {"all_gather", o.all_gather},
          {"params", policy.num_parameters()},
          {"largest_unit", largest_unit}};
}

nlohmann::json result_json(const Options& o,
                           const dnpo::config::RunConfig& cfg,
                           int world,
                           dnpo::train::ShardedLlama& policy,
                           const dnpo::train::TrainSummary& summary,
                           const Measured& m,
                           const CommTheory& theory) {
  std::vector<double> timed(summary.step_ms.begin() + o.warmup, summary.step_ms.end());
  std::sort(timed.begin(), timed.end());
  const double median = dnpo::bench::median(timed);
  const double tokens_per_step = static_cast<double>(o.batch) * (o.loss == "sft" ? 1 : 2) *
                                 static_cast<double>(o.prompt_len + o.response_len + 1);
  const double spans = m.spans;
  return {{"name", "fsdp." + o.loss},
          {"config", config_json(o, cfg, world, policy, m.largest_unit)},
          {"metric", "step_time_median"},
          {"value", median},
          {"unit", "ms"},
          {"step_ms", timed},
          {"tokens_per_s", median > 0 ? tokens_per_step / (median / 1e3) : 0.0},
          {"all_gather_bytes_per_step",
           static_cast<double>(m.last.all_gather - m.first.all_gather) / spans},
          {"all_gather_bytes_theory", theory.gather},
          {"reduce_scatter_bytes_per_step",
           static_cast<double>(m.last.reduce_scatter - m.first.reduce_scatter) / spans},
          {"reduce_scatter_bytes_theory", theory.scatter},
          {"all_gather_ops_per_step",
           static_cast<double>(m.last.all_gather_ops - m.first.all_gather_ops) / spans},
          {"reduce_scatter_ops_per_step",
           static_cast<double>(m.last.reduce_scatter_ops - m.first.reduce_scatter_ops) / spans},
          {"peak_rss_mib", m.rss},
          // Fresh memory costs a page fault per 4 KiB, and faults are dear on a VM: per timed step,
          // one entry per rank.
          {"page_faults_per_step", m.faults_per_step},
          {"rss_before_model_mib", m.rss_at_start},
          {"peak_rss_after_policy_mib", m.rss_after_build},
          // what a peer on the same weights and batch must reproduce (benchmarks/peers/ddp_peer.py)
          {"first_step_loss", summary.step_losses.empty() ? 0.0 : summary.step_losses.front()},
          {"second_step_loss", summary.step_losses.size() < 2 ? 0.0 : summary.step_losses[1]}};
}

int run_bench(int argc, char** argv) {
  dnpo::configure_heap();
  const dnpo::dist::MpiEnv mpi(&argc, &argv);
  CLI::App app{"dnpo FSDP benchmark"};
  Options o;
  add_options(app, o);
  CLI11_PARSE(app, argc, argv);
  dnpo::log::init(mpi.rank(), "warn");  // stdout carries only the JSON result
  at::set_num_threads(o.threads);
  const int world = mpi.world_size();
  auto cfg = make_config(o, world);
  const auto comm = world > 1 ? std::make_unique<dnpo::dist::Comm>(mpi, cfg.dist)
                              : dnpo::dist::Comm::one_process();
  Measured m;
  // --- the policy, a unit at a time from the counter-based init ---
  const double rss_start = dnpo::bench::peak_rss_mib();
  dnpo::train::ShardedLlama policy(
      cfg.model,
      [&cfg](const std::string& name) {
        return dnpo::model::initial_parameter(cfg.model, name, 1);
      },
      *comm,
      dnpo::dist::UnitPrecision{},
      true,
      world > 1);
  const double rss_built = dnpo::bench::peak_rss_mib();
  for (auto* unit : policy.units()) {
    m.largest_unit = std::max(m.largest_unit, unit->numel());
  }
  dnpo::data::ByteTokenizer tokenizer;
  // With --phases rank 0's phase times come back through metrics.jsonl, as a user sees them.
  const auto metrics_path = std::filesystem::temp_directory_path() /
                            ("dnpo_fsdp_bench_" + std::to_string(::getpid()) + ".jsonl");
  cfg.run.phase_times = o.phases;
  dnpo::train::MetricsWriter metrics(o.phases && mpi.rank() == 0 ? metrics_path.string() : "");
  dnpo::train::Trainer trainer(cfg, policy, tokenizer, metrics, *comm);
  // Collective bytes at each step's gradient hand-off: differences are whole steps.
  std::vector<dnpo::dist::CommBytes> at_step;
  std::vector<double> faults_at_step;  // this rank's minor page faults so far
  trainer.set_gradient_observer([&](std::int64_t, const std::vector<dnpo::dist::ShardedUnit*>&) {
    at_step.push_back(comm->bytes());
    faults_at_step.push_back(dnpo::bench::minor_page_faults());
  });
  std::optional<torch::autograd::profiler::RecordProfile> tracing;
  if (!o.profile.empty() && mpi.rank() == 0) {
    tracing.emplace(o.profile);
  }
  const auto summary =
      dnpo::bench::train_synthetic(trainer, o.loss, o.batch, o.prompt_len, o.response_len);
  tracing.reset();
  // With no timed steps (a memory-only run) the byte counts are left at zero.
  const bool timed_steps = o.steps > 0 && o.warmup > 0;
  const auto warmed = static_cast<std::size_t>(o.warmup) - 1;
  m.first = timed_steps ? at_step.at(warmed) : last_of(at_step);
  m.last = last_of(at_step);
  m.spans = timed_steps ? static_cast<double>(o.steps) : 1.0;
  const auto theory = comm_theory(policy, cfg, o, world);
  m.rss = per_rank(dnpo::bench::peak_rss_mib(), *comm);
  m.faults_per_step = per_rank(
      timed_steps ? (faults_at_step.back() - faults_at_step.at(warmed)) / m.spans : 0.0, *comm);
  m.rss_at_start = per_rank(rss_start, *comm);
  m.rss_after_build = per_rank(rss_built, *comm);
  if (mpi.rank() != 0) {
    return 0;
  }
  const auto out = result_json(o, cfg, world, policy, summary, m, theory);
  // The result is the last line (launch/scaling-study reads it there).
  if (o.phases) {
    dnpo::bench::print_phase_medians(
        metrics_path.string(), o.warmup, out["config"], out["name"].get<std::string>());
    std::filesystem::remove(metrics_path);
  }
  std::cout << out.dump() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return dnpo::guarded_main(
      "dnpo_fsdp_bench", argc, argv, run_bench, [] { dnpo::dist::MpiEnv::abort(1); });
}
