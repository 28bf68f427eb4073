// The one-pass RMSNorm, rotary and decoding-attention kernels equal the operator form, values and
// gradients, computed in fp64 as the reference: contiguous and transposed inputs (q and k arrive as
// transposed views), a batch-broadcast cos/sin, a frozen weight, and the no-grad path. The golden
// Llama tests check the whole model against PyTorch through these kernels.
#include "dnpo/model/fused_ops.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace dnpo::model {
namespace {

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

at::Tensor reference_rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  return w * (x * at::rsqrt(x.pow(2).mean(-1, true) + eps));
}

at::Tensor reference_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const auto half = x.size(-1) / 2;
  const auto rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

class FusedOps : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(11);
  }
};

void expect_rms_norm_matches(const at::Tensor& x_in, const at::Tensor& w_in, bool train_weight) {
  const double eps = 1e-6;
  auto x = x_in.detach().requires_grad_(true);
  auto w = w_in.detach().requires_grad_(train_weight);
  auto x64 = x_in.detach().to(at::kDouble).requires_grad_(true);
  auto w64 = w_in.detach().to(at::kDouble).requires_grad_(train_weight);
  const auto out = fused_rms_norm(x, w, eps);
  const auto ref = reference_rms_norm(x64, w64, eps);
  ASSERT_EQ(out.sizes(), ref.sizes());
  EXPECT_LT(max_abs_diff(out, ref), 2e-6);
  const auto upstream = at::randn(ref.sizes(), at::kDouble);
  out.backward(upstream.to(at::kFloat));
  ref.backward(upstream);
  EXPECT_LT(max_abs_diff(x.grad(), x64.grad()), 1e-5);
  if (train_weight) {
    EXPECT_LT(max_abs_diff(w.grad(), w64.grad()), 1e-4);
  } else {
    EXPECT_FALSE(w.grad().defined());
  }
}

TEST_F(FusedOps, RmsNormMatchesTheOperatorForm) {
  expect_rms_norm_matches(at::randn({3, 7, 48}) * 3, at::randn({48}), true);
}

TEST_F(FusedOps, RmsNormOfATransposedViewAndAFrozenWeight) {
  expect_rms_norm_matches(at::randn({5, 3, 32}).transpose(0, 1), at::randn({32}), false);
}

TEST_F(FusedOps, RmsNormWithoutGradIsTheSameForward) {
  const auto x = at::randn({4, 9, 16});
  const auto w = at::randn({16});
  at::NoGradGuard no_grad;
  EXPECT_LT(max_abs_diff(fused_rms_norm(x, w, 1e-5),
                         reference_rms_norm(x.to(at::kDouble), w.to(at::kDouble), 1e-5)),
            2e-6);
}

void expect_rotary_matches(const at::Tensor& x_in, const at::Tensor& cos, const at::Tensor& sin) {
  auto x = x_in.detach().requires_grad_(true);
  auto x64 = x_in.detach().to(at::kDouble).requires_grad_(true);
  const auto out = fused_rotary(x, cos, sin);
  const auto ref = reference_rotary(x64, cos.to(at::kDouble), sin.to(at::kDouble));
  ASSERT_EQ(out.sizes(), ref.sizes());
  EXPECT_EQ(out.strides(), x_in.strides()) << "the result keeps the input's layout";
  EXPECT_LT(max_abs_diff(out, ref), 1e-5);
  const auto upstream = at::randn(ref.sizes(), at::kDouble);
  out.backward(upstream.to(at::kFloat));
  ref.backward(upstream);
  EXPECT_LT(max_abs_diff(x.grad(), x64.grad()), 1e-5);
}

TEST_F(FusedOps, RotaryOfQueriesAsAttentionMakesThem) {
  // (B, T, H, hd) from a linear, viewed as (B, H, T, hd)
  const auto x = at::randn({2, 6, 3, 8}).transpose(1, 2);
  const auto angles = at::randn({2, 1, 6, 8});
  expect_rotary_matches(x, angles.cos(), angles.sin());
}

TEST_F(FusedOps, RotaryWithContiguousInputAndBroadcastBatch) {
  const auto x = at::randn({3, 2, 5, 4});
  const auto angles = at::randn({1, 1, 5, 4});
  expect_rotary_matches(x, angles.cos(), angles.sin());
}

TEST_F(FusedOps, RotaryWithoutGradAndWrongShapesRefused) {
  const auto x = at::randn({2, 4, 3, 6});
  const auto angles = at::randn({2, 1, 3, 6});
  {
    at::NoGradGuard no_grad;
    EXPECT_LT(max_abs_diff(fused_rotary(x, angles.cos(), angles.sin()),
                           reference_rotary(x.to(at::kDouble),
                                            angles.cos().to(at::kDouble),
                                            angles.sin().to(at::kDouble))),
              1e-5);
  }
  const auto wrong = at::randn({2, 1, 4, 6});
  EXPECT_THROW(fused_rotary(x, wrong.cos(), wrong.sin()), c10::Error);
  EXPECT_FALSE(fused_ops_apply(x.to(at::kDouble), angles));
}

// softmax(q kᵀ / √hd + bias) v in fp64, grouped-query heads by repeating k and v.
at::Tensor reference_attention(const at::Tensor& q,
                               const at::Tensor& k,
                               const at::Tensor& v,
                               const at::Tensor& bias) {
  const auto group = q.size(1) / k.size(1);
  const auto k64 = k.to(at::kDouble).repeat_interleave(group, 1);
  const auto v64 = v.to(at::kDouble).repeat_interleave(group, 1);
  const auto scores = at::matmul(q.to(at::kDouble), k64.transpose(-1, -2)) /
                          std::sqrt(static_cast<double>(q.size(3))) +
                      bias.to(at::kDouble).squeeze(1);  // (B, 1, T, L) over heads
  return at::matmul(at::softmax(scores, -1), v64);
}

TEST_F(FusedOps, QueryAttentionOverACacheMatchesTheOperatorForm) {
  // Decoding's shapes: k and v are the first L positions of a (B, KV, capacity, hd) cache, q a
  // transposed view (as block_forward makes it), 4 heads over 2 KV heads, the first two keys of
  // row 0 masked (left padding) with the context's large negative bias.
  const std::int64_t batch = 2, heads = 4, kv_heads = 2, hd = 8, capacity = 12, length = 7;
  const auto keys = at::randn({batch, kv_heads, capacity, hd});
  const auto values = at::randn({batch, kv_heads, capacity, hd});
  const auto k = keys.narrow(2, 0, length);
  const auto v = values.narrow(2, 0, length);
  for (const std::int64_t steps : {1, 3}) {
    const auto q = at::randn({batch, steps, heads, hd}).transpose(1, 2);
    auto bias = at::zeros({batch, 1, 1, steps, length});
    bias.select(0, 0).narrow(-1, 0, 2).fill_(-1e9);
    const auto out = fused_query_attention(q, k, v, bias, 1.0 / std::sqrt(static_cast<double>(hd)));
    ASSERT_EQ(out.sizes(), (std::vector<std::int64_t>{batch, heads, steps, hd}));
    EXPECT_TRUE(out.transpose(1, 2).is_contiguous()) << "(B, T, H, hd) memory";
    EXPECT_LT(max_abs_diff(out, reference_attention(q, k, v, bias)), 2e-6) << steps << " steps";
  }
  // q with hd not innermost (the kernel copies it first).
  const auto q_strided = at::randn({batch, heads, hd, 2}).transpose(2, 3);
  ASSERT_NE(q_strided.stride(3), 1);
  const auto bias1 = at::zeros({batch, 1, 1, 2, length});
  EXPECT_LT(max_abs_diff(fused_query_attention(q_strided, k, v, bias1, 1.0 / std::sqrt(8.0)),
                         reference_attention(q_strided, k, v, bias1)),
            2e-6);
  // A bias shared by the batch (one row) broadcasts.
  const auto q = at::randn({batch, heads, 1, hd});
  const auto shared = at::randn({1, 1, 1, 1, length});
  EXPECT_LT(max_abs_diff(fused_query_attention(q, k, v, shared, 1.0 / std::sqrt(8.0)),
                         reference_attention(q, k, v, shared.expand({batch, 1, 1, 1, length}))),
            2e-6);
}

TEST_F(FusedOps, QueryAttentionReadsNoMaskedColumn) {
  // Continuous batching and left-padded batches mask a row's leading columns (and a packed row
  // can leave holes): a query reads none of them, so NaN there changes nothing, and skipping them
  // is exact: row 0 equals, bit for bit, attention over its unmasked columns alone.
  const std::int64_t batch = 2, heads = 4, kv_heads = 2, hd = 8, length = 9, masked = 4;
  auto k = at::randn({batch, kv_heads, length, hd});
  auto v = at::randn({batch, kv_heads, length, hd});
  auto bias = at::zeros({batch, 1, 1, 1, length});
  bias.select(0, 0).narrow(-1, 0, masked).fill_(-1e9);  // row 0: 4 columns of padding
  bias.select(0, 1).narrow(-1, 6, 1).fill_(-1e9);       // row 1: a hole
  const auto q = at::randn({batch, heads, 1, hd});
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const auto finite = fused_query_attention(q, k, v, bias, scale);
  EXPECT_LT(max_abs_diff(finite, reference_attention(q, k, v, bias)), 2e-6);
  const auto alone = fused_query_attention(q.narrow(0, 0, 1),
                                           k.narrow(0, 0, 1).narrow(2, masked, length - masked),
                                           v.narrow(0, 0, 1).narrow(2, masked, length - masked),
                                           bias.narrow(0, 0, 1).narrow(-1, masked, length - masked),
                                           scale);
  EXPECT_TRUE(at::equal(finite.narrow(0, 0, 1), alone)) << "skipping padding changed the bits";
  const auto nan = std::nan("");
  k.select(0, 0).narrow(1, 0, masked).fill_(nan);
  v.select(0, 0).narrow(1, 0, masked).fill_(nan);
  k.select(0, 1).narrow(1, 6, 1).fill_(nan);
  v.select(0, 1).narrow(1, 6, 1).fill_(nan);
  EXPECT_TRUE(at::equal(fused_query_attention(q, k, v, bias, scale), finite))
      << "a masked column was read";
  // A query whose every column is masked (a left pad's) reads them all, as the fp32 operator form
  // does: −1e9 swallows every score, so its output is the values' mean.
  const auto all_masked = at::full({batch, 1, 1, 1, length}, -1e9);
  const auto kf = at::randn({batch, kv_heads, length, hd});
  EXPECT_LT(
      max_abs_diff(fused_query_attention(q, kf, kf, all_masked, scale),
                   reference_attention(at::zeros_like(q), kf, kf, at::zeros_like(all_masked))),
      2e-6);
}

TEST_F(FusedOps, QueryAttentionReadsNoMaskedColumnAcrossQuerySteps) {
  // Several query steps (up to kFusedAttentionMaxSteps decode together) each with a causal mask
  // over a left-padded row, and a bias broadcast over the batch: each step skips its own masked
  // columns, so NaN in them changes nothing.
  const std::int64_t batch = 2, heads = 2, kv_heads = 1, hd = 8, length = 8, steps = 3, pad = 2;
  auto k = at::randn({batch, kv_heads, length, hd});
  auto v = at::randn({batch, kv_heads, length, hd});
  auto bias = at::zeros({1, 1, 1, steps, length});  // one row for the batch
  bias.narrow(-1, 0, pad).fill_(-1e9);
  for (std::int64_t t = 0; t < steps; ++t) {  // step t sees up to column length − steps + t
    bias.select(3, t).narrow(-1, length - steps + t + 1, steps - t - 1).fill_(-1e9);
  }
  const auto q = at::randn({batch, steps, heads, hd}).transpose(1, 2);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const auto finite = fused_query_attention(q, k, v, bias, scale);
  EXPECT_LT(
      max_abs_diff(finite, reference_attention(q, k, v, bias.expand({batch, 1, 1, steps, length}))),
      2e-6);
  const auto nan = std::nan("");
  k.narrow(2, 0, pad).fill_(nan);
  v.narrow(2, 0, pad).fill_(nan);
  k.narrow(2, length - 1, 1).fill_(nan);  // seen only by the last step: the others skip it
  v.narrow(2, length - 1, 1).fill_(nan);
  const auto out = fused_query_attention(q, k, v, bias, scale);
  EXPECT_TRUE(at::equal(out.narrow(2, 0, steps - 1), finite.narrow(2, 0, steps - 1)))
      << "an earlier step read a column it does not see";
  EXPECT_TRUE(at::isnan(out.narrow(2, steps - 1, 1)).all().item<bool>())
      << "the last step sees the last column (the NaN must reach it)";
}

TEST_F(FusedOps, QueryAttentionRefusesMismatchedShapes) {
  const auto q = at::randn({2, 3, 1, 8});  // 3 heads over 2 KV heads: no grouping
  const auto kv = at::randn({2, 2, 5, 8});
  EXPECT_THROW(fused_query_attention(q, kv, kv, at::zeros({2, 1, 1, 1, 5}), 1.0), c10::Error);
  const auto q4 = at::randn({2, 4, 1, 8});
  EXPECT_THROW(fused_query_attention(q4, kv, kv, at::zeros({2, 1, 1, 1, 4}), 1.0), c10::Error)
      << "bias over 4 keys, cache of 5";
  EXPECT_THROW(fused_query_attention(q4, kv, kv, at::zeros({2, 1, 2, 1, 5}), 1.0), c10::Error)
      << "bias per head";
  EXPECT_NO_THROW(fused_query_attention(q4, kv, kv, at::zeros({2, 1, 1, 1, 5}), 1.0));
}

}  // namespace
}  // namespace dnpo::model
