// The FSDP-unit decoder in one process equals model::LlamaModel: the same hidden states and
// logits, and the same parameter gradients (read back from the shards), with and without
// recompute-in-backward, tied and untied. The multi-rank versions are in tests/mpi/train/.
#include "dnpo/train/sharded_llama.h"

#include <map>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dnpo/model/noise_head.h"
#include "dnpo/train/dnpo_loss.h"
#include "one_process.h"
#include "tiny_model.h"

namespace dnpo::train {
namespace {

struct Batch {
  at::Tensor ids, mask, loss_mask;
};

Batch make_batch() {
  at::manual_seed(3);
  Batch b;
  b.ids = at::randint(0, 50, {3, 7}, at::kLong);
  b.mask = at::ones({3, 7}, at::kLong);
  b.mask[0][0] = 0;  // left padding on one row
  b.mask[0][1] = 0;
  b.loss_mask = at::zeros({3, 7}, at::kLong);
  b.loss_mask.narrow(1, 4, 3).fill_(1);
  return b;
}

std::map<std::string, at::Tensor> full_gradients(ShardedLlama& sharded) {
  std::map<std::string, at::Tensor> out;
  for (auto* unit : sharded.units()) {
    const auto grads = unit->gather_full(true);
    for (std::size_t i = 0; i < grads.size(); ++i) {
      out[unit->specs()[i].name] = grads[i];
    }
  }
  return out;
}

class ShardedLlamaTest : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(ShardedLlamaTest, MatchesTheUnshardedModelInValuesAndGradients) {
  const auto [tied, recompute] = GetParam();
  const auto cfg = test::tiny_model_config(tied);
  model::LlamaModel plain(cfg, 7);
  ShardedLlama sharded(plain, test::one_process(), dist::UnitPrecision{}, true, recompute);
  const auto b = make_batch();

  plain.set_requires_grad(true);
  const auto h_plain = plain.forward_hidden(b.ids, b.mask);
  const auto lp_plain = sequence_logprobs(h_plain, plain.lm_head(), b.ids, b.loss_mask);
  (lp_plain * at::arange(1, 4, at::kFloat)).sum().backward();

  const auto out = sharded.forward(b.ids, b.mask);
  const auto h_sharded = out.hidden;
  const auto lp_sharded = sequence_logprobs(h_sharded, out.lm_head, b.ids, b.loss_mask);
  (lp_sharded * at::arange(1, 4, at::kFloat)).sum().backward();
  sharded.release();

  EXPECT_TRUE(at::allclose(h_sharded, h_plain, 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(lp_sharded, lp_plain, 1e-5, 1e-5));
  const auto grads = full_gradients(sharded);
  ASSERT_EQ(grads.size(), plain.named_parameters().size());
  for (const auto& [name, param] : plain.named_parameters()) {
    ASSERT_TRUE(param.grad().defined()) << name;
    const auto& g = grads.at(name);
    const double rel = (g - param.grad()).norm().item<double>() /
                       std::max(1e-12, param.grad().norm().item<double>());
    EXPECT_LT(rel, 1e-5) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(TiedAndRecompute,
                         ShardedLlamaTest,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool()));

TEST(ShardedLlama, CopyToRoundTripsTheParameters) {
  const auto cfg = test::tiny_model_config(false);
  model::LlamaModel source(cfg, 11);
  model::LlamaModel target(cfg, 12);
  ShardedLlama sharded(source, test::one_process(), dist::UnitPrecision{}, false, true);
  sharded.copy_to(target);
  for (std::size_t i = 0; i < source.parameters().size(); ++i) {
    EXPECT_TRUE(at::equal(source.parameters()[i], target.parameters()[i]));
  }
}

TEST(ShardedLlama, FrozenCopyHasNoGradientsAndNeedsNone) {
  const auto cfg = test::tiny_model_config(true);
  model::LlamaModel plain(cfg, 5);
  ShardedLlama frozen(plain, test::one_process(), dist::UnitPrecision{}, false, true);
  const auto b = make_batch();
  at::NoGradGuard no_grad;
  const auto h = frozen.forward(b.ids, b.mask).hidden;
  EXPECT_FALSE(h.requires_grad());
  EXPECT_TRUE(at::allclose(h, plain.forward_hidden(b.ids, b.mask), 1e-5, 1e-6));
  for (const auto& s : frozen.shards()) {
    EXPECT_FALSE(s.requires_grad());
  }
}

TEST(ShardedNoiseHead, GatheredParametersCarryGradientsIntoTheShard) {
  config::NpoConfig npo;
  model::NoiseHead head(npo, 32, 50, 3);
  ShardedNoiseHead sharded(head, test::one_process());
  const auto h = at::randn({4, 32});
  auto plain_params = head.parameters();
  for (auto& p : plain_params) {
    p.requires_grad_(true);
  }
  model::NoiseHead::sigma_of(npo, plain_params, h).sum().backward();
  model::NoiseHead::sigma_of(npo, sharded.parameters(), h).sum().backward();
  sharded.release();
  const auto grads = sharded.unit()->gather_full(true);
  for (std::size_t i = 0; i < grads.size(); ++i) {
    EXPECT_TRUE(at::allclose(grads[i], plain_params[i].grad(), 1e-5, 1e-6)) << i;
  }
}

}  // namespace
}  // namespace dnpo::train
