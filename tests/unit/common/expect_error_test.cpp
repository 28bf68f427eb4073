// tests/common/expect_error.h: EXPECT_ERROR passes only when the call throws the named type with
// every part in its message, and error_of fails the test when nothing or another type is thrown.
#include "expect_error.h"

#include <stdexcept>
#include <string>

#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include "dnpo/common/error.h"

namespace dnpo {
namespace {

void throw_config_error() {
  throw ConfigError("config key 'train.lr': expected a float > 0");
}
void throw_data_error() {
  throw DataError("bad.jsonl:2: invalid JSON");
}
void throw_int() {
  throw 7;
}
void throw_nothing() {}

TEST(ExpectError, PassesOnTheTypeWithEveryPart) {
  EXPECT_ERROR(ConfigError, throw_config_error, "train.lr");
  EXPECT_ERROR(ConfigError, throw_config_error, "config key", std::string("a float > 0"));
  EXPECT_ERROR(Error, throw_config_error, "train.lr");  // a base class catches it too
  EXPECT_EQ(test::error_of<DataError>(throw_data_error), "bad.jsonl:2: invalid JSON");
  EXPECT_CONTAINS(std::string("abc"), "b");
}

TEST(ExpectError, FailsWhenNothingIsThrown) {
  EXPECT_NONFATAL_FAILURE(EXPECT_ERROR(ConfigError, throw_nothing, "x"), "nothing was thrown");
  EXPECT_NONFATAL_FAILURE(test::error_of<ConfigError>(throw_nothing), "nothing was thrown");
}

TEST(ExpectError, FailsOnAnotherType) {
  EXPECT_NONFATAL_FAILURE(EXPECT_ERROR(ConfigError, throw_data_error, "bad.jsonl"),
                          "expected a dnpo::ConfigError; it threw a dnpo::DataError");
  EXPECT_NONFATAL_FAILURE(EXPECT_ERROR(ConfigError, throw_int, "x"),
                          "not derived from std::exception");
}

TEST(ExpectError, FailsOnAMissingPart) {
  EXPECT_NONFATAL_FAILURE(EXPECT_ERROR(ConfigError, throw_config_error, "train.lrr"),
                          "missing: train.lrr");
  EXPECT_NONFATAL_FAILURE(EXPECT_ERROR(ConfigError, throw_config_error, "train.lr", "beta"),
                          "missing: beta");
  EXPECT_NONFATAL_FAILURE(EXPECT_CONTAINS(std::string("abc"), "d"), "missing: d");
}

}  // namespace
}  // namespace dnpo
