// The whole trainer on a GPU: SPIN and NPO optimizer steps of dnpo's Trainer (FSDP units over the
// NCCL process group at world size 1, bf16 compute over fp32 masters, AdamW) for a Llama-style
// model, with MFU against the card's dense bf16 peak; optionally a LibTorch (Kineto) trace of a
// short NPO run, to show the NCCL streams and the events the compute stream waits on.
//
//   dnpo_gpu_train_bench [--model 1b|small] [--pairs 48] [--batch 8] [--micro 4] [--length 1024]
//                        [--losses spin,npo] [--peak-tflops 989] [--trace PATH]
//
// One JSON line per result. FLOPs per token (PaLM's convention): 6·N + 12·L·d·T for the policy's
// forward and backward, 2·N + 4·L·d·T for the reference's forward; N counts every matrix of the
// blocks and the lm_head. NPO's noise head is not counted, so its MFU is the useful-FLOP rate.
#include <algorithm>
#include <cstdint>
#include <iostream>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#if DNPO_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif
#if DNPO_WITH_CUDA && DNPO_TORCH2
#include <torch/csrc/autograd/profiler_kineto.h>
#endif

#include "dnpo/data/tokenizer.h"
#include "dnpo/dist/comm.h"
#include "dnpo/dist/mpi_env.h"
#include "dnpo/model/llama.h"
#include "dnpo/train/trainer.h"

namespace {

using Json = nlohmann::json;
using dnpo::config::RunConfig;

struct Options {
  std::string model = "1b";
  int pairs = 48;
  int batch = 8;
  int micro = 4;
  int length = 1024;
  std::vector<std::string> losses{"spin", "npo"};
  double peak_tflops = 0;
  std::string trace;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    const std::string value = argv[i + 1];
    if (key == "--model") {
      o.model = value;
    } else if (key == "--pairs") {
      o.pairs = std::stoi(value);
    } else if (key == "--batch") {
      o.batch = std::stoi(value);
    } else if (key == "--micro") {
      o.micro = std::stoi(value);
    } else if (key == "--length") {
      o.length = std::stoi(value);
    } else if (key == "--peak-tflops") {
      o.peak_tflops = std::stod(value);
    } else if (key == "--trace") {
      o.trace = value;
    } else if (key == "--losses") {
      o.losses.clear();
      for (std::size_t at = 0; at <= value.size();) {
        const auto comma = std::min(value.find(',', at), value.size());
        o.losses.push_back(value.substr(at, comma - at));
        at = comma + 1;
      }
    } else {
      throw std::runtime_error("gpu_train_bench: unknown option " + key);
    }
  }
  return o;
}

void emit(Json j) {
  j["bench"] = "gpu_train";
  std::cout << j.dump() << std::endl;  // flushed: a cut-off run keeps what it printed
}

RunConfig run_config(const Options& o, const std::string& loss) {
  RunConfig cfg;
  auto& m = cfg.model;
  if (o.model == "1b") {  // TinyLlama-1.1B's shape
    m.vocab_size = 32000;
    m.hidden_size = 2048;
    m.intermediate_size = 5632;
    m.num_hidden_layers = 22;
    m.num_attention_heads = 32;
    m.num_key_value_heads = 4;
  } else {
    m.vocab_size = 1024;
    m.hidden_size = 256;
    m.intermediate_size = 512;
    m.num_hidden_layers = 2;
    m.num_attention_heads = 8;
    m.num_key_value_heads = 2;
  }
  m.max_position_embeddings = 2 * o.length;
  m.tie_word_embeddings = false;
  m.initializer_range = 0.02;
  cfg.run.device = "cuda";
  cfg.run.log_every = 1000000;
  cfg.chat.prompt_template = "{prompt}";
  cfg.data.max_length = o.length;
  cfg.data.max_prompt_length = o.length / 8;
  cfg.train.loss = loss;
  cfg.train.dtype = "bf16";
  cfg.train.batch_size = o.batch;
  cfg.train.micro_batch_size = o.micro;
  cfg.train.epochs = 1;
  cfg.train.lr = 1e-5;
  cfg.train.warmup_ratio = 0.0;
  cfg.npo.chunk_positions = 1024;
  cfg.dist.reshard_after_forward = "false";  // one rank: units stay gathered for the step
  return cfg;
}

// Pairs whose prompt + answer fill data.max_length exactly (byte tokenizer: one id per byte).
std::vector<dnpo::data::PairRecord> pairs(const Options& o) {
  std::vector<dnpo::data::PairRecord> out;
  const auto prompt_len = static_cast<std::size_t>(o.length / 8);
  const auto answer_len = static_cast<std::size_t>(o.length) - prompt_len + 64;  // truncated
  for (int i = 0; i < o.pairs; ++i) {
    std::string prompt(prompt_len, 'a' + static_cast<char>(i % 26));
    std::string chosen(answer_len, 'c');
    std::string rejected(answer_len, 'r');
    chosen[0] = static_cast<char>('A' + i % 26);
    out.push_back({std::to_string(i), prompt, chosen, rejected, {}, {}});
  }
  return out;
}

double matmul_params(const dnpo::config::ModelConfig& m) {
  const double d = m.hidden_size;
  const double kv = d * m.num_key_value_heads / m.num_attention_heads;
  const double block = d * d * 2 + d * kv * 2 + 3 * d * m.intermediate_size;
  return block * m.num_hidden_layers + d * m.vocab_size;
}

double peak_gib() {
#if DNPO_WITH_CUDA
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
  return static_cast<double>(stats.allocated_bytes[0].peak) / (1024.0 * 1024.0 * 1024.0);
#else
  return 0;
#endif
}

void reset_peak() {
#if DNPO_WITH_CUDA
  c10::cuda::CUDACachingAllocator::resetPeakStats(0);
#endif
}

// One stage of the Trainer on a fresh policy; returns its summary.
dnpo::train::TrainSummary run_stage(const Options& o,
                                    const std::string& loss,
                                    dnpo::dist::Comm& comm,
                                    int num_pairs) {
  const auto cfg = run_config(o, loss);
  const auto device = comm.device();
  const auto& model_cfg = cfg.model;
  dnpo::train::ShardedLlama policy(
      model_cfg,
      [&](const std::string& name) {
        const auto shape = dnpo::model::parameter_shape(model_cfg, name);
        const auto on = at::TensorOptions().device(device);
        return name.find("norm") != std::string::npos ? at::ones(shape, on)
                                                      : at::randn(shape, on) * 0.02;
      },
      comm,
      dnpo::train::unit_precision(cfg, device),
      true,
      false);
  const dnpo::data::ByteTokenizer tokenizer;
  dnpo::train::MetricsWriter metrics;
  dnpo::train::Trainer trainer(cfg, policy, tokenizer, metrics, comm);
  auto data = pairs(o);
  data.resize(static_cast<std::size_t>(num_pairs));
  return trainer.train_preference(data);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    dnpo::dist::MpiEnv mpi(&argc, &argv);
    auto o = parse(argc, argv);
    at::set_num_threads(8);
    dnpo::config::DistConfig dist_cfg;
    dnpo::dist::Comm comm(mpi, dist_cfg, "cuda");
    at::zeros({1}, comm.device());  // the caching allocator's statistics exist after a first use
#if DNPO_WITH_CUDA
    if (o.peak_tflops == 0) {
      const std::string card = at::cuda::getDeviceProperties(0)->name;  // NOLINT
      o.peak_tflops = card.find("PCIe") != std::string::npos ? 756.0 : 989.0;
    }
#endif
    const auto model_cfg = run_config(o, "spin").model;
    const double n = matmul_params(model_cfg);
    const double attn = 12.0 * model_cfg.num_hidden_layers * model_cfg.hidden_size * o.length;
    const double flops_per_pair_token = 2 * ((6 * n + attn) + (2 * n + attn / 3));  // 2 sequences
    emit({{"name", "config"},
          {"model", o.model},
          {"matmul_params", n},
          {"pairs_per_step", o.batch},
          {"micro_pairs", o.micro},
          {"length", o.length},
          {"backend", comm.backend()},
          {"peak_tflops", o.peak_tflops}});
    std::map<std::string, double> median_ms;
    for (const auto& loss : o.losses) {
      reset_peak();
      const auto s = run_stage(o, loss, comm, o.pairs);
      auto ms = s.step_ms;
      ms.erase(ms.begin());  // the first step includes cuBLAS / NCCL / allocator warm-up
      std::sort(ms.begin(), ms.end());
      const double median = ms.empty() ? 0 : ms[ms.size() / 2];
      median_ms[loss] = median;
      const double tokens_per_step = static_cast<double>(o.batch) * o.length;
      const double tflops = flops_per_pair_token * tokens_per_step / (median / 1e3) / 1e12;
      emit({{"name", "trainer_step"},
            {"loss", loss},
            {"steps", s.steps},
            {"step_ms_median", median},
            {"step_ms", s.step_ms},
            {"pair_tokens_per_s", tokens_per_step / (median / 1e3)},
            {"tflops", tflops},
            {"mfu", tflops / o.peak_tflops},
            {"first_loss", s.first_loss},
            {"last_loss", s.last_loss},
            {"peak_gib", peak_gib()}});
    }
    if (median_ms.count("spin") != 0 && median_ms.count("npo") != 0 && median_ms["spin"] > 0) {
      emit({{"name", "npo_over_spin"}, {"time_ratio", median_ms["npo"] / median_ms["spin"]}});
    }
#if DNPO_WITH_CUDA && DNPO_TORCH2
    if (!o.trace.empty()) {
      namespace prof = torch::autograd::profiler;
      using torch::profiler::impl::ActivityType;
      const torch::profiler::impl::ProfilerConfig config(
          torch::profiler::impl::ProfilerState::KINETO);
      const std::set<ActivityType> activities{ActivityType::CPU, ActivityType::CUDA};
      prof::prepareProfiler(config, activities);
      prof::enableProfiler(config, activities);
      run_stage(o, "npo", comm, 2 * o.batch);  // two steps
      c10::cuda::device_synchronize();
      prof::disableProfiler()->save(o.trace);
      emit({{"name", "trace"}, {"path", o.trace}});
    }
#endif
    return 0;
  } catch (const std::exception& e) {
    const std::string what = e.what();
    emit({{"name", "error"}, {"error", what.substr(0, what.find('\n'))}});
    return 1;
  }
}
