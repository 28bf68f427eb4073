// The judge interface every backend implements (rule: in-process verifier; http: JudgeClient),
// its request/result types, outcome counters, and make_judge() choosing a backend from [judge].
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "dnpo/config/config.h"

namespace dnpo::judge {

class VerdictBook;

/// One answer to score (pointwise: docs/judge.md).
struct JudgeRequest {
  std::string question;
  std::string answer;
};

/// What became of a request. Retries exhausted, a non-retryable error, or an unparseable reply
/// give the outcome judge.failure_policy names; under "fail" a future throws JudgeError instead
/// (a callback receives kFailed).
enum class Outcome {
  kScored,        ///< `score` holds the judge's score on 0..100
  kSpinFallback,  ///< policy "spin": label this pair as SPIN would
  kDropped,       ///< policy "drop": drop this pair
  kFailed,        ///< policy "fail": the run must stop
};
/// "scored" | "spin_fallback" | "dropped" | "failed"
const char* outcome_name(Outcome outcome);

struct JudgeResult {
  Outcome outcome = Outcome::kScored;
  double score = 0;             ///< 0..100 (template range mapped); meaningful for kScored only
  int attempts = 0;             ///< HTTP attempts made (0: rule backend or a cache hit)
  bool cached = false;          ///< answered from the cache
  std::string error;            ///< why it was not scored (never holds the API key)
  std::uint64_t body_hash = 0;  ///< hash_text of the request body sent (http backend)
};

/// A judge's verdict on one answer, once it is in.
struct Verdict {
  Outcome outcome = Outcome::kScored;
  double score = 0;  ///< 0..100, when scored
};

/// Counts of every outcome since construction.
struct JudgeStats {
  std::int64_t submitted = 0;
  std::int64_t scored = 0;
  std::int64_t cache_hits = 0;
  std::int64_t spin_fallback = 0;
  std::int64_t dropped = 0;
  std::int64_t failed = 0;    ///< failures under policy "fail" (futures holding JudgeError)
  std::int64_t attempts = 0;  ///< HTTP requests sent, retries included
  std::int64_t retries = 0;
  std::int64_t pending = 0;  ///< submitted, not yet resolved
};

class Judge {
 public:
  virtual ~Judge() = default;
  /// Hands over a batch and returns at once; one future per request, in order. Thread-safe;
  /// never blocks on the network.
  virtual std::vector<std::future<JudgeResult>> submit(std::vector<JudgeRequest> batch) = 0;
  virtual JudgeStats stats() const = 0;
};

/// The [judge] one rank of `world` uses so that judge.concurrency and judge.requests_per_minute
/// hold for the whole job: each rank gets its share (the concurrency's remainder goes to the
/// first ranks). Throws ConfigError when the http backend's concurrency is below the rank count.
config::JudgeConfig rank_share(const config::JudgeConfig& cfg, int rank, int world);

/// The backend judge.backend names: "rule" (RuleJudge) or "http" (JudgeClient). A non-null
/// `cache` is consulted before and filled after scoring. Throws ConfigError / JudgeError.
std::unique_ptr<Judge> make_judge(const config::JudgeConfig& cfg, VerdictBook* cache = nullptr);

}  // namespace dnpo::judge
