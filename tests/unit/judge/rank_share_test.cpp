// rank_share(): the job-wide judge budget split over the ranks.
#include <string>

#include <gtest/gtest.h>

#include "dnpo/common/error.h"
#include "dnpo/judge/judge.h"

namespace dnpo::judge {
namespace {

TEST(RankShare, SplitsConcurrencyAndRateSoTheJobTotalHolds) {
  config::JudgeConfig cfg;
  cfg.backend = "http";
  cfg.concurrency = 7;
  cfg.requests_per_minute = 900;
  int total = 0;
  double rate = 0;
  for (int rank = 0; rank < 3; ++rank) {
    const auto mine = rank_share(cfg, rank, 3);
    EXPECT_EQ(mine.concurrency, rank == 0 ? 3 : 2) << "rank " << rank;
    total += mine.concurrency;
    rate += mine.requests_per_minute;
    EXPECT_EQ(mine.base_url, cfg.base_url);
  }
  EXPECT_EQ(total, 7);
  EXPECT_DOUBLE_EQ(rate, 900);
  cfg.requests_per_minute = 0;  // no limit stays no limit
  EXPECT_EQ(rank_share(cfg, 1, 3).requests_per_minute, 0);
  EXPECT_EQ(rank_share(cfg, 0, 1).concurrency, 7);
}

TEST(RankShare, RefusesFewerSlotsThanRanks) {
  config::JudgeConfig cfg;
  cfg.backend = "http";
  cfg.concurrency = 2;
  try {
    rank_share(cfg, 0, 4);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("judge.concurrency = 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("4 ranks"), std::string::npos) << e.what();
  }
  cfg.backend = "rule";  // in-process: nothing is shared
  EXPECT_EQ(rank_share(cfg, 3, 4).concurrency, 2);
}

}  // namespace
}  // namespace dnpo::judge
