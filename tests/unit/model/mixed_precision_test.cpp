// bf16 compute with fp32 master weights: the forward runs in bf16, gradients reach the fp32
// parameters, and results stay within bf16 tolerance of the fp32 forward.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dnpo/model/llama.h"
#include "tiny_model.h"

namespace dnpo::model {
namespace {

config::ModelConfig tiny_config() {
  return test::tiny_model_config(/*tied=*/true);
}

TEST(MixedPrecision, Bf16ForwardTracksFp32AndKeepsFp32Masters) {
  LlamaModel model(tiny_config(), 11);
  const auto ids = at::randint(0, 50, {2, 9}, at::kLong);
  const auto mask = at::ones({2, 9}, at::kLong);
  const auto logits32 = model.logits(model.forward_hidden(ids, mask));

  model.set_compute_dtype(at::kBFloat16);
  model.set_requires_grad(true);
  const auto hidden16 = model.forward_hidden(ids, mask);
  EXPECT_EQ(hidden16.scalar_type(), at::kBFloat16);
  const auto logits16 = model.logits(hidden16);
  const auto max_err = (logits16.to(at::kFloat) - logits32).abs().max().item<double>();
  const auto scale = logits32.abs().max().item<double>();
  EXPECT_LT(max_err, 0.05 * scale)
      << "bf16 logits differ by " << max_err << " (scale " << scale << ")";
  EXPECT_GT(max_err, 0.0) << "bf16 compute looks like fp32: the cast did not happen";

  logits16.to(at::kFloat).logsumexp(-1).sum().backward();
  for (const auto& [name, p] : model.named_parameters()) {
    EXPECT_EQ(p.scalar_type(), at::kFloat) << name;
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_EQ(p.grad().scalar_type(), at::kFloat) << name;
  }
}

}  // namespace
}  // namespace dnpo::model
