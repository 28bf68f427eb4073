// BLEU and ROUGE-L on cases worked out by hand.
#include "dnpo/selfplay/text_metrics.h"

#include <cmath>

#include <gtest/gtest.h>

namespace dnpo::selfplay {
namespace {

// "the cat sat on the mat" vs "the cat is on the mat" as ids: the=1 cat=2 sat=3 on=4 mat=5 is=6.
const TokenIds kHyp{1, 2, 3, 4, 1, 5};
const TokenIds kRef{1, 2, 6, 4, 1, 5};

TEST(TextMetrics, BleuOfIdenticalTextIsOne) {
  EXPECT_DOUBLE_EQ(corpus_bleu({kRef, {7, 8, 9, 10}}, {kRef, {7, 8, 9, 10}}), 1.0);
}

TEST(TextMetrics, BleuIsTheGeometricMeanOfClippedPrecisions) {
  // 1-grams 5/6 (the ×2 clipped to 2), 2-grams 3/5, 3-grams 1/4 (on the mat), 4-grams 0/3.
  EXPECT_NEAR(corpus_bleu({kHyp}, {kRef}, 3), std::cbrt(5.0 / 6 * 3.0 / 5 * 1.0 / 4), 1e-12);
  EXPECT_EQ(corpus_bleu({kHyp}, {kRef}, 4), 0.0);
  // Clipping: "the the the" against "the cat" matches one "the" of three.
  EXPECT_NEAR(corpus_bleu({{1, 1, 1}}, {{1, 2}}, 1), 1.0 / 3, 1e-12);
}

TEST(TextMetrics, BleuSumsCountsOverTheCorpusAndPenalisesShortOutput) {
  // Two sentences: 1-gram matches (1 + 2) / (2 + 2) = 3/4.
  EXPECT_NEAR(corpus_bleu({{1, 9}, {3, 4}}, {{1, 2}, {3, 4}}, 1), 3.0 / 4, 1e-12);
  // Hypothesis of 2 tokens, reference of 4: precision 1, brevity exp(1 − 4/2).
  EXPECT_NEAR(corpus_bleu({{1, 2}}, {{1, 2, 3, 4}}, 1), std::exp(1.0 - 2.0), 1e-12);
  EXPECT_ANY_THROW(corpus_bleu({kHyp}, {}, 1));
}

TEST(TextMetrics, RougeLUsesTheLongestCommonSubsequence) {
  // LCS "the cat on the mat" = 5 of 6 on both sides.
  EXPECT_NEAR(rouge_l_f1(kHyp, kRef), 5.0 / 6, 1e-12);
  // LCS 2 ("1 3"), P = 2/3, R = 2/4: F = 2PR / (P + R) = 4/7.
  EXPECT_NEAR(rouge_l_f1({1, 2, 3}, {1, 7, 3, 8}), 4.0 / 7, 1e-12);
  EXPECT_EQ(rouge_l_f1({}, kRef), 0.0);
  EXPECT_EQ(rouge_l_f1({9}, kRef), 0.0);
  EXPECT_NEAR(mean_rouge_l({kHyp, kRef}, {kRef, kRef}), (5.0 / 6 + 1.0) / 2, 1e-12);
}

}  // namespace
}  // namespace dnpo::selfplay
