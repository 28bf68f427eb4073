// GPU benchmark for launch/device-check (also runs on the CPU with a small model, as a smoke
// test): policy forward+backward MFU of a ~1.1B Llama (TinyLlama's shape), the SPIN and the NPO
// objective's forward+backward, greedy generation tokens/s, and peak GPU memory of each. One JSON
// line per result, printed as soon as it is measured, so a run cut short still reports.
//
//   dnpo_gpu_bench [--device cuda|cpu] [--model 1b|small] [--dtype bf16|fp32]
//                  [--peak-tflops 989]
//                  [--sections fwdbwd,fwdbwd16,fwdbwd_explicit,spin_npo,generate]
//
// FLOPs follow PaLM's MFU convention: 6·N per token (N = parameters in matmuls: every block
// and the lm_head, not the embedding lookup) + 12·L·C·T for attention, causal half included.
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "dnpo/common/main.h"
#include "dnpo/config/config.h"
#include "dnpo/model/llama.h"
#include "dnpo/model/noise_head.h"
#include "dnpo/model/sampler.h"
#include "dnpo/train/dnpo_loss.h"
#include "pair_step.h"

#if defined(DNPO_WITH_CUDA)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace {

using dnpo::config::ModelConfig;
using dnpo::model::LlamaModel;
using Json = nlohmann::json;

struct Options {
  std::string device = "cuda";
  std::string model = "1b";
  double peak_tflops = 0;  // 0: from the device name
  std::string sections = "fwdbwd,fwdbwd_explicit,spin_npo,generate";
  std::string dtype;  // bf16 | fp32; default bf16 on a GPU, fp32 on the CPU
};

void add_options(CLI::App& app, Options& o) {
  app.add_option("--device", o.device, "cuda or cpu");
  app.add_option("--model", o.model)->check(CLI::IsMember({"1b", "small"}));
  app.add_option("--peak-tflops", o.peak_tflops, "dense peak (0: from the device name)");
  app.add_option("--dtype", o.dtype, "default bf16 on a GPU, fp32 on the CPU")
      ->check(CLI::IsMember({"bf16", "fp32"}));
  app.add_option("--sections", o.sections, "comma-separated");
}

ModelConfig model_config(const std::string& name) {
  ModelConfig cfg;
  if (name == "1b") {  // TinyLlama-1.1B: 22 layers, GQA 32/4, SwiGLU 5632, vocab 32000
    cfg.vocab_size = 32000;
    cfg.hidden_size = 2048;
    cfg.intermediate_size = 5632;
    cfg.num_hidden_layers = 22;
    cfg.num_attention_heads = 32;
    cfg.num_key_value_heads = 4;
    cfg.max_position_embeddings = 2048;
  } else if (name == "small") {
    cfg.vocab_size = 1024;
    cfg.hidden_size = 256;
    cfg.intermediate_size = 512;
    cfg.num_hidden_layers = 2;
    cfg.num_attention_heads = 8;
    cfg.num_key_value_heads = 2;
    cfg.max_position_embeddings = 256;
  } else {
    throw std::runtime_error("gpu_bench: --model is 1b or small, not " + name);
  }
  cfg.initializer_range = 0.02;
  return cfg;
}

void synchronize(const at::Device& device) {
#if defined(DNPO_WITH_CUDA)
  if (device.is_cuda()) {
    c10::cuda::device_synchronize();
  }
#else
  (void)device;
#endif
}

void reset_peak_memory(const at::Device& device) {
#if defined(DNPO_WITH_CUDA)
  if (device.is_cuda()) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(0);
  }
#else
  (void)device;
#endif
}

double peak_memory_gib(const at::Device& device) {
#if defined(DNPO_WITH_CUDA)
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
    return static_cast<double>(stats.allocated_bytes[0].peak) / (1024.0 * 1024.0 * 1024.0);
  }
#else
  (void)device;
#endif
  return 0.0;
}

void emit(Json j) {
  j["bench"] = "gpu";
  std::cout << j.dump() << std::endl;  // flushed: a cut-off run keeps what it printed
}

// Mean seconds per call over `timed` calls after `warmup` ones.
double time_calls(const at::Device& device, int warmup, int timed, const std::function<void()>& f) {
  for (int i = 0; i < warmup; ++i) {
    f();
  }
  synchronize(device);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < timed; ++i) {
    f();
  }
  synchronize(device);
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  return elapsed.count() / timed;
}

// A model with random weights made on the device (init values do not matter for speed, and a
// counter-based init of 1.1B parameters on the host would take longer than the benchmark).
LlamaModel random_model(const ModelConfig& cfg, const at::Device& device, std::uint64_t seed) {
  at::manual_seed(seed);
  const auto c = cfg.hidden_size;
  const auto hd = cfg.hidden_size / cfg.num_attention_heads;
  const auto q = cfg.num_attention_heads * hd;
  const auto kv = cfg.num_key_value_heads * hd;
  const auto inter = cfg.intermediate_size;
  const auto has = [](const std::string& name, const char* part) {
    return name.find(part) != std::string::npos;
  };
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
  dnpo::model::NamedTensors tensors;
  for (const auto& name : dnpo::model::parameter_names(cfg)) {
    if (has(name, "norm")) {
      tensors.emplace_back(name, at::ones({c}, opts));
      continue;
    }
    std::vector<std::int64_t> shape{c, inter};  // down_proj
    if (has(name, "embed_tokens") || has(name, "lm_head")) {
      shape = {cfg.vocab_size, c};
    } else if (has(name, "q_proj")) {
      shape = {q, c};
    } else if (has(name, "k_proj") || has(name, "v_proj")) {
      shape = {kv, c};
    } else if (has(name, "o_proj")) {
      shape = {c, q};
    } else if (has(name, "gate_proj") || has(name, "up_proj")) {
      shape = {inter, c};
    }
    tensors.emplace_back(name, at::randn(shape, opts).mul_(cfg.initializer_range));
  }
  return LlamaModel(cfg, tensors);
}

std::int64_t matmul_parameters(const LlamaModel& m) {
  std::int64_t n = 0;
  for (const auto& [name, tensor] : m.named_parameters()) {
    if (name.find("norm") == std::string::npos && name != "model.embed_tokens.weight") {
      n += tensor.numel();
    }
  }
  if (m.config().tie_word_embeddings) {
    n += m.config().vocab_size * m.config().hidden_size;  // the tied lm_head is still a matmul
  }
  return n;
}

double flops_per_token(const LlamaModel& m, std::int64_t seq) {
  const auto& c = m.config();
  return 6.0 * static_cast<double>(matmul_parameters(m)) +
         12.0 * c.num_hidden_layers * static_cast<double>(c.hidden_size) * static_cast<double>(seq);
}

void clear_grads(const LlamaModel& m) {
  for (const auto& p : m.parameters()) {
    p.mutable_grad() = at::Tensor();
  }
}

// Policy forward + backward of the SFT objective over every position (the lm_head on all rows).
void bench_forward_backward(const Options& o,
                            const at::Device& device,
                            LlamaModel& policy,
                            std::int64_t batch,
                            std::int64_t seq,
                            bool fused,
                            const std::string& label) {
  dnpo::model::set_fused_attention(fused);
  const auto vocab = policy.config().vocab_size;
  const auto ids = at::randint(1, vocab, {batch, seq}, at::TensorOptions(at::kLong).device(device));
  const auto mask = at::ones({batch, seq}, ids.options());
  auto loss_mask = at::ones({batch, seq}, ids.options());
  loss_mask.narrow(1, 0, 1).zero_();
  const double tokens = static_cast<double>(batch * seq);
  reset_peak_memory(device);
  const auto seconds = time_calls(device, 2, 5, [&] {
    clear_grads(policy);
    const auto hidden = policy.forward_hidden(ids, mask);
    const auto loss =
        -dnpo::train::sequence_logprobs(hidden, policy.lm_head(), ids, loss_mask).sum() / tokens;
    loss.backward();
  });
  const double tflops = flops_per_token(policy, seq) * tokens / seconds / 1e12;
  Json j{{"name", label},
         {"batch", batch},
         {"seq", seq},
         {"fused_attention", fused && dnpo::model::fused_attention_available()},
         {"ms", seconds * 1e3},
         {"tokens_per_s", tokens / seconds},
         {"tflops", tflops},
         {"peak_gib", peak_memory_gib(device)}};
  if (o.peak_tflops > 0) {
    j["mfu"] = tflops / o.peak_tflops;
  }
  emit(j);
  clear_grads(policy);
}

// SPIN against NPO: the whole objective's forward + backward for the same pairs.
void bench_spin_npo(const at::Device& device,
                    LlamaModel& policy,
                    const LlamaModel& reference,
                    std::int64_t pairs,
                    std::int64_t seq) {
  dnpo::model::set_fused_attention(true);
  const auto& cfg = policy.config();
  const auto batch = dnpo::test::random_pairs(pairs, seq, seq / 4, cfg.vocab_size, 3).to(device);
  dnpo::config::NpoConfig npo;
  double spin_seconds = 0;
  for (const int chunk : {0, 64, 1024, 4096}) {  // 0: SPIN
    npo.chunk_positions = chunk;
    std::unique_ptr<dnpo::model::NoiseHead> head;
    if (chunk > 0) {
      head = std::make_unique<dnpo::model::NoiseHead>(
          dnpo::model::NoiseHead(npo, cfg.hidden_size, cfg.vocab_size, 5).to(device));
      for (const auto& [name, t] : head->named_parameters()) {
        t.requires_grad_(true);
      }
    }
    reset_peak_memory(device);
    std::uint64_t step = 0;
    const auto seconds = time_calls(device, 1, 3, [&] {
      clear_grads(policy);
      const auto objective =
          dnpo::test::pair_objective(policy, reference, head.get(), npo, batch, 0.1, 1, step++);
      objective.total.backward();
    });
    Json j{{"name", chunk == 0 ? "spin_step_fwd_bwd" : "npo_step_fwd_bwd"},
           {"pairs", pairs},
           {"seq", seq},
           {"ms", seconds * 1e3},
           {"peak_gib", peak_memory_gib(device)}};
    if (chunk == 0) {
      spin_seconds = seconds;
    } else {
      j["chunk_positions"] = chunk;
      j["npo_over_spin"] = seconds / spin_seconds;
    }
    emit(j);
  }
  clear_grads(policy);
}

void bench_generate(const at::Device& device,
                    const LlamaModel& policy,
                    std::int64_t prompts,
                    std::int64_t prompt_len,
                    int new_tokens,
                    const std::string& layout) {
  dnpo::model::set_fused_attention(true);
  std::vector<dnpo::model::GenerationRequest> requests;
  for (std::int64_t i = 0; i < prompts; ++i) {
    std::vector<std::int64_t> prompt;
    for (std::int64_t t = 0; t < prompt_len; ++t) {
      prompt.push_back(1 + (i * 131 + t * 17) % (policy.config().vocab_size - 1));
    }
    requests.push_back({prompt, static_cast<std::uint64_t>(i)});
  }
  dnpo::config::SampleConfig sample;
  sample.temperature = 0.0;
  sample.max_new_tokens = new_tokens;
  sample.batch_size = static_cast<int>(prompts);
  reset_peak_memory(device);
  std::int64_t generated = 0;
  const auto seconds = time_calls(device, 0, 1, [&] {
    // eos -1: no token ends a row early, so every row makes new_tokens tokens
    for (const auto& g : dnpo::model::generate(policy, requests, sample, -1, 0, {1, 0})) {
      generated += static_cast<std::int64_t>(g.tokens.size());
    }
  });
  emit({{"name", "generate_greedy"},
        {"layout", layout},
        {"prompts", prompts},
        {"prompt_len", prompt_len},
        {"new_tokens", new_tokens},
        {"generated", generated},
        {"s", seconds},
        {"tokens_per_s", static_cast<double>(generated) / seconds},
        {"peak_gib", peak_memory_gib(device)}});
}

bool wants(const Options& o, const std::string& section) {
  std::stringstream ss(o.sections);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item == section) {
      return true;
    }
  }
  return false;
}

// Runs one section; an error (out of memory, say) is reported and the next section still runs.
void run_section(const std::string& name, const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    std::string what = e.what();
    emit({{"name", name}, {"error", what.substr(0, what.find('\n'))}});
  }
}

/// The benchmark; main() only adds a last-resort catch around it.
int run_bench(int argc, char** argv) {
  CLI::App app{"dnpo GPU benchmark"};
  Options o;
  add_options(app, o);
  CLI11_PARSE(app, argc, argv);
  const at::Device device(o.device);
  auto options = o;
  Json info{{"name", "device"}, {"device", o.device}, {"model", o.model}};
#if defined(DNPO_WITH_CUDA)
  if (device.is_cuda()) {
    const auto* prop = at::cuda::getCurrentDeviceProperties();
    const std::string card = prop->name;
    info["card"] = card;
    info["sms"] = prop->multiProcessorCount;
    info["memory_gib"] = static_cast<double>(prop->totalGlobalMem) / (1024.0 * 1024.0 * 1024.0);
    if (options.peak_tflops == 0) {  // dense bf16 peak by card (the table)
      options.peak_tflops = card.find("PCIe") != std::string::npos ? 756.0 : 989.0;
    }
  }
#endif
  info["peak_tflops"] = options.peak_tflops;
  emit(info);

  const auto cfg = model_config(o.model);
  const auto init_start = std::chrono::steady_clock::now();
  auto policy = random_model(cfg, device, 1);
  const auto dtype = o.dtype.empty() ? (device.is_cuda() ? "bf16" : "fp32") : o.dtype;
  policy.set_compute_dtype(dtype == "bf16" ? at::kBFloat16 : at::kFloat);
  policy.set_requires_grad(true);
  const std::chrono::duration<double> init_s = std::chrono::steady_clock::now() - init_start;
  emit({{"name", "model"},
        {"parameters", policy.num_parameters()},
        {"matmul_parameters", matmul_parameters(policy)},
        {"compute_dtype", dtype},
        {"init_s", init_s.count()}});
  const bool big = o.model == "1b";
  const std::int64_t seq = big ? 2048 : 128;
  if (wants(o, "fwdbwd")) {
    run_section("policy_fwd_bwd", [&] {
      bench_forward_backward(options, device, policy, big ? 8 : 4, seq, true, "policy_fwd_bwd");
    });
  }
  if (wants(o, "fwdbwd16")) {
    run_section("policy_fwd_bwd_b16", [&] {
      bench_forward_backward(options, device, policy, big ? 16 : 8, seq, true, "policy_fwd_bwd");
    });
  }
  if (wants(o, "fwdbwd_explicit")) {
    // The explicit softmax keeps (B, H, T, T) scores per layer: one sequence at a time.
    run_section("policy_fwd_bwd_explicit_attention", [&] {
      bench_forward_backward(
          options, device, policy, 1, seq, false, "policy_fwd_bwd_explicit_attention");
    });
  }
  if (wants(o, "spin_npo")) {
    run_section("spin_npo", [&] {
      auto reference = policy.clone();
      reference.set_compute_dtype(policy.compute_dtype());
      bench_spin_npo(device, policy, reference, big ? 4 : 2, big ? 1024 : 64);
    });
  }
  if (wants(o, "generate")) {
    run_section("generate_greedy", [&] {
      policy.set_requires_grad(false);
      const std::string masters = "fp32 masters, cast per forward";
      bench_generate(device, policy, big ? 32 : 4, big ? 128 : 16, big ? 128 : 16, masters);
      bench_generate(device, policy, 1, big ? 128 : 16, big ? 64 : 16, masters);  // per step
      // As sample.dtype = "bf16" decodes: the matrices cast once, q/k/v and gate/up stacked.
      auto decoding = policy.clone();  // keeps the compute dtype
      decoding.prepare_for_decoding(at::kBFloat16);
      const std::string prepared = "prepare_for_decoding(bf16)";
      bench_generate(device, decoding, big ? 32 : 4, big ? 128 : 16, big ? 128 : 16, prepared);
      bench_generate(device, decoding, 1, big ? 128 : 16, big ? 64 : 16, prepared);
    });
  }
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  return dnpo::guarded_main("dnpo_gpu_bench", argc, argv, run_bench);
}
