// The table of self-play modes: what iterations t ≥ 1 of each mode label, train and draw, as
// docs/algorithm.md lists them; iteration 0 is SPIN everywhere.
#include "dnpo/selfplay/modes.h"

#include <string>

#include <gtest/gtest.h>

#include "dnpo/common/error.h"

namespace dnpo::selfplay {
namespace {

config::SelfplayConfig mode(const std::string& name) {
  config::SelfplayConfig cfg;
  cfg.mode = name;
  return cfg;
}

TEST(SelfplayModes, EveryModeHasItsRow) {
  struct Row {
    const char* mode;
    const char* labels;
    const char* objective;
    Noise noise;
  };
  for (const auto& row : {Row{"spin", "spin", "spin", Noise::kNone},
                          Row{"dsl", "dsl", "spin", Noise::kNone},
                          Row{"npo", "spin", "npo", Noise::kLearned},
                          Row{"dnpo", "dsl", "npo", Noise::kLearned},
                          Row{"fixed_noise", "dsl", "npo", Noise::kFixed}}) {
    const auto& plan = iteration_plan(mode(row.mode), 1);
    EXPECT_STREQ(labeling_name(plan.labeling), row.labels) << row.mode;
    EXPECT_STREQ(plan.objective, row.objective) << row.mode;
    EXPECT_EQ(plan.noise, row.noise) << row.mode;
    const auto& warm_up = iteration_plan(mode(row.mode), 0);
    EXPECT_EQ(warm_up.labeling, Labeling::kSpin) << row.mode;
    EXPECT_STREQ(warm_up.objective, "spin") << row.mode;
    EXPECT_EQ(warm_up.noise, Noise::kNone) << row.mode;
  }
  EXPECT_THROW(iteration_plan(mode("ppo"), 1), ConfigError);
}

// An arm branched off SPIN's chain at iteration t (selfplay.mode_from = t): SPIN before t.
TEST(SelfplayModes, IterationsBeforeModeFromAreSpin) {
  auto cfg = mode("npo");
  cfg.mode_from = 3;
  for (std::uint64_t t = 0; t < 3; ++t) {
    EXPECT_STREQ(iteration_plan(cfg, t).objective, "spin") << t;
  }
  EXPECT_STREQ(iteration_plan(cfg, 3).objective, "npo");
  EXPECT_STREQ(iteration_plan(cfg, 4).objective, "npo");
}

TEST(SelfplayModes, IterationConfigFollowsThePlan) {
  config::RunConfig cfg;
  cfg.selfplay.mode = "fixed_noise";
  cfg.selfplay.lr = 3e-5;
  cfg.selfplay.epochs = 2;
  cfg.train.max_steps = 7;
  const auto first = iteration_config(cfg, 0);
  EXPECT_EQ(first.train.loss, "spin");
  EXPECT_TRUE(first.npo.fixed_noise);  // the mode's [npo], the warm-up's checkpoints included
  const auto second = iteration_config(cfg, 2);
  EXPECT_EQ(second.train.loss, "npo");
  EXPECT_TRUE(second.npo.fixed_noise);
  EXPECT_EQ(second.train.lr, 3e-5);
  EXPECT_EQ(second.train.epochs, 2);
  EXPECT_EQ(second.train.max_steps, 0);
  EXPECT_EQ(second.train.iteration, 2U);
  cfg.selfplay.mode = "dnpo";
  EXPECT_FALSE(iteration_config(cfg, 1).npo.fixed_noise);
  cfg.npo.fixed_noise = true;
  EXPECT_TRUE(iteration_config(cfg, 1).npo.fixed_noise);
}

}  // namespace
}  // namespace dnpo::selfplay
