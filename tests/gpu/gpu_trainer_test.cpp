// The CUDA trainer (label gpu; run by launch/device-check on the GPU machine, skipped elsewhere):
// NCCL collectives at world size 1, a wait that leaves the host free, SFT / SPIN / NPO training
// on the GPU through the NCCL process group equal to the CPU trainer (comm null) step by step
// (losses, full gradients and the parameter change), and no host sync per micro-batch.
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#if DNPO_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#endif

#include "dnpo/data/tokenizer.h"
#include "dnpo/dist/comm.h"
#include "dnpo/dist/mpi_env.h"
#include "dnpo/train/trainer.h"
#include "one_process.h"
#include "trainer_trace.h"

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

using fixture::relative;
using fixture::train;

// The FSDP equivalence test's tiny run (tests/common/trainer_trace.h) on `device`.
config::RunConfig tiny_run(const std::string& loss, const std::string& device) {
  auto cfg = fixture::tiny_run(loss);
  cfg.run.device = device;
  cfg.npo.chunk_positions = 40;  // several chunks per step
  return cfg;
}

// CUDA through NCCL against the CPU trainer. fp32: to float rounding (reductions run in other
// orders); bf16 compute: to bf16 rounding.
void expect_cuda_matches_cpu(const std::string& loss, const std::string& dtype) {
  auto cpu_cfg = tiny_run(loss, "cpu");
  cpu_cfg.train.dtype = "fp32";
  auto gpu_cfg = tiny_run(loss, "cuda");
  gpu_cfg.train.dtype = dtype;
  const auto cpu = train(cpu_cfg, test::one_process());
  const auto gpu = train(gpu_cfg, nccl());
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

#if DNPO_WITH_CUDA
// Counts LibTorch's "called a synchronizing CUDA operation" warnings (its sync debug mode
// "warn": item(), nonzero, copies to the host, stream synchronisations), those raised in
// autograd's backward threads included (the engine replays them on the calling thread).
class HostSyncCounter : public c10::WarningHandler {
 public:
  void process(const c10::Warning& warning) override {
    if (warning.msg().find("synchronizing") != std::string::npos) {
      ++count;
    }
  }
  int count = 0;
};

int host_syncs_of(const config::RunConfig& cfg) {
  HostSyncCounter counter;
  const c10::WarningUtils::WarningHandlerGuard guard(&counter);
  c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_WARN);
  fixture::train(cfg, &nccl(), /*observe_gradients=*/false);
  c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
  return counter.count;
}

// The micro-batch loop (forwards, losses, backward) makes the host wait for the GPU nowhere:
// the same 4 steps cut into 20 micro-batches or into 6 make exactly as many host syncs. What
// is left is per step (the statistics read for the log) and per run (set-up, the final copy).
TEST(CudaTrainer, NoHostSyncPerMicroBatch) {
  DNPO_REQUIRE_CUDA();
  for (const std::string loss : {"sft", "spin", "npo"}) {
    auto cfg = tiny_run(loss, "cuda");
    cfg.train.micro_batch_size = 2;  // steps of 16, 4, 16, 4 samples: 8 + 2 + 8 + 2 micro-batches
    const int many = host_syncs_of(cfg);
    cfg.train.micro_batch_size = 8;  // 2 + 1 + 2 + 1
    const int few = host_syncs_of(cfg);
    cfg.train.epochs = 1;  // the first two steps only
    const int two_steps = host_syncs_of(cfg);
    std::printf("[ host syncs ] %s: 4 steps in 20 micro-batches %d, in 6 %d; per step %.1f\n",
                loss.c_str(),
                many,
                few,
                (few - two_steps) / 2.0);
    EXPECT_EQ(many, few) << loss << ": host syncs grow with the micro-batches";
    EXPECT_GT(few, two_steps) << loss << ": the counter saw nothing (sync debug mode off?)";
  }
}
#endif

}  // namespace
}  // namespace dnpo::train

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  dnpo::dist::MpiEnv mpi(&argc, &argv);
  dnpo::train::g_mpi = &mpi;
  return RUN_ALL_TESTS();
}
