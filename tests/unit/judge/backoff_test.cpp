// The retry schedule: exponential caps, equal jitter, a pure function of its key, Retry-After.
#include "dnpo/judge/backoff.h"

#include <cmath>

#include <gtest/gtest.h>

namespace dnpo::judge {
namespace {

TEST(Backoff, DelaysGrowWithinJitterBoundsAndCap) {
  const BackoffPolicy p{0.5, 8.0, 2.0};
  for (std::uint64_t key = 0; key < 50; ++key) {
    for (int retry = 0; retry < 8; ++retry) {
      const double cap = std::min(8.0, 0.5 * std::pow(2.0, retry));
      const double d = backoff_delay_s(p, retry, key);
      EXPECT_GE(d, cap / 2) << "retry " << retry;
      EXPECT_LE(d, cap) << "retry " << retry;
      EXPECT_EQ(d, backoff_delay_s(p, retry, key));  // pure
    }
  }
  EXPECT_NE(backoff_delay_s(p, 3, 1), backoff_delay_s(p, 3, 2));  // jitter differs by key
}

TEST(Backoff, RetryAfterIsAFloor) {
  const BackoffPolicy p{0.5, 8.0, 2.0};
  EXPECT_EQ(backoff_delay_s(p, 0, 9, 20.0), 20.0);  // beyond max_s: still honoured
  EXPECT_EQ(backoff_delay_s(p, 4, 9, 0.0), backoff_delay_s(p, 4, 9));
  EXPECT_EQ(backoff_delay_s(BackoffPolicy{0, 0, 2}, 3, 1), 0.0);
}

}  // namespace
}  // namespace dnpo::judge
