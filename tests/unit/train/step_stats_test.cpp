// StepStats: host and tensor values add up per field, weights apply, and one process needs no
// communicator.
#include "dnpo/train/step_stats.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "one_process.h"

namespace dnpo::train {
namespace {

TEST(StepStats, HostAndTensorValuesAddUpPerField) {
  StepStats stats;
  stats.tokens.add(3.0);
  stats.tokens.add(4.0);
  stats.margin.add(at::tensor({0.5F, 1.5F}), 1.0);
  stats.margin.add(at::tensor({2.0F}), 0.0);  // a padding repeat counts nothing
  stats.margin.add(1.0);
  stats.correct.add(at::tensor({0.5F, -1.0F}) > 0, 2.0);
  stats.reduce(test::one_process());
  EXPECT_DOUBLE_EQ(stats.tokens.value(), 7.0);
  EXPECT_DOUBLE_EQ(stats.margin.value(), 3.0);
  EXPECT_DOUBLE_EQ(stats.correct.value(), 2.0);
  EXPECT_DOUBLE_EQ(stats.loss.value(), 0.0);
}

TEST(StepStats, SumsAccumulateInDoublePrecisionAcrossMicroBatches) {
  StepStats stats;
  // 2^24 + 1 is not a float: the running sum must not be one
  stats.loss.add(at::tensor(16777216.0F), 1.0);
  stats.loss.add(at::tensor(1.0F), 1.0);
  stats.reduce(test::one_process());
  EXPECT_EQ(stats.loss.value(), 16777217.0);
}

}  // namespace
}  // namespace dnpo::train
