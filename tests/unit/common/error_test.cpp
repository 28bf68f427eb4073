// DNPO_CHECK builds typed errors with file:line and the registered rank.
#include "dnpo/common/error.h"

#include <gtest/gtest.h>

#include "expect_error.h"

namespace dnpo {
namespace {

TEST(Error, CheckThrowsTypedErrorWithLocationAndRank) {
  set_error_rank(3);
  EXPECT_ERROR(
      ConfigError,
      [] {
        DNPO_CHECK_WITH(ConfigError, 1 + 1 == 3, "bad value for 'train.lr': {}; expected > 0", 5);
      },
      "bad value for 'train.lr': 5; expected > 0",
      "error_test.cpp:",
      "[rank 3]");
  set_error_rank(-1);
}

TEST(Error, PassingCheckDoesNotEvaluateMessage) {
  int evaluated = 0;
  // The analyzer sees the constant-true check skip the message and calls `count` a dead store;
  // that the message is never built is exactly what this test checks.
  // NOLINTNEXTLINE(clang-analyzer-deadcode.DeadStores): deliberately never evaluated
  auto count = [&] { return ++evaluated; };
  DNPO_CHECK(true, "never built {}", count());
  EXPECT_EQ(evaluated, 0);
}

}  // namespace
}  // namespace dnpo
