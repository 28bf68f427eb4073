// The rule judge: the demo world's verifier (data::verify_answer) behind the Judge interface. It
// reads the task from the question text alone. Optionally imperfect like a real judge: a seeded
// fraction of scores is replaced by another score, a pure function of (seed, question, answer).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "dnpo/judge/judge.h"

namespace dnpo::judge {

class RuleJudge : public Judge {
 public:
  /// `imperfection` in [0, 1]: the fraction of scores perturbed.
  RuleJudge(double imperfection, std::uint64_t seed, VerdictBook* cache = nullptr);

  /// 0..100 for a demo-world question; perturbed when the (seed, question, answer) draw falls
  /// under `imperfection` (then uniform over the other 100 scores). Pure and thread-safe.
  /// Throws DataError for a question that is not a demo-world prompt.
  int score(const std::string& question, const std::string& answer) const;

  /// Futures are ready on return. A question that is no demo-world prompt resolves to a future
  /// holding the DataError.
  std::vector<std::future<JudgeResult>> submit(std::vector<JudgeRequest> batch) override;
  JudgeStats stats() const override;

 private:
  double imperfection_;
  std::uint64_t seed_;
  VerdictBook* cache_;
  std::atomic<std::int64_t> submitted_{0};
  std::atomic<std::int64_t> scored_{0};
  std::atomic<std::int64_t> cache_hits_{0};
};

}  // namespace dnpo::judge
