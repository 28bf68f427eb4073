// "auto"'s choice of keeping units gathered, at the shapes the scaling goals name.
#include "dnpo/train/keep_gathered.h"

#include <cstdint>

#include <gtest/gtest.h>

#include "dnpo/config/config.h"

namespace dnpo::train {
namespace {

// The scaling benchmark's NPO stage: 12 layers of 768, a 32k vocabulary, micro-batches of 2 pairs
// of 64 tokens.
config::RunConfig npo_at_scale() {
  config::RunConfig cfg;
  cfg.train.loss = "npo";
  cfg.train.micro_batch_size = 2;
  cfg.data.max_length = 64;
  cfg.model.hidden_size = 768;
  cfg.model.intermediate_size = 2048;
  cfg.model.num_hidden_layers = 12;
  cfg.model.vocab_size = 32000;
  return cfg;
}

constexpr double kPlenty = 1e12;

TEST(KeepGathered, TwoRanksKeepAndFourReshardAModelOf100MParameters) {
  const auto cfg = npo_at_scale();
  for (const std::int64_t parameters : {110'000'000LL, 134'000'000LL}) {
    EXPECT_TRUE(keeps_gathered(keep_gathered_cost(cfg, parameters, 2), kPlenty)) << parameters;
    EXPECT_FALSE(keeps_gathered(keep_gathered_cost(cfg, parameters, 4), kPlenty)) << parameters;
  }
}

TEST(KeepGathered, TheBudgetBoundsTheWholeNeed) {
  const auto cost = keep_gathered_cost(npo_at_scale(), 110'000'000, 2);
  EXPECT_GT(cost.activations, 0);
  EXPECT_TRUE(keeps_gathered(cost, static_cast<double>(cost.need())));
  EXPECT_FALSE(keeps_gathered(cost, static_cast<double>(cost.need() - 1)));
}

TEST(KeepGathered, TheShardCountsWhatTrainsAndTheReference) {
  auto cfg = npo_at_scale();
  const std::int64_t p = 1'000'000;
  const std::int64_t head = 768 * 32000;
  // AdamW: fp32 master, gradient and two moments of policy and head; the reference's fp32 values.
  EXPECT_EQ(keep_gathered_cost(cfg, p, 1).shard, (p + head) * 16 + p * 4);
  EXPECT_EQ(keep_gathered_cost(cfg, p, 4).shard, ((p + head) * 16 + p * 4) / 4);
  cfg.train.loss = "sft";
  EXPECT_EQ(keep_gathered_cost(cfg, p, 2).shard, p * 16 / 2);
  EXPECT_EQ(keep_gathered_cost(cfg, p, 2).gathered_weights, p * 8);
  cfg.train.optimizer = "rmsprop";
  EXPECT_EQ(keep_gathered_cost(cfg, p, 2).shard, p * 12 / 2);
}

}  // namespace
}  // namespace dnpo::train
