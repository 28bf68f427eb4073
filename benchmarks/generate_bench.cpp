// Generation benchmark: greedy KV-cache decoding of a batch of prompts with a random Llama
// (model::generate, whole parameters, one process). Prints the median wall time and tokens/s.
// With --dump DIR it first writes what the Python peer (benchmarks/peers/generate_peer.py) needs:
// the model (HF directory), the prompts, and the tokens dnpo generated, to compare.
// Usage: dnpo_generate_bench [--vocab V --hidden C --layers L --batch B --prompt-len P
//                             --new-tokens N --dtype fp32|bf16 --batching continuous|static
//                             --reps R --threads T --dump DIR --profile FILE]
//        dnpo_generate_bench --lengths FILE [--vocab V --hidden C --layers L --batch B ...]
// --lengths FILE (JSON lines {prompt, answer} of benchmarks/paper_lengths.py generation) times
// static against continuous batching, interleaved: each prompt has its length and its answer
// stops at its length (a per-prompt limit, no EOS), so both do the same useful work.
// --dtype bf16 decodes with the projection matrices in bf16 (LlamaModel::prepare_for_decoding, as
// sample.dtype = "bf16" does); --dump still writes the fp32 model.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/profiler_legacy.h>

#include "dnpo/common/allocator.h"
#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "dnpo/common/main.h"
#include "dnpo/config/config.h"
#include "dnpo/model/hf_io.h"
#include "dnpo/model/llama.h"
#include "dnpo/model/safetensors.h"
#include "dnpo/model/sampler.h"

namespace {

using dnpo::model::GenerationRequest;

dnpo::config::ModelConfig bench_model(int vocab, int hidden, int layers) {
  dnpo::config::ModelConfig mcfg;
  mcfg.vocab_size = vocab;
  mcfg.hidden_size = hidden;
  mcfg.intermediate_size = hidden * 11 / 4;
  mcfg.num_hidden_layers = layers;
  mcfg.num_attention_heads = std::max(1, hidden / 32);
  mcfg.num_key_value_heads = mcfg.num_attention_heads;
  return mcfg;
}

/// Prompts of the lengths in `path` (token ids spread over the vocabulary), each with its answer
/// length as its limit; `longest` gets the longest answer.
std::vector<GenerationRequest> requests_of_lengths(const std::string& path,
                                                   int vocab,
                                                   int& longest) {
  std::ifstream in(path);
  DNPO_CHECK(in.good(), "cannot read {}", path);
  std::vector<GenerationRequest> requests;
  std::string line;
  while (std::getline(in, line)) {
    const auto lengths = nlohmann::json::parse(line);
    const int prompt = lengths.at("prompt").get<int>();
    const int answer = lengths.at("answer").get<int>();
    const auto id = requests.size();
    std::vector<std::int64_t> ids;
    for (int t = 0; t < prompt; ++t) {
      ids.push_back(static_cast<std::int64_t>((id * 131 + static_cast<std::size_t>(t) * 17 + 3) %
                                              static_cast<std::size_t>(vocab)));
    }
    requests.push_back({ids, id, answer});
    longest = std::max(longest, answer);
  }
  return requests;
}

/// Static against continuous batching on prompts and answers of the given lengths.
int compare_batching(const std::string& lengths_path,
                     const dnpo::config::ModelConfig& mcfg,
                     int batch,
                     int refill_rows,
                     int reps,
                     int threads) {
  const dnpo::model::LlamaModel model(mcfg, 1);
  auto decoding = model.clone();
  decoding.prepare_for_decoding(at::kFloat);
  int longest = 0;
  const auto requests = requests_of_lengths(lengths_path, mcfg.vocab_size, longest);
  dnpo::config::SampleConfig sample;
  sample.temperature = 0;
  sample.max_new_tokens = longest;
  sample.batch_size = batch;
  sample.refill_rows = refill_rows;
  constexpr std::int64_t kNoEos = -1;
  std::map<std::string, std::vector<double>> ms;
  std::map<std::string, std::vector<dnpo::model::Generation>> answers;
  for (int r = 0; r <= reps; ++r) {  // the first round warms up
    for (const std::string batching : {"static", "continuous"}) {
      sample.batching = batching;
      const auto start = std::chrono::steady_clock::now();
      answers[batching] = dnpo::model::generate(decoding, requests, sample, kNoEos, 0, {0, 0});
      const auto elapsed = std::chrono::steady_clock::now() - start;
      if (r > 0) {
        ms[batching].push_back(std::chrono::duration<double, std::milli>(elapsed).count());
      }
    }
  }
  std::size_t tokens = 0, prompt_tokens = 0, identical = 0;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    tokens += answers["static"][i].tokens.size();
    prompt_tokens += requests[i].prompt.size();
    identical += answers["static"][i].tokens == answers["continuous"][i].tokens ? 1 : 0;
  }
  const nlohmann::json config = {{"vocab", mcfg.vocab_size},
                                 {"hidden", mcfg.hidden_size},
                                 {"layers", mcfg.num_hidden_layers},
                                 {"batch", batch},
                                 {"refill_rows", refill_rows},
                                 {"prompts", requests.size()},
                                 {"prompt_tokens", prompt_tokens},
                                 {"answer_tokens", tokens},
                                 {"lengths", lengths_path},
                                 {"threads", threads},
                                 {"reps", reps},
                                 {"heap", dnpo::heap_name()},
                                 {"params", model.num_parameters()}};
  nlohmann::json result = {{"name", "generate.batching"}, {"config", config}};
  for (const auto& [batching, times] : ms) {
    const auto sorted = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v;
    }(times);
    const double median = sorted[sorted.size() / 2];
    result[batching] = {{"ms", times},
                        {"median_ms", median},
                        {"answer_tokens_per_s", static_cast<double>(tokens) / (median / 1e3)}};
  }
  result["speedup"] =
      result["static"]["median_ms"].get<double>() / result["continuous"]["median_ms"].get<double>();
  result["identical_answers"] = identical;
  std::cout << result.dump() << "\n";
  return 0;
}

int run_bench(int argc, char** argv) {
  dnpo::configure_heap();  // as dnpo_dist does
  CLI::App app{"dnpo generation benchmark"};
  int vocab = 260, hidden = 128, layers = 4, batch = 16, prompt_len = 16, new_tokens = 32;
  int reps = 5, threads = 1, refill_rows = 1;
  std::string dtype = "fp32";
  std::string dump;
  std::string profile;
  std::string batching = "continuous";
  std::string lengths;
  app.add_option("--vocab", vocab);
  app.add_option("--hidden", hidden);
  app.add_option("--layers", layers);
  app.add_option("--batch", batch, "prompts, decoded together");
  app.add_option("--prompt-len", prompt_len);
  app.add_option("--new-tokens", new_tokens);
  app.add_option("--dtype", dtype, "the dtype of the projection matrices while decoding")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--batching", batching)->check(CLI::IsMember({"continuous", "static"}));
  app.add_option("--refill-rows", refill_rows, "sample.refill_rows for --lengths")
      ->check(CLI::PositiveNumber);
  app.add_option("--lengths", lengths, "time static against continuous batching on these lengths");
  app.add_option("--reps", reps, "timed repetitions (after one warm-up)")
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", threads);
  app.add_option("--dump", dump, "write the model, prompts and generated tokens into DIR");
  app.add_option("--profile", profile, "write LibTorch's op trace of the timed runs (chrome JSON)");
  CLI11_PARSE(app, argc, argv);
  dnpo::log::init(0, "warn");
  at::set_num_threads(threads);
  const auto mcfg = bench_model(vocab, hidden, layers);
  if (!lengths.empty()) {
    return compare_batching(lengths, mcfg, batch, refill_rows, reps, threads);
  }
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
  sample.batching = batching;
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
                                 {"batching", batching},
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
