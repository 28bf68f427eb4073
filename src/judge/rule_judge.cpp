// The rule judge: data::verify_answer behind the Judge interface, optionally imperfect.
#include "dnpo/judge/rule_judge.h"

#include <exception>

#include "dnpo/common/counter_rng.h"
#include "dnpo/data/demo_world.h"
#include "dnpo/judge/prompt_template.h"
#include "dnpo/judge/verdict_book.h"

namespace dnpo::judge {

RuleJudge::RuleJudge(double imperfection, std::uint64_t seed, VerdictBook* cache)
    : imperfection_(imperfection), seed_(seed), cache_(cache) {}

int RuleJudge::score(const std::string& question, const std::string& answer) const {
  const int truth = data::verify_answer(question, answer);
  if (imperfection_ <= 0) {
    return truth;
  }
  std::uint64_t key = fold_key(mix64(seed_), hash_text(question));
  key = fold_key(key, hash_text(answer));
  if (uniform01(key, 0) >= imperfection_) {
    return truth;
  }
  // Uniform over the 100 other scores of 0..100.
  const auto shift = 1 + static_cast<int>(random_bits(key, 1) % 100U);
  return (truth + shift) % 101;
}

std::vector<std::future<JudgeResult>> RuleJudge::submit(std::vector<JudgeRequest> batch) {
  constexpr const char* kModel = "rule";
  std::vector<std::future<JudgeResult>> out;
  out.reserve(batch.size());
  const std::string salt =
      "imperfection=" + std::to_string(imperfection_) + ";seed=" + std::to_string(seed_);
  const auto scope = judge_scope(kModel, salt);
  for (auto& request : batch) {
    ++submitted_;
    std::promise<JudgeResult> promise;
    try {
      JudgeResult result;
      if (auto hit =
              cache_ ? cache_->find({scope, request.question, request.answer}) : std::nullopt) {
        result.score = *hit;
        result.cached = true;
        ++cache_hits_;
      } else {
        result.score = score(request.question, request.answer);
        if (cache_ != nullptr) {
          cache_->insert({scope, request.question, request.answer}, result.score);
        }
      }
      ++scored_;
      promise.set_value(result);
    } catch (...) {
      promise.set_exception(std::current_exception());
    }
    out.push_back(promise.get_future());
  }
  return out;
}

JudgeStats RuleJudge::stats() const {
  JudgeStats s;
  s.submitted = submitted_;
  s.scored = scored_;
  s.cache_hits = cache_hits_;
  return s;
}

}  // namespace dnpo::judge
