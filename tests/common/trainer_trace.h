// A tiny training run shared by the tests that compare one trainer with another (FSDP at np
// ranks against one process; the CUDA trainer against the CPU one): the config, the records, and
// a run's trace (losses, full gradients per step, the parameter change), all on the host in fp32.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "dnpo/data/tokenizer.h"
#include "dnpo/dist/comm.h"
#include "dnpo/train/trainer.h"

namespace dnpo::train::fixture {

// A tiny untied model; 2 micro-batches of 2 per step and per rank at np 4 (global batch 16).
inline config::RunConfig tiny_run(const std::string& loss) {
  config::RunConfig cfg;
  cfg.run.seed = 21;
  cfg.run.log_every = 1000;
  cfg.model.vocab_size = 260;
  cfg.model.hidden_size = 32;
  cfg.model.intermediate_size = 64;
  cfg.model.num_hidden_layers = 2;
  cfg.model.num_attention_heads = 4;
  cfg.model.num_key_value_heads = 2;
  cfg.model.max_position_embeddings = 128;
  cfg.model.tie_word_embeddings = false;
  cfg.model.initializer_range = 0.1;
  cfg.chat.prompt_template = "Q:{prompt}\nA:";
  cfg.data.max_length = 48;
  cfg.data.max_prompt_length = 24;
  cfg.train.loss = loss;
  cfg.train.batch_size = 16;
  cfg.train.micro_batch_size = 2;
  cfg.train.epochs = 2;  // 20 samples: steps of 16, 4, 16, 4 (short batches → padding repeats)
  cfg.train.lr = 3e-3;
  cfg.train.warmup_ratio = 0.0;
  cfg.loss.beta = 0.5;
  return cfg;
}

inline std::vector<data::PromptRecord> sft_records() {
  std::vector<data::PromptRecord> out;
  for (int i = 0; i < 20; ++i) {
    const auto a = std::to_string(i * 7 % 13);
    const auto b = std::to_string(i * 3 % 11);
    std::string prompt = a;
    prompt.append("+").append(b);
    out.push_back({std::to_string(i), prompt, std::to_string(std::stoi(a) + std::stoi(b)), "", ""});
  }
  return out;
}

inline std::vector<data::PairRecord> pair_records() {
  std::vector<data::PairRecord> out;
  for (int i = 0; i < 21; ++i) {
    const auto a = std::to_string(i * 5 % 17);
    const auto right = std::string(a.rbegin(), a.rend()) + "x" + std::to_string(i % 4);
    const auto wrong = i == 6 ? right : a + "y";  // pair 6 identical: skipped (20 remain)
    out.push_back(
        {std::to_string(i), "rev " + a + "x" + std::to_string(i % 4), right, wrong, {}, {}});
  }
  return out;
}

struct Trace {
  std::vector<double> losses;
  std::vector<at::Tensor> grads;  // per step: every trained tensor's full gradient, flattened
  at::Tensor change;              // θ_N − θ_0 of the policy, flattened
};

// observe_gradients: gather every step's full gradients (a collective of its own).
inline Trace train(const config::RunConfig& cfg, dist::Comm& comm, bool observe_gradients = true) {
  model::LlamaModel policy(cfg.model, cfg.run.seed);
  const auto before = policy.clone();
  const data::ByteTokenizer tokenizer;
  MetricsWriter metrics;
  Trainer trainer(cfg, policy, tokenizer, metrics, comm);
  Trace trace;
  if (observe_gradients) {
    trainer.set_gradient_observer(
        [&trace](std::int64_t, const std::vector<dist::ShardedUnit*>& units) {
          std::vector<at::Tensor> flat;
          for (auto* unit : units) {
            for (const auto& g : unit->gather_full(true)) {  // collective
              flat.push_back(g.reshape({-1}).to(at::kCPU, at::kFloat));
            }
          }
          trace.grads.push_back(at::cat(flat));
        });
  }
  const auto summary = cfg.train.loss == "sft" ? trainer.train_sft(sft_records())
                                               : trainer.train_preference(pair_records());
  trace.losses = summary.step_losses;
  std::vector<at::Tensor> delta;
  for (std::size_t i = 0; i < policy.parameters().size(); ++i) {
    delta.push_back((policy.parameters()[i] - before.parameters()[i]).reshape({-1}).cpu());
  }
  trace.change = at::cat(delta);
  return trace;
}

inline double relative(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).norm().item<double>() / std::max(1e-30, b.norm().item<double>());
}

}  // namespace dnpo::train::fixture
