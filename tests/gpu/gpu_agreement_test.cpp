// CUDA against CPU for the same computations: one SPIN and one NPO step (loss and every gradient)
// in fp32 and bf16, the counter-based noise draws, fused against explicit attention, and greedy
// generation. Label gpu: run by launch/device-check; skipped where LibTorch sees no CUDA device.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dnpo/common/counter_rng.h"
#include "dnpo/config/config.h"
#include "dnpo/model/llama.h"
#include "dnpo/model/noise_head.h"
#include "dnpo/model/random.h"
#include "dnpo/model/sampler.h"
#include "pair_step.h"

namespace dnpo {
namespace {

// The device compared with the CPU: CUDA, or DNPO_GPU_TEST_DEVICE (e.g. "cpu", to check this
// test's own logic on a machine without a GPU).
at::Device device_under_test() {
  const char* name = std::getenv("DNPO_GPU_TEST_DEVICE");
  return name != nullptr ? at::Device(name) : at::Device(at::kCUDA, 0);
}

#define DNPO_REQUIRE_CUDA()                                \
  do {                                                     \
    if (device_under_test().is_cuda() && !at::hasCUDA()) { \
      GTEST_SKIP() << "LibTorch sees no CUDA device";      \
    }                                                      \
  } while (false)

config::ModelConfig small_model() {
  config::ModelConfig cfg;
  cfg.vocab_size = 512;
  cfg.hidden_size = 128;
  cfg.intermediate_size = 256;
  cfg.num_hidden_layers = 2;
  cfg.num_attention_heads = 8;
  cfg.num_key_value_heads = 2;
  cfg.max_position_embeddings = 128;
  cfg.initializer_range = 0.05;
  return cfg;
}

config::NpoConfig npo_config() {
  config::NpoConfig npo;
  npo.head_init = "normal";
  npo.head_init_std = 0.05;
  npo.chunk_positions = 40;  // several chunks per step
  return npo;
}

struct StepResult {
  double total = 0;
  double model_loss = 0;
  std::vector<at::Tensor> grads;  // policy then head, fp32 on the CPU (zeros where none)
};

StepResult run_step(const at::Device& device, at::ScalarType dtype, bool npo) {
  const auto cfg = small_model();
  auto policy = model::LlamaModel(cfg, 11).to(device);
  auto reference = model::LlamaModel(cfg, 12).to(device);  // differs, so margins are not zero
  policy.set_compute_dtype(dtype);
  reference.set_compute_dtype(dtype);
  policy.set_requires_grad(true);
  const auto npo_cfg = npo_config();
  auto head = model::NoiseHead(npo_cfg, cfg.hidden_size, cfg.vocab_size, 13).to(device);
  std::vector<at::Tensor> params = policy.parameters();
  for (const auto& [name, tensor] : head.named_parameters()) {
    tensor.requires_grad_(true);
    params.push_back(tensor);
  }
  const auto batch = test::random_pairs(4, 48, 12, cfg.vocab_size, 5).to(device);
  const auto objective =
      test::pair_objective(policy, reference, npo ? &head : nullptr, npo_cfg, batch, 0.1, 7, 3);
  objective.total.backward();
  StepResult out;
  out.total = objective.total.item<double>();
  out.model_loss = objective.model_loss.item<double>();
  for (const auto& p : params) {
    out.grads.push_back(p.grad().defined() ? p.grad().to(at::kCPU, at::kFloat)
                                           : at::zeros(p.sizes(), at::kFloat));
  }
  return out;
}

double max_abs(const at::Tensor& t) {
  return t.numel() == 0 ? 0.0 : t.abs().max().item<double>();
}

at::Tensor flat(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> views;
  for (const auto& t : tensors) {
    views.push_back(t.reshape({-1}));
  }
  return at::cat(views);
}

void expect_fp32_agreement(const StepResult& cpu, const StepResult& cuda) {
  EXPECT_NEAR(cuda.total, cpu.total, 1e-5 * (1.0 + std::abs(cpu.total)));
  EXPECT_NEAR(cuda.model_loss, cpu.model_loss, 1e-5 * (1.0 + std::abs(cpu.model_loss)));
  ASSERT_EQ(cuda.grads.size(), cpu.grads.size());
  for (std::size_t i = 0; i < cpu.grads.size(); ++i) {
    const auto scale = max_abs(cpu.grads[i]);
    EXPECT_LE(max_abs(cuda.grads[i] - cpu.grads[i]), 1e-4 * scale + 1e-7) << "parameter " << i;
  }
}

TEST(GpuAgreement, SpinStepInFp32MatchesCpu) {
  DNPO_REQUIRE_CUDA();
  const auto cpu = run_step(at::kCPU, at::kFloat, false);
  const auto cuda = run_step(device_under_test(), at::kFloat, false);
  ASSERT_GT(max_abs(flat(cpu.grads)), 0.0);
  expect_fp32_agreement(cpu, cuda);
}

TEST(GpuAgreement, NpoStepInFp32MatchesCpu) {
  DNPO_REQUIRE_CUDA();
  const auto cpu = run_step(at::kCPU, at::kFloat, true);
  const auto cuda = run_step(device_under_test(), at::kFloat, true);
  // The noise head's gradient is part of the comparison and must not be empty.
  ASSERT_GT(max_abs(cpu.grads.back()), 0.0);
  expect_fp32_agreement(cpu, cuda);
}

TEST(GpuAgreement, NpoStepInBf16MatchesCpuWithinBf16Tolerance) {
  DNPO_REQUIRE_CUDA();
  const auto cpu = run_step(at::kCPU, at::kFloat, true);
  const auto cuda = run_step(device_under_test(), at::kBFloat16, true);
  // bf16 keeps 8 mantissa bits; the losses are sums of O(100) log-probs.
  EXPECT_NEAR(cuda.total, cpu.total, 3e-2 * (1.0 + std::abs(cpu.total)));
  EXPECT_NEAR(cuda.model_loss, cpu.model_loss, 3e-2 * (1.0 + std::abs(cpu.model_loss)));
  const auto a = flat(cpu.grads);
  const auto b = flat(cuda.grads);
  const auto cosine =
      (a * b).sum().item<double>() / (a.norm().item<double>() * b.norm().item<double>());
  EXPECT_GT(cosine, 0.99);
  EXPECT_NEAR(b.norm().item<double>() / a.norm().item<double>(), 1.0, 0.05);
}

TEST(GpuAgreement, NoiseDrawsOnTheGpuMatchTheCpu) {
  DNPO_REQUIRE_CUDA();
  std::vector<std::uint64_t> keys;
  for (std::uint64_t i = 0; i < 33; ++i) {
    keys.push_back(draw_key(5, 1, 2, i, 3 * i, RandomStream::kNoiseEps1));
  }
  const auto cpu = model::counter_normal_rows(keys, 32001);
  const auto cuda = model::counter_normal_rows(keys, 32001, device_under_test());
  ASSERT_EQ(cuda.device(), device_under_test());
  // Same uniforms bit for bit; log/sqrt/cos/sin may differ in the last ulp.
  EXPECT_LE(max_abs(cuda.cpu() - cpu), 1e-5);
}

TEST(GpuAgreement, FusedAttentionMatchesTheExplicitPath) {
  DNPO_REQUIRE_CUDA();
  if (!model::fused_attention_available()) {
    GTEST_SKIP() << "this LibTorch has no scaled_dot_product_attention with GQA";
  }
  const auto cfg = small_model();
  const auto m = model::LlamaModel(cfg, 21).to(device_under_test());
  const auto right =
      test::random_pairs(3, 40, 8, cfg.vocab_size, 9).to(device_under_test());  // causal path
  auto left_mask = right.attention_mask.flip({1});                              // mask path
  for (const auto& [ids, mask] : {std::pair{right.input_ids, right.attention_mask},
                                  std::pair{right.input_ids.flip({1}), left_mask}}) {
    model::set_fused_attention(false);
    const auto expected = m.forward_hidden(ids, mask);
    model::set_fused_attention(true);
    const auto fused = m.forward_hidden(ids, mask);
    const auto real = mask.unsqueeze(-1).to(at::kBool);
    EXPECT_LE(max_abs((fused - expected).masked_fill(real.logical_not(), 0)), 1e-4);
  }
}

TEST(GpuAgreement, GreedyGenerationMatchesCpu) {
  DNPO_REQUIRE_CUDA();
  auto cfg = small_model();
  cfg.initializer_range = 0.2;  // well separated logits: argmax ties are not a question
  const model::LlamaModel cpu_model(cfg, 31);
  const auto cuda_model = cpu_model.to(device_under_test());
  std::vector<model::GenerationRequest> requests;
  for (std::uint64_t i = 0; i < 5; ++i) {
    std::vector<std::int64_t> prompt;
    for (std::uint64_t t = 0; t < 3 + 2 * i; ++t) {
      prompt.push_back(static_cast<std::int64_t>(1 + (i * 37 + t * 11) % 500));
    }
    requests.push_back({prompt, i});
  }
  config::SampleConfig sample;
  sample.temperature = 0.0;
  sample.max_new_tokens = 12;
  sample.batch_size = 5;
  const auto cpu = model::generate(cpu_model, requests, sample, 0, 0, {1, 0});
  const auto cuda = model::generate(cuda_model, requests, sample, 0, 0, {1, 0});
  ASSERT_EQ(cuda.size(), cpu.size());
  for (std::size_t i = 0; i < cpu.size(); ++i) {
    EXPECT_EQ(cuda[i].tokens, cpu[i].tokens) << "prompt " << i;
  }
}

}  // namespace
}  // namespace dnpo
