// ShardOptimizer against LibTorch's own torch::optim (the reference), and its state as the
// whole truth: a fresh optimizer given the state continues bit for bit.
#include "dnpo/dist/shard_optimizer.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dnpo/common/error.h"

namespace dnpo::dist {
namespace {

config::TrainConfig train_config(const std::string& optimizer, double weight_decay) {
  config::TrainConfig cfg;
  cfg.optimizer = optimizer;
  cfg.lr = 3e-3;
  cfg.weight_decay = weight_decay;
  cfg.adam_beta1 = 0.8;
  cfg.adam_beta2 = 0.95;
  cfg.eps = 1e-6;
  cfg.rmsprop_alpha = 0.9;
  return cfg;
}

std::vector<at::Tensor> leaves(std::uint64_t seed) {
  torch::manual_seed(seed);
  return {torch::randn({37}).requires_grad_(true), torch::randn({4, 5}).requires_grad_(true)};
}

// Gradients of step k (the second parameter has none on step 2: its state must not move).
void set_grads(const std::vector<at::Tensor>& params, int k) {
  torch::manual_seed(100 + k);
  for (std::size_t i = 0; i < params.size(); ++i) {
    auto g = torch::randn(params[i].sizes());
    params[i].mutable_grad() = (i == 1 && k == 2) ? at::Tensor() : g;
  }
}

std::unique_ptr<torch::optim::Optimizer> reference(const config::TrainConfig& cfg,
                                                   const std::vector<at::Tensor>& params) {
  if (cfg.optimizer == "adamw") {
    return std::make_unique<torch::optim::AdamW>(params,
                                                 torch::optim::AdamWOptions(cfg.lr)
                                                     .betas({cfg.adam_beta1, cfg.adam_beta2})
                                                     .eps(cfg.eps)
                                                     .weight_decay(cfg.weight_decay));
  }
  return std::make_unique<torch::optim::RMSprop>(params,
                                                 torch::optim::RMSpropOptions(cfg.lr)
                                                     .alpha(cfg.rmsprop_alpha)
                                                     .eps(cfg.eps)
                                                     .weight_decay(cfg.weight_decay));
}

class ShardOptimizerTest : public ::testing::TestWithParam<std::pair<std::string, double>> {};

TEST_P(ShardOptimizerTest, MatchesTorchOptimOverSteps) {
  const auto cfg = train_config(GetParam().first, GetParam().second);
  auto ours = leaves(1);
  auto theirs = leaves(1);
  ShardOptimizer opt(cfg, ours);
  auto ref = reference(cfg, theirs);
  for (int k = 0; k < 6; ++k) {
    set_grads(ours, k);
    set_grads(theirs, k);
    opt.set_lr(cfg.lr * (1.0 + 0.1 * k));
    for (auto& group : ref->param_groups()) {
      group.options().set_lr(cfg.lr * (1.0 + 0.1 * k));
    }
    opt.step();
    ref->step();
    for (std::size_t i = 0; i < ours.size(); ++i) {
      const auto diff = (ours[i] - theirs[i]).abs().max().item<double>();
      EXPECT_LE(diff, 1e-6) << "step " << k << " param " << i;
    }
  }
  EXPECT_EQ(opt.steps_taken(0), 6);
  EXPECT_EQ(opt.steps_taken(1), 5);  // no gradient on step 2
  // The update did something (the comparison is not of two idle optimizers).
  EXPECT_GT((ours[0] - leaves(1)[0]).abs().max().item<double>(), 1e-3);
}

TEST_P(ShardOptimizerTest, StateCopiedIntoAFreshOptimizerContinuesBitForBit) {
  const auto cfg = train_config(GetParam().first, GetParam().second);
  auto a = leaves(2);
  ShardOptimizer first(cfg, a);
  for (int k = 0; k < 3; ++k) {
    set_grads(a, k);
    first.step();
  }
  // "Resume": new parameters and optimizer, loaded from the first one's values and state.
  std::vector<at::Tensor> b;
  for (const auto& p : a) {
    b.push_back(p.detach().clone().requires_grad_(true));
  }
  ShardOptimizer second(cfg, b);
  for (std::size_t i = 0; i < a.size(); ++i) {
    for (const auto& name : first.state_names()) {
      second.state(i, name).copy_(first.state(i, name));
    }
    second.set_steps_taken(i, first.steps_taken(i));
  }
  for (int k = 3; k < 6; ++k) {
    set_grads(a, k);
    set_grads(b, k);
    first.step();
    second.step();
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(at::equal(a[i], b[i])) << "param " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Optimizers,
                         ShardOptimizerTest,
                         ::testing::Values(std::pair<std::string, double>{"adamw", 0.0},
                                           std::pair<std::string, double>{"adamw", 0.1},
                                           std::pair<std::string, double>{"rmsprop", 0.0},
                                           std::pair<std::string, double>{"rmsprop", 0.01}));

TEST(ShardOptimizer, UnknownOptimizerIsAConfigError) {
  auto cfg = train_config("sgd", 0.0);
  EXPECT_THROW(ShardOptimizer(cfg, leaves(3)), ConfigError);
}

}  // namespace
}  // namespace dnpo::dist
