// Fault injection of the test server (`dnpo_judge serve`): which fault, if any, one attempt
// meets. Every draw is a pure function of (seed, request body hash, attempt number for that
// body), so a test run is reproducible request by request.
#pragma once

#include <cstdint>

namespace dnpo::judge {

enum class Fault {
  kNone,
  kTooManyRequests,  ///< 429 with Retry-After
  kServerError,      ///< 500
  kDrop,             ///< the connection is closed without a reply
  kSlow,             ///< the reply body trickles out over FaultOptions::slow_ms
  kMalformed,        ///< 200 with a truncated JSON body
  kQuota,            ///< 429 "insufficient_quota" (OpenAI's exhausted quota; not retryable)
  kProse,            ///< 200, well-formed, but the judge wrote prose instead of a score
};
/// "ok", "429", "500", "drop", "slow", "malformed", "quota", "prose"
const char* fault_name(Fault fault);

/// Fractions of attempts meeting each fault (their sum must be <= 1).
struct FaultOptions {
  std::uint64_t seed = 0;
  double p_429 = 0;
  double p_500 = 0;
  double p_drop = 0;
  double p_slow = 0;
  double p_malformed = 0;
  double p_quota = 0;
  double p_prose = 0;
  int first_k = 0;           ///< faults only on attempts 0..first_k-1 of a body; 0 = on all
  double retry_after_s = 1;  ///< Retry-After sent with 429 (whole seconds, rounded up)
  int slow_ms = 2000;        ///< how long a slow body takes
  int latency_ms = 0;        ///< added before every reply
};

/// The fault attempt `attempt` (0-based) of the body hashed `body_hash` meets. Pure.
Fault draw_fault(const FaultOptions& options, std::uint64_t body_hash, int attempt);

}  // namespace dnpo::judge
