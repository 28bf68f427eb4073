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

int run_bench(int argc, char** argv) {
  dnpo::configure_heap();
  const dnpo::dist::MpiEnv mpi(&argc, &argv);
  CLI::App app{"dnpo FSDP benchmark"};
  std::string loss = "npo", reduce_scatter = "ring";
  int vocab = 260, hidden = 128, layers = 4, intermediate = 0, heads = 0, batch = 16, micro = 0;
  int prompt_len = 24, response_len = 24, steps = 6, warmup = 2, threads = 1, prefetch = 1;
  std::string reshard_after_forward = "1";
  bool tied = false;
  app.add_option("--loss", loss);
  app.add_option("--vocab", vocab);
  app.add_option("--hidden", hidden);
  app.add_option("--layers", layers);
  app.add_option("--intermediate", intermediate, "default 11/4 hidden");
  app.add_option("--heads", heads, "default hidden/64");
  app.add_option("--batch", batch, "global batch");
  app.add_option("--micro", micro, "micro-batch (default batch/world)");
  app.add_option("--prompt-len", prompt_len);
  app.add_option("--response-len", response_len);
  app.add_option("--steps", steps, "timed steps");
  app.add_option("--warmup", warmup, "untimed steps first");
  app.add_option("--threads", threads);
  std::string profile;
  app.add_option("--profile", profile, "rank 0 writes LibTorch's op trace of every step (JSON)");
  app.add_option("--prefetch", prefetch);
  app.add_option(
         "--reshard-after-forward",
         reshard_after_forward,
         "dist.reshard_after_forward: 0 keeps units gathered for the step, 1 reshards, auto "
         "keeps them where the memory fits")
      ->check(CLI::IsMember({"0", "1", "auto"}));
  app.add_option("--reduce-scatter", reduce_scatter);
  std::string all_gather = dnpo::config::DistConfig{}.all_gather;
  app.add_option("--all-gather", all_gather);
  app.add_flag("--tied", tied);
  bool phases = false;
  app.add_flag("--phases", phases, "also print rank 0's median wall time per step phase");
  CLI11_PARSE(app, argc, argv);
  dnpo::log::init(mpi.rank(), "warn");  // stdout carries only the JSON result
  at::set_num_threads(threads);
  const int world = mpi.world_size();

  dnpo::config::RunConfig cfg;
  cfg.model.vocab_size = vocab;
  cfg.model.hidden_size = hidden;
  cfg.model.intermediate_size = intermediate > 0 ? intermediate : hidden * 11 / 4;
  cfg.model.num_hidden_layers = layers;
  cfg.model.num_attention_heads = heads > 0 ? heads : std::max(1, hidden / 64);
  cfg.model.num_key_value_heads = cfg.model.num_attention_heads;
  cfg.model.tie_word_embeddings = tied;
  cfg.model.max_position_embeddings = prompt_len + response_len + 16;
  cfg.chat.prompt_template = "{prompt}";
  cfg.data.max_length = prompt_len + response_len + 8;
  cfg.data.max_prompt_length = prompt_len + 4;
  cfg.train.loss = loss;
  cfg.train.batch_size = batch;
  cfg.train.micro_batch_size = micro > 0 ? micro : std::max(1, batch / world);
  cfg.train.max_steps = steps + warmup;
  cfg.train.lr = 1e-5;
  cfg.run.log_every = 1000000;
  cfg.dist.prefetch = prefetch != 0;
  cfg.dist.reshard_after_forward = reshard_after_forward == "auto" ? "auto"
                                   : reshard_after_forward == "0"  ? "false"
                                                                   : "true";
  cfg.dist.reduce_scatter = reduce_scatter;
  cfg.dist.all_gather = all_gather;

  const auto comm = world > 1 ? std::make_unique<dnpo::dist::Comm>(mpi, cfg.dist)
                              : dnpo::dist::Comm::one_process();
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
  std::int64_t largest_unit = 0;
  for (auto* unit : policy.units()) {
    largest_unit = std::max(largest_unit, unit->numel());
  }
  dnpo::data::ByteTokenizer tokenizer;
  // With --phases rank 0's phase times come back through metrics.jsonl, as a user sees them.
  const auto metrics_path = std::filesystem::temp_directory_path() /
                            ("dnpo_fsdp_bench_" + std::to_string(::getpid()) + ".jsonl");
  cfg.run.phase_times = phases;
  dnpo::train::MetricsWriter metrics(phases && mpi.rank() == 0 ? metrics_path.string() : "");
  dnpo::train::Trainer trainer(cfg, policy, tokenizer, metrics, *comm);
  // Collective bytes at each step's gradient hand-off: differences are whole steps.
  std::vector<dnpo::dist::CommBytes> at_step;
  std::vector<double> faults_at_step;  // this rank's minor page faults so far
  trainer.set_gradient_observer([&](std::int64_t, const std::vector<dnpo::dist::ShardedUnit*>&) {
    at_step.push_back(comm->bytes());
    faults_at_step.push_back(dnpo::bench::minor_page_faults());
  });
  std::optional<torch::autograd::profiler::RecordProfile> tracing;
  if (!profile.empty() && mpi.rank() == 0) {
    tracing.emplace(profile);
  }
  const auto summary = dnpo::bench::train_synthetic(trainer, loss, batch, prompt_len, response_len);
  tracing.reset();
  // With no timed steps (a memory-only run) the byte counts are left at zero.
  const bool timed_steps = steps > 0 && warmup > 0;
  const auto& first =
      timed_steps ? at_step.at(static_cast<std::size_t>(warmup) - 1) : last_of(at_step);
  const auto& last = last_of(at_step);
  const double spans = timed_steps ? static_cast<double>(steps) : 1.0;
  // Theory per micro-batch, from the unit sizes: the policy gathers every unit in forward and
  // again in backward except the head (held through the loss; a tied embedding's backward reuses
  // that held buffer), the reference gathers each unit once (a tied embedding twice), the noise
  // head once; every trained unit is reduce-scattered once per use. Units kept gathered
  // (--reshard-after-forward 0): the policy and the noise head are gathered once per step and
  // their gradients reduce-scattered once per step; the frozen reference is gathered once per
  // stage, in the first (untimed) step.
  const bool keep = policy.keep_gathered();  // as the trainer chose for the stage
  double gather_theory = 0, scatter_theory = 0, gather_once = 0, scatter_once = 0;
  {
    const auto units = policy.units();
    const auto bytes = [world](const dnpo::dist::ShardedUnit* u) {
      return static_cast<double>(u->shard_numel() * world * 4);
    };
    for (std::size_t i = 0; i < units.size(); ++i) {
      const bool is_head = i + 1 == units.size() && !tied;
      const bool is_embed = i == 0;
      const double uses = is_head ? 1 : 2;  // policy gathers
      const double ref_uses = is_embed && tied ? 2 : 1;
      const double rs = is_embed && tied ? 2 : 1;
      if (keep) {
        gather_once += bytes(units[i]);
        scatter_once += bytes(units[i]);
      } else {
        gather_theory += (uses + (loss == "sft" ? 0 : ref_uses)) * bytes(units[i]);
        scatter_theory += rs * bytes(units[i]);
      }
    }
    if (loss == "npo") {
      // W (V×C) plus b (V) for "linear", or LayerNorm weight and bias (2C) for "ln_gelu_linear"
      const double head =
          static_cast<double>(vocab) * hidden + (cfg.npo.head == "linear" ? vocab : 2.0 * hidden);
      const double padded = std::ceil(head / world) * world * 4;
      (keep ? gather_once : gather_theory) += padded;
      (keep ? scatter_once : scatter_theory) += padded;
    }
    const double micro_per_rank =
        std::ceil(static_cast<double>(batch) / cfg.train.micro_batch_size / world);
    gather_theory = world > 1 ? gather_theory * micro_per_rank + gather_once : 0;
    scatter_theory = world > 1 ? scatter_theory * micro_per_rank + scatter_once : 0;
  }
  const auto rss = per_rank(dnpo::bench::peak_rss_mib(), *comm);
  const auto faults_per_step = per_rank(
      timed_steps
          ? (faults_at_step.back() - faults_at_step.at(static_cast<std::size_t>(warmup) - 1)) /
                spans
          : 0.0,
      *comm);
  const auto rss_at_start = per_rank(rss_start, *comm);
  const auto rss_after_build = per_rank(rss_built, *comm);
  if (mpi.rank() != 0) {
    return 0;
  }
  std::vector<double> timed(summary.step_ms.begin() + warmup, summary.step_ms.end());
  std::sort(timed.begin(), timed.end());
  const double median = dnpo::bench::median(timed);
  const double tokens_per_step = static_cast<double>(batch) * (loss == "sft" ? 1 : 2) *
                                 static_cast<double>(prompt_len + response_len + 1);
  const nlohmann::json config = {{"loss", loss},
                                 {"world", world},
                                 {"vocab", vocab},
                                 {"hidden", hidden},
                                 {"layers", layers},
                                 {"intermediate", cfg.model.intermediate_size},
                                 {"tied", tied},
                                 {"batch", batch},
                                 {"micro", cfg.train.micro_batch_size},
                                 {"prompt_len", prompt_len},
                                 {"response_len", response_len},
                                 {"threads", threads},
                                 {"heap", dnpo::heap_name()},
                                 {"prefetch", prefetch != 0},
                                 {"reshard_after_forward", cfg.dist.reshard_after_forward},
                                 {"kept_gathered", policy.keep_gathered()},
                                 {"reduce_scatter", reduce_scatter},
                                 {"all_gather", all_gather},
                                 {"params", policy.num_parameters()},
                                 {"largest_unit", largest_unit}};
  nlohmann::json out = {
      {"name", "fsdp." + loss},
      {"config", config},
      {"metric", "step_time_median"},
      {"value", median},
      {"unit", "ms"},
      {"step_ms", timed},
      {"tokens_per_s", median > 0 ? tokens_per_step / (median / 1e3) : 0.0},
      {"all_gather_bytes_per_step",
       static_cast<double>(last.all_gather - first.all_gather) / spans},
      {"all_gather_bytes_theory", gather_theory},
      {"reduce_scatter_bytes_per_step",
       static_cast<double>(last.reduce_scatter - first.reduce_scatter) / spans},
      {"reduce_scatter_bytes_theory", scatter_theory},
      {"all_gather_ops_per_step",
       static_cast<double>(last.all_gather_ops - first.all_gather_ops) / spans},
      {"reduce_scatter_ops_per_step",
       static_cast<double>(last.reduce_scatter_ops - first.reduce_scatter_ops) / spans},
      {"peak_rss_mib", rss},
      // Fresh memory costs a page fault per 4 KiB, and faults are dear on a VM: per timed step,
      // one entry per rank.
      {"page_faults_per_step", faults_per_step},
      {"rss_before_model_mib", rss_at_start},
      {"peak_rss_after_policy_mib", rss_after_build},
      // what a peer on the same weights and batch must reproduce (benchmarks/peers/ddp_peer.py)
      {"first_step_loss", summary.step_losses.empty() ? 0.0 : summary.step_losses.front()},
      {"second_step_loss", summary.step_losses.size() < 2 ? 0.0 : summary.step_losses[1]}};
  // The result is the last line (launch/scaling-study reads it there).
  if (phases) {
    dnpo::bench::print_phase_medians(metrics_path.string(), warmup, config, "fsdp." + loss);
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
