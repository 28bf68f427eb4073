// Generation benchmark: greedy KV-cache decoding of a batch of prompts with a random Llama
// (model::generate, whole parameters, one process). Prints the median wall time and tokens/s.
// With --dump DIR it first writes what the Python peer (benchmarks/peers/generate_peer.py) needs:
// the model (HF directory), the prompts, and the tokens dnpo generated, to compare.
// Usage: dnpo_generate_bench [--vocab V --hidden C --layers L --batch B --prompt-len P
//                             --new-tokens N --dtype fp32|bf16 --reps R --threads T
//                             --dump DIR --profile FILE]
// --dtype bf16 decodes with the projection matrices in bf16 (LlamaModel::prepare_for_decoding, as
// sample.dtype = "bf16" does); --dump still writes the fp32 model.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/profiler_legacy.h>

#include "dnpo/common/allocator.h"
#include "dnpo/common/log.h"
#include "dnpo/common/main.h"
#include "dnpo/config/config.h"
#include "dnpo/model/hf_io.h"
#include "dnpo/model/llama.h"
#include "dnpo/model/safetensors.h"
#include "dnpo/model/sampler.h"

namespace {

int run_bench(int argc, char** argv) {
  dnpo::configure_heap();  // as dnpo_dist does
  CLI::App app{"dnpo generation benchmark"};
  int vocab = 260, hidden = 128, layers = 4, batch = 16, prompt_len = 16, new_tokens = 32;
  int reps = 5, threads = 1;
  std::string dtype = "fp32";
  std::string dump;
  std::string profile;
  app.add_option("--vocab", vocab);
  app.add_option("--hidden", hidden);
  app.add_option("--layers", layers);
  app.add_option("--batch", batch, "prompts, decoded together");
  app.add_option("--prompt-len", prompt_len);
  app.add_option("--new-tokens", new_tokens);
  app.add_option("--dtype", dtype, "the dtype of the projection matrices while decoding")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--reps", reps, "timed repetitions (after one warm-up)");
  app.add_option("--threads", threads);
  app.add_option("--dump", dump, "write the model, prompts and generated tokens into DIR");
  app.add_option("--profile", profile, "write LibTorch's op trace of the timed runs (chrome JSON)");
  CLI11_PARSE(app, argc, argv);
  dnpo::log::init(0, "warn");
  at::set_num_threads(threads);

  dnpo::config::ModelConfig mcfg;
  mcfg.vocab_size = vocab;
  mcfg.hidden_size = hidden;
  mcfg.intermediate_size = hidden * 11 / 4;
  mcfg.num_hidden_layers = layers;
  mcfg.num_attention_heads = std::max(1, hidden / 32);
  mcfg.num_key_value_heads = mcfg.num_attention_heads;
  const dnpo::model::LlamaModel model(mcfg, 1);
  auto decoding = model.clone();
  decoding.prepare_for_decoding(dnpo::model::decoding_dtype(dtype));
  // Prompts of equal length (no padding), token ids spread over the vocabulary.
  std::vector<dnpo::model::GenerationRequest> requests;
  auto prompts = at::empty({batch, prompt_len}, at::kLong);
  for (int b = 0; b < batch; ++b) {
    std::vector<std::int64_t> ids;
    for (int t = 0; t < prompt_len; ++t) {
      ids.push_back((b * 131 + t * 17 + 3) % vocab);
      prompts[b][t] = ids.back();
    }
    requests.push_back({ids, static_cast<std::uint64_t>(b)});
  }
  dnpo::config::SampleConfig sample;
  sample.temperature = 0;  // greedy: both sides must produce the same tokens
  sample.max_new_tokens = new_tokens;
  sample.batch_size = batch;
  constexpr std::int64_t kNoEos = -1;  // every row decodes all new_tokens: a fixed amount of work
  const auto run = [&] {
    return dnpo::model::generate(decoding, requests, sample, kNoEos, 0, {0, 0});
  };
  const auto first = run();  // warm-up
  std::vector<double> ms;
  std::optional<torch::autograd::profiler::RecordProfile> tracing;
  if (!profile.empty()) {
    tracing.emplace(profile);
  }
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    run();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  tracing.reset();
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  if (!dump.empty()) {
    std::filesystem::create_directories(dump);
    dnpo::model::save_hf_model(dump + "/policy", model);
    auto generated = at::empty({batch, new_tokens}, at::kLong);
    for (int b = 0; b < batch; ++b) {
      for (int t = 0; t < new_tokens; ++t) {
        generated[b][t] = first[static_cast<std::size_t>(b)].tokens.at(static_cast<std::size_t>(t));
      }
    }
    // The first new token's logits, to compare values and not only tokens.
    at::Tensor first_logits;
    {
      const at::NoGradGuard no_grad;
      const auto states = decoding.forward_hidden(prompts, at::ones_like(prompts));
      first_logits = decoding.logits(states.select(1, prompt_len - 1)).contiguous();
    }
    dnpo::model::write_safetensors(
        dump + "/generation.safetensors",
        {{"prompts", prompts}, {"generated", generated}, {"first_logits", first_logits}});
  }
  const nlohmann::json config = {{"vocab", vocab},
                                 {"hidden", hidden},
                                 {"layers", layers},
                                 {"batch", batch},
                                 {"prompt_len", prompt_len},
                                 {"new_tokens", new_tokens},
                                 {"threads", threads},
                                 {"dtype", dtype},
                                 {"heap", dnpo::heap_name()},
                                 {"params", model.num_parameters()}};
  std::cout << nlohmann::json{{"name", "generate.greedy"},
                              {"config", config},
                              {"metric", "time_median"},
                              {"value", median},
                              {"unit", "ms"},
                              {"tokens_per_s", batch * new_tokens / (median / 1e3)}}
                   .dump()
            << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return dnpo::guarded_main("dnpo_generate_bench", argc, argv, run_bench);
}
