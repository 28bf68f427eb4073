// Labeling an iteration's answers into preference pairs (docs/algorithm.md): SPIN keeps the
// human answer positive; DSL makes the generated answer positive when s' − s >= threshold. Pairs
// whose two texts are equal are skipped and counted; a judge failure never flips a label (its
// outcome decides: SPIN label or dropped pair). Pure functions, the same on every rank.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dnpo/data/jsonl.h"
#include "dnpo/judge/judge.h"

namespace dnpo::selfplay {

using judge::Verdict;

/// One prompt of an iteration: the human answer and the policy's answer with their verdicts.
struct SelfplaySample {
  std::int64_t index = 0;            ///< global prompt index (keys the sampling draws)
  bool generated = false;            ///< `answer` holds the policy's answer
  std::vector<std::int64_t> tokens;  ///< the generated answer's tokens (EOS excluded)
  std::string answer;                ///< the same, detokenized
  bool finished = false;             ///< ended with EOS (else cut at sample.max_new_tokens)
  std::optional<Verdict> generated_verdict;
  std::optional<Verdict> human_verdict;
};

enum class Labeling {
  kSpin,  ///< human positive, generated negative
  kDsl,   ///< the higher-scoring answer positive (ties at threshold 0 go to the generated one)
};

struct LabelCounts {
  std::int64_t prompts = 0;
  std::int64_t pairs = 0;               ///< pairs made (trained on)
  std::int64_t generated_positive = 0;  ///< pairs with the generated answer positive (DSL flips)
  std::int64_t identical = 0;           ///< skipped: generated text equals the human text
  std::int64_t spin_fallback = 0;       ///< a judge failure: labeled as SPIN would
  std::int64_t dropped = 0;             ///< a judge failure under policy "drop"
  // Generated vs human by judge score, over prompts where both were scored (paper Fig. 1).
  std::int64_t win = 0;
  std::int64_t tie = 0;
  std::int64_t loss = 0;
  std::int64_t tie_different_text = 0;  ///< equal scores, different texts
  double mean_score_generated = 0;      ///< over scored generated answers
  double mean_score_human = 0;          ///< over scored human answers
};

struct LabeledPairs {
  std::vector<data::PairRecord> pairs;  ///< in prompt order; scores filled when both scored
  LabelCounts counts;
};

/// Labels every sample (all must be generated and judged). `records[s.index]` is its prompt.
/// Throws InternalError on a sample without its answer or verdicts.
LabeledPairs label_pairs(const std::vector<data::PromptRecord>& records,
                         const std::vector<SelfplaySample>& samples,
                         Labeling labeling,
                         double threshold);

}  // namespace dnpo::selfplay
