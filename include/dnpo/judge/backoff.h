// The retry schedule of the judge client: exponential backoff with jitter, a pure function of
// (policy, retry number, key) so tests and reruns see the same delays.
#pragma once

#include <cstdint>
#include <optional>

namespace dnpo::judge {

struct BackoffPolicy {
  double base_s = 0.5;      ///< delay cap before the first retry
  double max_s = 30.0;      ///< cap on any delay
  double multiplier = 2.0;  ///< growth of the cap per retry
};

/// Seconds to wait before retry `retry` (0 = the first retry) of the request keyed `key`:
/// "equal jitter", cap = min(max_s, base_s * multiplier^retry), delay uniform in [cap/2, cap]
/// (the uniform is counter_rng's uniform01(key, retry)). When the server sent Retry-After,
/// the delay is at least that. Pure; never negative.
double backoff_delay_s(const BackoffPolicy& policy,
                       int retry,
                       std::uint64_t key,
                       std::optional<double> retry_after_s = std::nullopt);

}  // namespace dnpo::judge
