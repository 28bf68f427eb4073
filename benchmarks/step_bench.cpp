// Single-process step benchmark: SPIN vs NPO (or SFT) optimizer steps on the same model and batch.
// Prints one JSON line per metric: median step time and peak resident memory added by training,
// and the first step's loss. With --dump DIR it first writes what a peer needs to do the same
// work (benchmarks/peers/step_peer.py): the initial policy (HF directory), the noise head, the
// padded token batch of the first step, its NPO noise draws, and the settings.
// With --alternate R it runs R rounds of SPIN then NPO steps in one process and prints their ratio.
// With --epochs E it times a whole stage of E epochs (train.reuse_reference with
// --reuse-reference).
// Usage: dnpo_step_bench --loss spin|npo|sft [--vocab V --hidden C --layers L --batch B
//                         --prompt-len P --response-len R --steps N --threads T
//                         --dump DIR [--dump-only] --alternate R
//                         --epochs E [--pairs P] [--reuse-reference]]
#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <unistd.h>

#include "bench_common.h"
#include "dnpo/common/allocator.h"
#include "dnpo/common/counter_rng.h"
#include "dnpo/common/log.h"
#include "dnpo/common/main.h"
#include "dnpo/config/config.h"
#include "dnpo/data/chat_template.h"
#include "dnpo/data/jsonl.h"
#include "dnpo/data/tokenizer.h"
#include "dnpo/dist/comm.h"
#include "dnpo/model/batch.h"
#include "dnpo/model/hf_io.h"
#include "dnpo/model/llama.h"
#include "dnpo/model/noise_head.h"
#include "dnpo/model/random.h"
#include "dnpo/model/safetensors.h"
#include "dnpo/train/dnpo_loss.h"
#include "dnpo/train/metrics.h"
#include "dnpo/train/trainer.h"

namespace {

using dnpo::model::NamedTensors;

/// The first step's batch as the trainer builds it (one micro-batch: all samples, or all chosen
/// then all rejected), from the same synthetic texts as bench::train_synthetic.
dnpo::model::TokenBatch first_batch(const dnpo::config::RunConfig& cfg,
                                    const dnpo::data::Tokenizer& tokenizer,
                                    int batch,
                                    int prompt_len,
                                    int response_len) {
  using dnpo::bench::text_of;
  const dnpo::data::ChatTemplate chat(cfg.chat, tokenizer);
  const auto sequence = [&](const std::string& prompt, const std::string& answer) {
    dnpo::model::TokenSequence s{chat.encode_prompt(prompt), chat.encode_response(answer)};
    dnpo::model::truncate_sequence(s, cfg.data.max_length, cfg.data.max_prompt_length);
    return s;
  };
  std::vector<dnpo::model::TokenSequence> seqs;
  for (int i = 0; i < batch; ++i) {  // SFT answers, or the chosen ones
    seqs.push_back(sequence(text_of(prompt_len, i), text_of(response_len - 1, i + 1)));
  }
  if (cfg.train.loss != "sft") {
    for (int i = 0; i < batch; ++i) {
      seqs.push_back(sequence(text_of(prompt_len, i), text_of(response_len - 1, i + 2)));
    }
  }
  return dnpo::model::pad_batch(seqs, tokenizer.pad_id());
}

/// Writes the peer's inputs into `dir` (see the file comment).
void dump_case(const std::string& dir,
               const dnpo::config::RunConfig& cfg,
               const dnpo::data::Tokenizer& tokenizer,
               const dnpo::model::LlamaModel& policy,
               int batch,
               int prompt_len,
               int response_len) {
  std::filesystem::create_directories(dir);
  dnpo::model::save_hf_model(dir + "/policy", policy);
  const auto b = first_batch(cfg, tokenizer, batch, prompt_len, response_len);
  NamedTensors tensors{
      {"input_ids", b.input_ids}, {"attention_mask", b.attention_mask}, {"loss_mask", b.loss_mask}};
  if (cfg.train.loss == "npo") {
    // The trainer's fresh head and its ε draws for step 0 (keys as in Trainer::train_preference;
    // pair i is row i here).
    const dnpo::model::NoiseHead head(cfg.npo,
                                      cfg.model.hidden_size,
                                      cfg.model.vocab_size,
                                      dnpo::fold_key(cfg.run.seed, cfg.train.iteration));
    dnpo::model::write_safetensors(dir + "/head.safetensors", head.named_parameters());
    const auto rows = b.input_ids.size(0) / 2;
    const auto rr = dnpo::train::response_rows(b.input_ids.narrow(0, rows, rows),
                                               b.loss_mask.narrow(0, rows, rows));
    std::vector<std::uint64_t> keys1, keys2;
    for (std::int64_t j = 0; j < rr.sample.numel(); ++j) {
      const auto pair = static_cast<std::uint64_t>(rr.sample[j].item<std::int64_t>());
      const auto pos = static_cast<std::uint64_t>(rr.position[j].item<std::int64_t>());
      keys1.push_back(dnpo::draw_key(
          cfg.run.seed, cfg.train.iteration, 0, pair, pos, dnpo::RandomStream::kNoiseEps1));
      keys2.push_back(dnpo::draw_key(
          cfg.run.seed, cfg.train.iteration, 0, pair, pos, dnpo::RandomStream::kNoiseEps2));
    }
    tensors.emplace_back("eps1", dnpo::model::counter_normal_rows(keys1, cfg.model.vocab_size));
    tensors.emplace_back("eps2", dnpo::model::counter_normal_rows(keys2, cfg.model.vocab_size));
  }
  dnpo::model::write_safetensors(dir + "/batch.safetensors", tensors);
  const auto& t = cfg.train;
  const auto& n = cfg.npo;
  std::ofstream(dir + "/settings.json")
      << nlohmann::json{{"loss", t.loss},
                        {"beta", cfg.loss.beta},
                        {"optimizer", t.optimizer},
                        {"lr", t.lr},
                        {"warmup_ratio", t.warmup_ratio},
                        {"lr_schedule", t.lr_schedule},
                        {"min_lr_ratio", t.min_lr_ratio},
                        {"total_steps", t.max_steps},
                        {"weight_decay", t.weight_decay},
                        {"adam_beta1", t.adam_beta1},
                        {"adam_beta2", t.adam_beta2},
                        {"eps", t.eps},
                        {"grad_clip", t.grad_clip},
                        {"npo",
                         {{"head", n.head},
                          {"scale", n.scale},
                          {"penalty", n.penalty},
                          {"alpha", n.alpha},
                          {"penalty_positions", n.penalty_positions},
                          {"max_sigma", n.max_sigma}}}}
             .dump(2)
      << "\n";
}

constexpr int kWarmupSteps = 2;  // run before the timed steps, not counted

/// --alternate: rounds of SPIN then NPO steps in this one process, each from the same initial
/// policy, so that the machine's drift (other load, clocks) falls on both alike. Prints each
/// loss's median over every round's timed steps, the ratio of those medians and its spread
/// over the rounds.
int run_alternating(dnpo::config::RunConfig cfg,
                    const dnpo::data::Tokenizer& tokenizer,
                    dnpo::model::LlamaModel& policy,
                    int rounds,
                    const nlohmann::json& config,
                    int batch,
                    int prompt_len,
                    int response_len) {
  const auto initial = policy.clone();
  std::vector<double> spin_ms, npo_ms, round_ratios;
  for (int round = 0; round < rounds; ++round) {
    double medians[2] = {0, 0};
    for (int k = 0; k < 2; ++k) {
      cfg.train.loss = k == 0 ? "spin" : "npo";
      policy.copy_from(initial);
      dnpo::train::MetricsWriter metrics("");
      const auto comm = dnpo::dist::Comm::one_process();
      dnpo::train::Trainer trainer(cfg, policy, tokenizer, metrics, *comm);
      const auto summary =
          dnpo::bench::train_synthetic(trainer, cfg.train.loss, batch, prompt_len, response_len);
      const std::vector<double> timed(summary.step_ms.begin() + kWarmupSteps,
                                      summary.step_ms.end());
      auto& all = k == 0 ? spin_ms : npo_ms;
      all.insert(all.end(), timed.begin(), timed.end());
      medians[k] = dnpo::bench::median(timed);
    }
    round_ratios.push_back(medians[1] / medians[0]);
    std::fprintf(stderr,
                 "round %d: spin %.1f ms, npo %.1f ms, ratio %.3f\n",
                 round + 1,
                 medians[0],
                 medians[1],
                 round_ratios.back());
  }
  const double spin = dnpo::bench::median(spin_ms);
  const double npo = dnpo::bench::median(npo_ms);
  const auto [lo, hi] = std::minmax_element(round_ratios.begin(), round_ratios.end());
  for (const auto& [metric, value, unit] :
       {std::tuple<const char*, double, const char*>{"spin_step_time_median", spin, "ms"},
        {"npo_step_time_median", npo, "ms"},
        {"npo_over_spin", npo / spin, ""},
        {"npo_over_spin_round_min", *lo, ""},
        {"npo_over_spin_round_max", *hi, ""}}) {
    std::cout << nlohmann::json{{"name", "step.alternate"},
                                {"config", config},
                                {"metric", metric},
                                {"value", value},
                                {"unit", unit},
                                {"rounds", rounds}}
                     .dump()
              << "\n";
  }
  return 0;
}

/// One JSON result line on stdout.
void print_result(const std::string& name,
                  const nlohmann::json& config,
                  const std::string& metric,
                  double value,
                  const char* unit) {
  std::cout << nlohmann::json{{"name", name},
                              {"config", config},
                              {"metric", metric},
                              {"value", value},
                              {"unit", unit}}
                   .dump()
            << "\n";
}

/// --epochs: one whole stage, timed step by step; prints its stage_time (the steps' sum) and
/// each epoch's median step.
int run_stage(dnpo::config::RunConfig& cfg,
              const dnpo::data::Tokenizer& tokenizer,
              dnpo::model::LlamaModel& policy,
              const nlohmann::json& config,
              int samples,
              int prompt_len,
              int response_len) {
  dnpo::train::MetricsWriter metrics;
  const auto comm = dnpo::dist::Comm::one_process();
  dnpo::train::Trainer trainer(cfg, policy, tokenizer, metrics, *comm);
  const auto summary =
      dnpo::bench::train_synthetic(trainer, cfg.train.loss, samples, prompt_len, response_len);
  const auto name = "stage." + cfg.train.loss;
  const auto print = [&](const std::string& metric, double value, const char* unit) {
    print_result(name, config, metric, value, unit);
  };
  double total = 0;
  for (const double ms : summary.step_ms) {
    total += ms;
  }
  print("stage_time", total, "ms");
  const auto per_epoch = summary.step_ms.size() / static_cast<std::size_t>(cfg.train.epochs);
  for (int e = 0; e < cfg.train.epochs; ++e) {
    const auto begin = summary.step_ms.begin() + static_cast<std::ptrdiff_t>(e * per_epoch);
    print("epoch" + std::to_string(e + 1) + "_step_time_median",
          dnpo::bench::median(
              std::vector<double>(begin, begin + static_cast<std::ptrdiff_t>(per_epoch))),
          "ms");
  }
  print("last_step_loss", summary.step_losses.back(), "");
  return 0;
}

struct Options {
  std::string loss = "npo";
  int vocab = 260, hidden = 128, layers = 4, batch = 16, prompt_len = 24, response_len = 24;
  int steps = 10, threads = 1, chunk = 64;
  std::string dump, profile;
  bool dump_only = false, phases = false;
  int alternate = 0;
  int epochs = 0, pairs = 0;
  bool reuse_reference = false;
};

void add_options(CLI::App& app, Options& o) {
  app.add_option("--loss", o.loss);
  app.add_option("--vocab", o.vocab);
  app.add_option("--hidden", o.hidden);
  app.add_option("--layers", o.layers);
  app.add_option("--batch", o.batch);
  app.add_option("--prompt-len", o.prompt_len);
  app.add_option("--response-len", o.response_len);
  app.add_option("--steps", o.steps);
  app.add_option("--threads", o.threads);
  app.add_option("--chunk", o.chunk, "npo.chunk_positions");
  app.add_option("--dump", o.dump, "write the peer's inputs (weights, batch, draws) into DIR");
  app.add_flag(
      "--dump-only", o.dump_only, "exit after --dump (timed runs then measure memory alone)");
  app.add_option("--profile", o.profile, "write LibTorch's op trace of every step (chrome JSON)");
  app.add_flag("--phases",
               o.phases,
               "also print each phase's median wall time (run.phase_times, no profiler)");
  app.add_option("--alternate",
                 o.alternate,
                 "R rounds of SPIN then NPO steps in this process (--loss ignored): their ratio "
                 "with the machine's drift on both alike");
  app.add_option("--epochs",
                 o.epochs,
                 "time a whole stage of E epochs over --pairs samples in steps of --batch "
                 "(its stage_time) instead of --steps");
  app.add_option("--pairs", o.pairs, "samples of the --epochs stage (default: --batch)");
  app.add_flag("--reuse-reference",
               o.reuse_reference,
               "train.reuse_reference (off by default: a step does a first epoch's work, as the "
               "peers do)");
}

dnpo::config::RunConfig make_config(const Options& o) {
  dnpo::config::RunConfig cfg;
  cfg.model.vocab_size = o.vocab;
  cfg.model.hidden_size = o.hidden;
  cfg.model.intermediate_size = o.hidden * 11 / 4;
  cfg.model.num_hidden_layers = o.layers;
  cfg.model.num_attention_heads = std::max(1, o.hidden / 32);
  cfg.model.num_key_value_heads = cfg.model.num_attention_heads;
  cfg.chat.prompt_template = "{prompt}";
  cfg.data.max_length = o.prompt_len + o.response_len + 8;
  cfg.data.max_prompt_length = o.prompt_len + 4;
  cfg.train.loss = o.loss;
  cfg.train.batch_size = o.batch;
  cfg.train.micro_batch_size = o.batch;
  cfg.train.max_steps = o.epochs > 0 ? 0 : o.steps + kWarmupSteps;
  cfg.train.epochs = std::max(o.epochs, 1);
  cfg.train.reuse_reference = o.reuse_reference;
  cfg.train.lr = 1e-5;
  cfg.run.log_every = 1000000;
  cfg.npo.chunk_positions = o.chunk;
  return cfg;
}

/// --steps N after the warm-up: the median step time, the peak memory training added, the
/// first two steps' losses (what a peer must reproduce) and, with --phases, each phase's median.
int run_steps(dnpo::config::RunConfig& cfg,
              const dnpo::data::Tokenizer& tokenizer,
              dnpo::model::LlamaModel& policy,
              const nlohmann::json& config,
              const Options& o) {
  // With --phases the step's phase times come back the way a user sees them: metrics.jsonl.
  const auto metrics_path = std::filesystem::temp_directory_path() /
                            ("dnpo_step_bench_" + std::to_string(::getpid()) + ".jsonl");
  cfg.run.phase_times = o.phases;
  dnpo::train::MetricsWriter metrics(o.phases ? metrics_path.string() : "");
  const auto comm = dnpo::dist::Comm::one_process();
  dnpo::train::Trainer trainer(cfg, policy, tokenizer, metrics, *comm);
  const double rss_before = dnpo::bench::peak_rss_mib();
  std::optional<torch::autograd::profiler::RecordProfile> tracing;
  if (!o.profile.empty()) {
    tracing.emplace(o.profile);
  }
  const auto summary =
      dnpo::bench::train_synthetic(trainer, o.loss, o.batch, o.prompt_len, o.response_len);
  tracing.reset();
  const auto name = "step." + o.loss;
  const auto print = [&](const std::string& metric, double value, const char* unit) {
    print_result(name, config, metric, value, unit);
  };
  print("step_time_median",
        dnpo::bench::median(
            std::vector<double>(summary.step_ms.begin() + kWarmupSteps, summary.step_ms.end())),
        "ms");
  print("peak_rss_added", dnpo::bench::peak_rss_mib() - rss_before, "MiB");
  if (o.phases) {
    dnpo::bench::print_phase_medians(metrics_path.string(), kWarmupSteps, config, name);
    std::filesystem::remove(metrics_path);
  }
  print("first_step_loss", summary.step_losses.at(0), "");
  print("second_step_loss", summary.step_losses.at(1), "");
  return 0;
}

/// The benchmark; main() only adds a last-resort catch around it.
int run_bench(int argc, char** argv) {
  dnpo::configure_heap();  // as dnpo_dist does
  CLI::App app{"dnpo step benchmark"};
  Options o;
  add_options(app, o);
  CLI11_PARSE(app, argc, argv);
  dnpo::log::init(0, "warn");  // stdout carries only the JSON results
  at::set_num_threads(o.threads);

  auto cfg = make_config(o);
  dnpo::data::ByteTokenizer tokenizer;
  dnpo::model::LlamaModel policy(cfg.model, 1);
  if (!o.dump.empty()) {
    dump_case(o.dump, cfg, tokenizer, policy, o.batch, o.prompt_len, o.response_len);
    if (o.dump_only) {
      return 0;
    }
  }
  nlohmann::json config = {{"vocab", o.vocab},
                           {"hidden", o.hidden},
                           {"layers", o.layers},
                           {"batch", o.batch},
                           {"prompt_len", o.prompt_len},
                           {"response_len", o.response_len},
                           {"threads", o.threads},
                           {"heap", dnpo::heap_name()},
                           {"params", policy.num_parameters()}};
  if (o.alternate > 0) {
    config["steps"] = o.steps;
    config["chunk"] = o.chunk;
    return run_alternating(
        cfg, tokenizer, policy, o.alternate, config, o.batch, o.prompt_len, o.response_len);
  }
  config["loss"] = o.loss;
  if (o.epochs > 0) {
    const int samples = o.pairs > 0 ? o.pairs : o.batch;
    config["epochs"] = o.epochs;
    config["pairs"] = samples;
    config["reuse_reference"] = o.reuse_reference;
    return run_stage(cfg, tokenizer, policy, config, samples, o.prompt_len, o.response_len);
  }
  return run_steps(cfg, tokenizer, policy, config, o);
}

}  // namespace

int main(int argc, char** argv) {
  return dnpo::guarded_main("dnpo_step_bench", argc, argv, run_bench);
}
