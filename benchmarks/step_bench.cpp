// Single-process step benchmark: SPIN vs NPO (or SFT) optimizer steps on the same model and batch.
// Prints one JSON line per metric: median step time and peak resident memory added by training.
// Usage: dnpo_step_bench --loss spin|npo|sft [--vocab V --hidden C --layers L --batch B
//                         --prompt-len P --response-len R --steps N --threads T]
#include <algorithm>
#include <cstdio>
#include <exception>
#include <iostream>

#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bench_common.h"
#include "dnpo/common/log.h"
#include "dnpo/config/config.h"
#include "dnpo/data/jsonl.h"
#include "dnpo/data/tokenizer.h"
#include "dnpo/model/llama.h"
#include "dnpo/train/metrics.h"
#include "dnpo/train/trainer.h"

namespace {

/// The benchmark; main() only adds a last-resort catch around it.
int run_bench(int argc, char** argv) {
  CLI::App app{"dnpo step benchmark"};
  std::string loss = "npo";
  int vocab = 260, hidden = 128, layers = 4, batch = 16, prompt_len = 24, response_len = 24;
  int steps = 10, threads = 1, chunk = 64;
  app.add_option("--loss", loss);
  app.add_option("--vocab", vocab);
  app.add_option("--hidden", hidden);
  app.add_option("--layers", layers);
  app.add_option("--batch", batch);
  app.add_option("--prompt-len", prompt_len);
  app.add_option("--response-len", response_len);
  app.add_option("--steps", steps);
  app.add_option("--threads", threads);
  app.add_option("--chunk", chunk, "npo.chunk_positions");
  CLI11_PARSE(app, argc, argv);
  dnpo::log::init(0, "warn");  // stdout carries only the JSON results
  at::set_num_threads(threads);

  dnpo::config::RunConfig cfg;
  cfg.model.vocab_size = vocab;
  cfg.model.hidden_size = hidden;
  cfg.model.intermediate_size = hidden * 11 / 4;
  cfg.model.num_hidden_layers = layers;
  cfg.model.num_attention_heads = std::max(1, hidden / 32);
  cfg.model.num_key_value_heads = cfg.model.num_attention_heads;
  cfg.chat.prompt_template = "{prompt}";
  cfg.data.max_length = prompt_len + response_len + 8;
  cfg.data.max_prompt_length = prompt_len + 4;
  cfg.train.loss = loss;
  cfg.train.batch_size = batch;
  cfg.train.micro_batch_size = batch;
  cfg.train.max_steps = steps + 2;  // two warm-up steps, not timed
  cfg.train.lr = 1e-5;
  cfg.run.log_every = 1000000;
  cfg.npo.chunk_positions = chunk;

  dnpo::data::ByteTokenizer tokenizer;
  dnpo::model::LlamaModel policy(cfg.model, 1);
  dnpo::train::MetricsWriter metrics;
  dnpo::train::Trainer trainer(cfg, policy, tokenizer, metrics);
  const double rss_before = dnpo::bench::peak_rss_mib();
  const auto summary = dnpo::bench::train_synthetic(trainer, loss, batch, prompt_len, response_len);
  std::vector<double> timed(summary.step_ms.begin() + 2, summary.step_ms.end());
  std::sort(timed.begin(), timed.end());
  const double median = timed[timed.size() / 2];
  const nlohmann::json config = {{"loss", loss},
                                 {"vocab", vocab},
                                 {"hidden", hidden},
                                 {"layers", layers},
                                 {"batch", batch},
                                 {"prompt_len", prompt_len},
                                 {"response_len", response_len},
                                 {"threads", threads},
                                 {"params", policy.num_parameters()}};
  std::cout << nlohmann::json{{"name", "step." + loss},
                              {"config", config},
                              {"metric", "step_time_median"},
                              {"value", median},
                              {"unit", "ms"}}
                   .dump()
            << "\n";
  std::cout << nlohmann::json{{"name", "step." + loss},
                              {"config", config},
                              {"metric", "peak_rss_added"},
                              {"value", dnpo::bench::peak_rss_mib() - rss_before},
                              {"unit", "MiB"}}
                   .dump()
            << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run_bench(argc, argv);
  } catch (const std::exception& e) {
    std::fputs("dnpo_step_bench: ", stderr);
    std::fputs(e.what(), stderr);
    std::fputs("\n", stderr);
  } catch (...) {
    std::fputs("dnpo_step_bench: unknown error\n", stderr);
  }
  return 1;
}
