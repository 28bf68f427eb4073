// The check macros' messages: "{}" placeholders filled in order with what operator<< writes,
// braces escaped by doubling, and the message built only when the check fails.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "dnpo/common/error.h"
#include "expect_error.h"

namespace dnpo {
namespace {

TEST(FormatMessage, FillsPlaceholdersInOrderWithStreamedValues) {
  EXPECT_EQ(detail::format_message("{} of {} at {}", 3, std::string("ranks"), 2.5),
            "3 of ranks at 2.5");
  EXPECT_EQ(detail::format_message("no placeholders"), "no placeholders");
}

TEST(FormatMessage, DoubledBracesAreLiteral) {
  EXPECT_EQ(detail::format_message("expected {{\"id\": {}}}", "str"), "expected {\"id\": str}");
}

TEST(FormatMessage, MismatchedCountsLoseNothing) {
  EXPECT_EQ(detail::format_message("a {} b {}", 1), "a 1 b {}");
  EXPECT_EQ(detail::format_message("a {}", 1, 2), "a 12");
}

TEST(FormatMessage, CheckFormatsOnlyOnFailure) {
  int built = 0;
  const auto count = [&built] {
    ++built;
    return 7;
  };
  DNPO_CHECK(true, "never {}", count());
  EXPECT_EQ(built, 0);
  EXPECT_ERROR(
      ConfigError,
      ([&] { DNPO_CHECK_WITH(ConfigError, false, "train.epochs is {}; expected >= 1", count()); }),
      "train.epochs is 7; expected >= 1 (");
  EXPECT_EQ(built, 1);
}

}  // namespace
}  // namespace dnpo
