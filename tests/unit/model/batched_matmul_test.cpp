// batched_matmul equals at::matmul, values and gradients, for the layouts attention hands it:
// transposed views (BLAS reads them in place), GQA broadcast (stride-0 batch dims), views BLAS
// cannot read (copied), size-1 and empty dimensions, and the paths that fall back (double, 2-D).
#include "dnpo/model/batched_matmul.h"

#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace dnpo::model {
namespace {

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return a.numel() == 0 ? 0.0 : (a - b).abs().max().item<double>();
}

// Both products and both gradients under the same upstream gradient.
void expect_same_as_matmul(const at::Tensor& a_in, const at::Tensor& b_in) {
  auto a = a_in.detach().requires_grad_(true);
  auto b = b_in.detach().requires_grad_(true);
  auto a_ref = a_in.detach().clone().requires_grad_(true);
  auto b_ref = b_in.detach().clone().requires_grad_(true);
  const auto out = batched_matmul(a, b);
  const auto ref = at::matmul(a_ref, b_ref);
  ASSERT_EQ(out.sizes(), ref.sizes());
  EXPECT_LT(max_abs_diff(out, ref), 1e-5) << a_in.sizes() << " @ " << b_in.sizes();
  const auto upstream = at::randn(ref.sizes(), at::kFloat);
  out.backward(upstream);
  ref.backward(upstream);
  EXPECT_LT(max_abs_diff(a.grad(), a_ref.grad()), 1e-5);
  EXPECT_LT(max_abs_diff(b.grad(), b_ref.grad()), 1e-5);
}

class BatchedMatmul : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(7);
  }
};

TEST_F(BatchedMatmul, ContiguousBatches) {
  expect_same_as_matmul(at::randn({3, 4, 5, 6}), at::randn({3, 4, 6, 7}));
}

TEST_F(BatchedMatmul, TransposedViewsAsAttentionMakesThem) {
  // q from a linear: (B, T, H, hd) viewed as (B, H, T, hd); kᵀ a transposed view of the same.
  const auto q = at::randn({2, 9, 3, 8}).transpose(1, 2);
  const auto k = at::randn({2, 11, 3, 8}).transpose(1, 2);
  expect_same_as_matmul(q, k.transpose(-1, -2));
}

TEST_F(BatchedMatmul, GroupedQueryBroadcast) {
  // queries (B, KV, group, T, hd) against keys (B, KV, 1, hd, Tk): the key batch dim has stride 0
  const auto qg = at::randn({2, 2, 3, 5, 4});
  const auto keys = at::randn({2, 2, 7, 4}).unsqueeze(2).transpose(-1, -2);
  expect_same_as_matmul(qg, keys);
  const auto probs = at::randn({2, 2, 3, 5, 7});
  const auto values = at::randn({2, 2, 7, 4}).unsqueeze(2);
  expect_same_as_matmul(probs, values);
}

TEST_F(BatchedMatmul, KvCacheNarrowedViews) {
  // decoding: one query row against a cache narrowed to the filled length
  const auto cache = at::randn({4, 2, 32, 8});
  const auto keys = cache.narrow(2, 0, 13);
  expect_same_as_matmul(at::randn({4, 2, 1, 8}), keys.transpose(-1, -2));
  expect_same_as_matmul(at::randn({4, 2, 1, 13}), cache.narrow(2, 0, 13));
}

TEST_F(BatchedMatmul, UnreadableStridesAreCopied) {
  // every other column: neither row- nor column-major
  const auto a = at::randn({3, 5, 12}).slice(2, 0, 12, 2);
  expect_same_as_matmul(a, at::randn({3, 6, 4}));
}

TEST_F(BatchedMatmul, SizeOneAndEmptyDimensions) {
  expect_same_as_matmul(at::randn({2, 1, 6}), at::randn({2, 6, 1}));
  expect_same_as_matmul(at::randn({2, 3, 1}), at::randn({2, 1, 4}));
  const auto empty_k = batched_matmul(at::randn({2, 3, 0}), at::randn({2, 0, 4}));
  EXPECT_EQ(empty_k.sizes(), (std::vector<std::int64_t>{2, 3, 4}));
  EXPECT_EQ(empty_k.abs().sum().item<double>(), 0.0);
  EXPECT_EQ(batched_matmul(at::randn({0, 3, 2}), at::randn({0, 2, 4})).numel(), 0);
}

TEST_F(BatchedMatmul, OtherDtypesAndRanksFallBackToMatmul) {
  const auto a = at::randn({2, 3, 4}, at::kDouble);
  const auto b = at::randn({2, 4, 5}, at::kDouble);
  EXPECT_LT(max_abs_diff(batched_matmul(a, b), at::matmul(a, b)), 1e-12);
  const auto m = at::randn({3, 4});
  const auto n = at::randn({4, 5});
  EXPECT_LT(max_abs_diff(batched_matmul(m, n), at::matmul(m, n)), 1e-5);
}

TEST_F(BatchedMatmul, WithoutGradModeNoGraphIsBuilt) {
  const auto a = at::randn({2, 3, 4}).requires_grad_(true);
  at::NoGradGuard no_grad;
  EXPECT_FALSE(batched_matmul(a, at::randn({2, 4, 5})).requires_grad());
}

TEST_F(BatchedMatmul, MismatchedInnerDimensionIsAnError) {
  EXPECT_ANY_THROW(batched_matmul(at::randn({2, 3, 4}), at::randn({2, 5, 6})));
}

}  // namespace
}  // namespace dnpo::model
