// The rule judge: the demo verifier's scores, the seeded imperfection, the cache, the Judge
// interface; and the fault draws of the test server.
#include "dnpo/judge/rule_judge.h"

#include <map>
#include <string>

#include <gtest/gtest.h>

#include "dnpo/common/error.h"
#include "dnpo/data/demo_world.h"
#include "dnpo/judge/faults.h"
#include "dnpo/judge/verdict_book.h"

namespace dnpo::judge {
namespace {

TEST(RuleJudge, ScoresLikeTheVerifier) {
  const RuleJudge judge(0.0, 1);
  EXPECT_EQ(judge.score("123+456=", "579"), 100);
  EXPECT_EQ(judge.score("rev abcdef", "fedcba"), 100);
  EXPECT_EQ(judge.score("sort 52813", "12358"), 100);
  EXPECT_EQ(judge.score("123+456=", "578"), data::verify_answer("123+456=", "578"));
  EXPECT_EQ(judge.score("123+456=", ""), 0);
  EXPECT_THROW(judge.score("what is love?", "42"), DataError);
}

TEST(RuleJudge, ImperfectionPerturbsASeededFraction) {
  const RuleJudge perfect(0.0, 7);
  const RuleJudge imperfect(0.1, 7);
  const RuleJudge other_seed(0.1, 8);
  int perturbed = 0;
  int differ_by_seed = 0;
  constexpr int kN = 2000;
  for (int i = 0; i < kN; ++i) {
    const std::string q = std::to_string(i) + "+" + std::to_string(3 * i) + "=";
    const std::string a = std::to_string(4 * i + (i % 3));
    const int s = imperfect.score(q, a);
    EXPECT_EQ(s, imperfect.score(q, a));  // pure
    EXPECT_GE(s, 0);
    EXPECT_LE(s, 100);
    perturbed += s != perfect.score(q, a) ? 1 : 0;
    differ_by_seed += s != other_seed.score(q, a) ? 1 : 0;
  }
  EXPECT_NEAR(perturbed / static_cast<double>(kN), 0.1, 0.025);
  EXPECT_GT(differ_by_seed, 0);
  EXPECT_EQ(RuleJudge(1.0, 7).score("1+1=", "2") == 100, false);
}

TEST(RuleJudge, SubmitResolvesAtOnceAndUsesTheCache) {
  VerdictBook cache;
  RuleJudge judge(0.0, 1, &cache);
  auto first = judge.submit({{"1+1=", "2"}, {"rev ab", "ab"}, {"nonsense", "x"}});
  ASSERT_EQ(first.size(), 3U);
  const auto r0 = first[0].get();
  EXPECT_EQ(r0.outcome, Outcome::kScored);
  EXPECT_EQ(r0.score, 100);
  EXPECT_FALSE(r0.cached);
  EXPECT_EQ(first[1].get().score, data::verify_answer("rev ab", "ab"));
  EXPECT_THROW(first[2].get(), DataError);
  auto second = judge.submit({{"1+1=", "2"}});
  EXPECT_TRUE(second[0].get().cached);
  const auto s = judge.stats();
  EXPECT_EQ(s.submitted, 4);
  EXPECT_EQ(s.scored, 3);
  EXPECT_EQ(s.cache_hits, 1);
  EXPECT_EQ(cache.size(), 2U);
}

TEST(RuleJudge, MakeJudgeBuildsTheRuleBackend) {
  config::JudgeConfig cfg;
  auto judge = make_judge(cfg);
  EXPECT_EQ(judge->submit({{"2+2=", "4"}})[0].get().score, 100);
  EXPECT_STREQ(outcome_name(Outcome::kSpinFallback), "spin_fallback");
}

TEST(Faults, DrawsArePureAndFollowTheRates) {
  FaultOptions o;
  o.seed = 3;
  o.p_429 = 0.1;
  o.p_500 = 0.1;
  o.p_drop = 0.05;
  o.p_slow = 0.05;
  o.p_malformed = 0.0;
  std::map<Fault, int> counts;
  constexpr int kN = 10000;
  for (int i = 0; i < kN; ++i) {
    const Fault f = draw_fault(o, static_cast<std::uint64_t>(i) * 7919U, 0);
    EXPECT_EQ(f, draw_fault(o, static_cast<std::uint64_t>(i) * 7919U, 0));
    ++counts[f];
  }
  EXPECT_NEAR(counts[Fault::kNone] / double{kN}, 0.7, 0.03);
  EXPECT_NEAR(counts[Fault::kTooManyRequests] / double{kN}, 0.1, 0.02);
  EXPECT_NEAR(counts[Fault::kDrop] / double{kN}, 0.05, 0.015);
  EXPECT_EQ(counts[Fault::kMalformed], 0);
  o.first_k = 2;
  o.p_429 = 1.0;
  EXPECT_EQ(draw_fault(o, 5, 0), Fault::kTooManyRequests);
  EXPECT_EQ(draw_fault(o, 5, 1), Fault::kTooManyRequests);
  EXPECT_EQ(draw_fault(o, 5, 2), Fault::kNone);
  EXPECT_STREQ(fault_name(Fault::kSlow), "slow");
}

}  // namespace
}  // namespace dnpo::judge
