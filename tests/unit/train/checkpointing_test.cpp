// Stage state through a checkpoint file in one process: every shard, optimizer buffer, step
// count, the loop position and the stage's blobs come back; a checkpoint of another model or
// stage is refused with an error naming the file and what differs.
#include "dnpo/train/checkpointing.h"

#include <filesystem>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "dnpo/common/error.h"
#include "dnpo/dist/shard_optimizer.h"
#include "dnpo/model/llama.h"
#include "dnpo/train/reference_logps.h"
#include "dnpo/train/sharded_llama.h"
#include "expect_error.h"
#include "one_process.h"
#include "tiny_model.h"

namespace dnpo::train {
namespace {

namespace fs = std::filesystem;

// A policy, its optimizer after two updates, and the StageState over them.
struct Stage {
  explicit Stage(const config::ModelConfig& cfg, std::uint64_t seed)
      : policy(
            model::LlamaModel(cfg, seed), test::one_process(), dist::UnitPrecision{}, true, false),
        optimizer(config::TrainConfig{}, policy.shards()) {
    for (int k = 0; k < 2; ++k) {
      for (const auto& shard : policy.shards()) {
        shard.mutable_grad() = at::full_like(shard, 0.01 * (k + 1 + static_cast<double>(seed)));
      }
      optimizer.step();
    }
    state.position.stage = "npo";
    state.position.iteration = 2;
    state.position.steps_done = 7;
    state.position.total_steps = 20;
    state.position.step_losses = {0.5, 0.25};
    state.trained = {{"policy", policy.units()}};
    state.optimizer = &optimizer;
    state.blobs["answers"] = std::string("{\"id\": 1}\0binary", 16);
  }
  ShardedLlama policy;
  dist::ShardOptimizer optimizer;
  StageState state;
};

class CheckpointingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dnpo_checkpointing_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
  }
  void TearDown() override {
    fs::remove_all(dir_);
  }
  fs::path dir_;
};

TEST_F(CheckpointingTest, EveryPieceOfStateComesBack) {
  const auto cfg = test::tiny_model_config();
  Stage saved(cfg, 1);
  const auto path = save_stage(dir_.string(), "ckpt-000000000", saved.state, false, 3);
  Stage loaded(cfg, 2);  // other values everywhere
  loaded.state.position.steps_done = 0;
  loaded.state.blobs.clear();
  ASSERT_FALSE(at::equal(loaded.policy.shards()[1], saved.policy.shards()[1]));
  load_stage(path, loaded.state);
  for (std::size_t i = 0; i < saved.policy.shards().size(); ++i) {
    EXPECT_TRUE(at::equal(loaded.policy.shards()[i], saved.policy.shards()[i])) << "shard " << i;
    for (const auto& name : saved.optimizer.state_names()) {
      EXPECT_TRUE(at::equal(loaded.optimizer.state(i, name), saved.optimizer.state(i, name)))
          << name << " " << i;
    }
    EXPECT_EQ(loaded.optimizer.steps_taken(i), 2);
  }
  EXPECT_EQ(loaded.state.position.steps_done, 7);
  EXPECT_EQ(loaded.state.position.step_losses, (std::vector<double>{0.5, 0.25}));
  EXPECT_EQ(loaded.state.blobs.at("answers"), saved.state.blobs.at("answers"));
  EXPECT_EQ(read_position(path).total_steps, 20);
}

// The reference log-probs a stage kept come back with it; a checkpoint written without them
// leaves a fresh store empty (its stage recomputes); one for other pairs (count or tokens) is
// refused.
TEST_F(CheckpointingTest, CarriedReferenceLogProbsComeBack) {
  const auto cfg = test::tiny_model_config();
  Stage saved(cfg, 1);
  ReferenceLogps kept(5, 2, 0x5eed);
  kept.begin_step(2, at::kCPU);
  kept.record(0, at::tensor({-1.5F, -2.25F}).reshape({2, 1}));
  kept.record(1, at::tensor({-3.0F, -0.125F}).reshape({2, 1}));
  kept.end_step({4, 1}, test::one_process());
  saved.state.carried = &kept;
  const auto path = save_stage(dir_.string(), "ckpt-000000000", saved.state, false, 3);

  Stage loaded(cfg, 2);
  ReferenceLogps restored(5, 2, 0x5eed);
  loaded.state.carried = &restored;
  load_stage(path, loaded.state);
  EXPECT_EQ(restored.known(), 2);
  EXPECT_TRUE(restored.has_all({1, 4}));
  EXPECT_FALSE(restored.has_all({0}));
  EXPECT_TRUE(at::equal(restored.lookup({4, 1}, at::kCPU),
                        at::tensor({-1.5F, -3.0F, -2.25F, -0.125F}).reshape({2, 2})));

  saved.state.carried = nullptr;
  const auto without = save_stage(dir_.string(), "ckpt-000000001", saved.state, false, 3);
  ReferenceLogps fresh(5, 2, 0x5eed);
  loaded.state.carried = &fresh;
  load_stage(without, loaded.state);
  EXPECT_EQ(fresh.known(), 0);

  ReferenceLogps other(6, 2, 0x5eed);
  loaded.state.carried = &other;
  EXPECT_ERROR(
      CheckpointError,
      [&] { load_stage(path, loaded.state); },
      path,
      "reference log-probs",
      "5 pairs");
}

TEST_F(CheckpointingTest, AnotherModelShapeIsRefusedNamingFileAndTensor) {
  Stage saved(test::tiny_model_config(), 1);
  const auto path = save_stage(dir_.string(), "ckpt-000000000", saved.state, false, 3);
  auto wider = test::tiny_model_config();
  wider.intermediate_size = 96;
  Stage other(wider, 1);
  EXPECT_ERROR(
      CheckpointError,
      [&] { load_stage(path, other.state); },
      path,
      "mlp.gate_proj.weight",
      "shape");
}

TEST_F(CheckpointingTest, AnotherStageIsRefused) {
  const auto cfg = test::tiny_model_config();
  Stage saved(cfg, 1);
  const auto path = save_stage(dir_.string(), "ckpt-000000000", saved.state, false, 3);
  Stage other(cfg, 1);
  other.state.position.stage = "sft";
  EXPECT_THROW(load_stage(path, other.state), CheckpointError);
}

}  // namespace
}  // namespace dnpo::train
