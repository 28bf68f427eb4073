// The sizes a checkpoint declares, checked before anything is allocated for them: extents whose
// element count or bytes overflow, or exceed the file, are damage named by `where`.
#include "extent.h"

#include <cstdint>
#include <limits>

#include <gtest/gtest.h>

#include "dnpo/common/error.h"
#include "expect_error.h"

namespace dnpo::ckpt::extent {
namespace {

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;

TEST(Extent, ShapesThatFitTheFileAreAccepted) {
  EXPECT_EQ(checked_shape({64, 32}, 4, kMiB, "w"), (std::vector<std::int64_t>{64, 32}));
  EXPECT_EQ(checked_shape({}, 8, 8, "w"), std::vector<std::int64_t>{});  // a scalar
  EXPECT_EQ(checked_shape({0, 4}, 4, 0, "w"), (std::vector<std::int64_t>{0, 4}));
  // an empty dataset holds no data whatever its other extents say
  EXPECT_EQ(checked_shape({0, std::uint64_t{1} << 62}, 4, 0, "w")[1], std::int64_t{1} << 62);
  // ... and counts 0 elements, though the others' product overflows (found by fuzz_checkpoint)
  const auto empty = checked_shape({std::uint64_t{1} << 62, std::uint64_t{1} << 62, 0}, 4, 0, "w");
  EXPECT_EQ(numel_of(empty), 0);
  EXPECT_EQ(chunk_count(numel_of(empty), 1024), 0);
  EXPECT_EQ(checked_shape({kMiB / 4}, 4, kMiB, "w")[0], static_cast<std::int64_t>(kMiB / 4));
}

TEST(Extent, OverflowsAndDataBeyondTheFileAreDamage) {
  const auto max = std::numeric_limits<std::uint64_t>::max();
  for (const auto& dims : std::vector<std::vector<std::uint64_t>>{
           {kMiB / 4 + 1},                                    // one element past the file
           {std::uint64_t{1} << 31, std::uint64_t{1} << 31},  // 2^62 elements
           {std::uint64_t{1} << 32, std::uint64_t{1} << 32},  // wraps to 0 in 64 bits
           {max},
           {0, max}}) {  // empty, but an extent that is not an int64
    SCOPED_TRACE(::testing::PrintToString(dims));
    EXPECT_ERROR(
        CheckpointError,
        [&] { checked_shape(dims, 4, kMiB, "checkpoint a.h5, tensor w"); },
        "checkpoint a.h5, tensor w: dataset extents [",
        "do not fit in the file's 1048576 bytes; the file is damaged");
  }
  // elements of no size
  EXPECT_ERROR(
      CheckpointError,
      [] { checked_shape({4}, 0, kMiB, "checkpoint a.h5, tensor w"); },
      "checkpoint a.h5, tensor w: dataset extents [4] of 0-byte elements");
}

TEST(Extent, ChecksumsMustCoverEveryChunk) {
  EXPECT_EQ(chunk_count(0, 4), 0);
  EXPECT_EQ(chunk_count(8, 4), 2);
  EXPECT_EQ(chunk_count(9, 4), 3);
  const auto max = std::numeric_limits<std::int64_t>::max();
  EXPECT_EQ(chunk_count(max, max), 1);  // (numel + chunk - 1) would overflow
  EXPECT_EQ(chunk_count(max - 1, max), 1);
  EXPECT_NO_THROW(check_checksums({3, 5}, {4}, 4, "w"));
  EXPECT_ERROR(
      CheckpointError,
      [] {
        check_checksums({3, 5}, {3}, 4, "checkpoint a.h5, tensor w");
      },
      "checkpoint a.h5, tensor w: checksum dataset has shape [3]; expected [4]");
  EXPECT_THROW(check_checksums({3, 5}, {4, 1}, 4, "w"), CheckpointError);
  EXPECT_THROW(check_checksums({3, 5}, {4}, 0, "w"), CheckpointError);
}

}  // namespace
}  // namespace dnpo::ckpt::extent
