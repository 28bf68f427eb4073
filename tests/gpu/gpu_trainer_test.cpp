// The CUDA trainer (label gpu; run by launch/device-check on the GPU machine, skipped elsewhere):
// NCCL collectives at world size 1, a wait that leaves the host free, and SFT / SPIN / NPO
// training on the GPU through the NCCL process group equal to the CPU trainer (comm null) step by
// step: losses, full gradients and the parameter change.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#if DNPO_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include "dnpo/data/tokenizer.h"
#include "dnpo/dist/comm.h"
#include "dnpo/dist/mpi_env.h"
#include "dnpo/train/trainer.h"

namespace dnpo::train {
namespace {

dist::MpiEnv* g_mpi = nullptr;

#define DNPO_REQUIRE_CUDA()                           \
  do {                                                \
    if (!at::hasCUDA()) {                             \
      GTEST_SKIP() << "LibTorch sees no CUDA device"; \
    }                                                 \
  } while (false)

dist::Comm& nccl() {
  static dist::Comm instance(*g_mpi, config::DistConfig{}, "cuda");
  return instance;
}

TEST(NcclComm, CollectivesAtWorldSizeOne) {
  DNPO_REQUIRE_CUDA();
  auto& comm = nccl();
  EXPECT_EQ(comm.backend(), "nccl");
  ASSERT_TRUE(comm.device().is_cuda());
  const auto on_gpu = at::TensorOptions().device(comm.device());
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    const auto shard = at::arange(1000, on_gpu).to(dtype);
    auto flat = at::zeros({1000}, on_gpu.dtype(dtype));
    comm.all_gather_flat(flat, shard).wait();
    EXPECT_TRUE(at::equal(flat.cpu(), shard.cpu())) << dtype;
    auto out = at::zeros({1000}, on_gpu.dtype(dtype));
    comm.reduce_scatter_flat(out, shard.clone()).wait();
    EXPECT_TRUE(at::equal(out.cpu(), shard.cpu())) << dtype;
  }
  auto host = at::tensor({1.5, -2.0, 3.25}, at::kDouble);  // staged through the GPU
  comm.all_reduce_sum(host).wait();
  EXPECT_TRUE(at::equal(host, at::tensor({1.5, -2.0, 3.25}, at::kDouble)));
  auto on_device = at::full({4}, 7.0, on_gpu);
  comm.broadcast(on_device, 0).wait();
  EXPECT_TRUE(at::equal(on_device.cpu(), at::full({4}, 7.0)));
  EXPECT_EQ(comm.bytes().all_gather_ops, 2);
  EXPECT_EQ(comm.bytes().reduce_scatter_ops, 2);
}

#if DNPO_WITH_CUDA
TEST(NcclComm, WaitMakesTheStreamWaitNotTheHost) {
  DNPO_REQUIRE_CUDA();
  auto& comm = nccl();
  const auto on_gpu = at::TensorOptions().device(comm.device());
  // Queue about a second of matrix products on the current stream, then a collective on its
  // input: wait() must return while the stream is still busy (it orders the streams; the host
  // never blocks), and the collective's result must still come after the products.
  auto x = at::randn({4096, 4096}, on_gpu);
  for (int i = 0; i < 40; ++i) {
    x = at::tanh(x.matmul(x) * 1e-2);
  }
  comm.all_reduce_sum(x).wait();
  const bool busy = !c10::cuda::getCurrentCUDAStream().query();
  EXPECT_TRUE(busy) << "Work::wait() blocked the host until the stream drained";
  const auto expected = x.cpu();  // synchronises
  EXPECT_TRUE(at::isfinite(expected).all().item<bool>());
}
#endif

// A tiny untied model; SFT, SPIN and NPO over a few steps (the fsdp equivalence test's shapes).
config::RunConfig tiny_run(const std::string& loss, const std::string& device) {
  config::RunConfig cfg;
  cfg.run.seed = 21;
  cfg.run.log_every = 1000;
  cfg.run.device = device;
  cfg.model.vocab_size = 260;
  cfg.model.hidden_size = 64;
  cfg.model.intermediate_size = 128;
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
  cfg.train.batch_size = 8;
  cfg.train.micro_batch_size = 4;
  cfg.train.epochs = 2;
  cfg.train.lr = 3e-3;
  cfg.train.warmup_ratio = 0.0;
  cfg.loss.beta = 0.5;
  cfg.npo.chunk_positions = 40;
  return cfg;
}

std::vector<data::PromptRecord> sft_records() {
  std::vector<data::PromptRecord> out;
  for (int i = 0; i < 12; ++i) {
    const auto a = std::to_string(i * 7 % 13);
    const auto b = std::to_string(i * 3 % 11);
    out.push_back(
        {std::to_string(i), a + "+" + b, std::to_string(std::stoi(a) + std::stoi(b)), "", ""});
  }
  return out;
}

std::vector<data::PairRecord> pair_records() {
  std::vector<data::PairRecord> out;
  for (int i = 0; i < 12; ++i) {
    const auto a = std::to_string(i * 5 % 17);
    const auto right = std::string(a.rbegin(), a.rend()) + "x" + std::to_string(i % 4);
    out.push_back(
        {std::to_string(i), "rev " + a + "x" + std::to_string(i % 4), right, a + "y", {}, {}});
  }
  return out;
}

struct Trace {
  std::vector<double> losses;
  std::vector<at::Tensor> grads;  // per step, all trained tensors' full gradients (host, fp32)
  at::Tensor change;              // θ_N − θ_0 of the policy (host)
};

Trace train(const config::RunConfig& cfg, dist::Comm* comm) {
  model::LlamaModel policy(cfg.model, cfg.run.seed);
  const auto before = policy.clone();
  const data::ByteTokenizer tokenizer;
  MetricsWriter metrics;
  Trainer trainer(cfg, policy, tokenizer, metrics, comm);
  Trace trace;
  trainer.set_gradient_observer(
      [&trace](std::int64_t, const std::vector<dist::ShardedUnit*>& units) {
        std::vector<at::Tensor> flat;
        for (auto* unit : units) {
          for (const auto& g : unit->gather_full(true)) {
            flat.push_back(g.reshape({-1}).to(at::kCPU, at::kFloat));
          }
        }
        trace.grads.push_back(at::cat(flat));
      });
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

double relative(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).norm().item<double>() / std::max(1e-30, b.norm().item<double>());
}

// CUDA through NCCL against the CPU trainer. fp32: to float rounding (reductions run in other
// orders); bf16 compute: to bf16 rounding.
void expect_cuda_matches_cpu(const std::string& loss, const std::string& dtype) {
  auto cpu_cfg = tiny_run(loss, "cpu");
  cpu_cfg.train.dtype = "fp32";
  auto gpu_cfg = tiny_run(loss, "cuda");
  gpu_cfg.train.dtype = dtype;
  const auto cpu = train(cpu_cfg, nullptr);
  const auto gpu = train(gpu_cfg, &nccl());
  const bool fp32 = dtype == "fp32";
  ASSERT_EQ(gpu.losses.size(), cpu.losses.size());
  ASSERT_EQ(gpu.grads.size(), cpu.grads.size());
  ASSERT_GE(cpu.losses.size(), 3U);
  for (std::size_t s = 0; s < cpu.losses.size(); ++s) {
    const double gap =
        std::abs(gpu.losses[s] - cpu.losses[s]) / std::max(1e-6, std::abs(cpu.losses[s]));
    EXPECT_LT(gap, fp32 ? 1e-4 : 5e-2) << loss << " " << dtype << " step " << s << ": "
                                       << gpu.losses[s] << " vs " << cpu.losses[s];
    EXPECT_LT(relative(gpu.grads[s], cpu.grads[s]), fp32 ? 1e-3 : 1e-1)
        << loss << " " << dtype << " step " << s;
  }
  EXPECT_LT(relative(gpu.change, cpu.change), fp32 ? 1e-3 : 1.5e-1) << loss << " " << dtype;
  EXPECT_GT(cpu.change.norm().item<double>(), 0.0);
}

TEST(CudaTrainer, SftInFp32MatchesCpu) {
  DNPO_REQUIRE_CUDA();
  expect_cuda_matches_cpu("sft", "fp32");
}
TEST(CudaTrainer, SpinInFp32MatchesCpu) {
  DNPO_REQUIRE_CUDA();
  expect_cuda_matches_cpu("spin", "fp32");
}
TEST(CudaTrainer, NpoInFp32MatchesCpu) {
  DNPO_REQUIRE_CUDA();
  expect_cuda_matches_cpu("npo", "fp32");
}
TEST(CudaTrainer, NpoInBf16MatchesCpuWithinBf16Tolerance) {
  DNPO_REQUIRE_CUDA();
  expect_cuda_matches_cpu("npo", "bf16");
}

}  // namespace
}  // namespace dnpo::train

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  dnpo::dist::MpiEnv mpi(&argc, &argv);
  dnpo::train::g_mpi = &mpi;
  return RUN_ALL_TESTS();
}
