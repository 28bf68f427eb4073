// SPIN and DSL labeling with its counts; see labeling.h.
#include "dnpo/selfplay/labeling.h"

#include "dnpo/common/error.h"
#include "dnpo/train/dnpo_loss.h"

namespace dnpo::selfplay {

LabeledPairs label_pairs(const std::vector<data::PromptRecord>& records,
                         const std::vector<SelfplaySample>& samples,
                         Labeling labeling,
                         double threshold) {
  LabeledPairs out;
  auto& c = out.counts;
  double sum_generated = 0;
  double sum_human = 0;
  std::int64_t scored_generated = 0;
  std::int64_t scored_human = 0;
  for (const auto& s : samples) {
    DNPO_INTERNAL_ASSERT(s.generated && s.generated_verdict && s.human_verdict);
    DNPO_INTERNAL_ASSERT(s.index >= 0 && s.index < static_cast<std::int64_t>(records.size()));
    const auto& record = records[static_cast<std::size_t>(s.index)];
    const auto& g = *s.generated_verdict;
    const auto& h = *s.human_verdict;
    const bool g_scored = g.outcome == judge::Outcome::kScored;
    const bool h_scored = h.outcome == judge::Outcome::kScored;
    ++c.prompts;
    if (g_scored) {
      sum_generated += g.score;
      ++scored_generated;
    }
    if (h_scored) {
      sum_human += h.score;
      ++scored_human;
    }
    const bool identical = s.answer == record.answer;
    if (g_scored && h_scored) {
      if (g.score > h.score) {
        ++c.win;
      } else if (g.score < h.score) {
        ++c.loss;
      } else {
        ++c.tie;
        c.tie_different_text += identical ? 0 : 1;
      }
    }
    if (identical) {
      ++c.identical;  // no signal: both sides of the margin are the same sequence
      continue;
    }
    bool generated_positive = false;
    if (labeling == Labeling::kDsl) {
      const bool dropped =
          g.outcome == judge::Outcome::kDropped || h.outcome == judge::Outcome::kDropped;
      if (dropped) {
        ++c.dropped;
        continue;
      }
      if (g_scored && h_scored) {
        generated_positive = train::dsl_generated_is_positive(g.score, h.score, threshold);
      } else {
        ++c.spin_fallback;  // never flip on a failed judgement
      }
    }
    data::PairRecord pair;
    pair.id = record.id;
    pair.prompt = record.prompt;
    pair.chosen = generated_positive ? s.answer : record.answer;
    pair.rejected = generated_positive ? record.answer : s.answer;
    if (g_scored && h_scored) {
      pair.score_chosen = generated_positive ? g.score : h.score;
      pair.score_rejected = generated_positive ? h.score : g.score;
    }
    c.generated_positive += generated_positive ? 1 : 0;
    out.pairs.push_back(std::move(pair));
  }
  c.pairs = static_cast<std::int64_t>(out.pairs.size());
  c.mean_score_generated =
      scored_generated > 0 ? sum_generated / static_cast<double>(scored_generated) : 0.0;
  c.mean_score_human = scored_human > 0 ? sum_human / static_cast<double>(scored_human) : 0.0;
  return out;
}

}  // namespace dnpo::selfplay
