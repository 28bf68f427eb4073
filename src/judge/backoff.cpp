// Exponential backoff with equal jitter (see backoff.h).
#include "dnpo/judge/backoff.h"

#include <algorithm>
#include <cmath>

#include "dnpo/common/counter_rng.h"

namespace dnpo::judge {

double backoff_delay_s(const BackoffPolicy& policy,
                       int retry,
                       std::uint64_t key,
                       std::optional<double> retry_after_s) {
  const double growth = std::pow(policy.multiplier, std::max(0, retry));
  const double cap = std::max(0.0, std::min(policy.max_s, policy.base_s * growth));
  const double u = uniform01(key, static_cast<std::uint64_t>(std::max(0, retry)));
  double delay = cap * (0.5 + 0.5 * u);
  if (retry_after_s && std::isfinite(*retry_after_s)) {
    delay = std::max(delay, *retry_after_s);
  }
  return delay;
}

}  // namespace dnpo::judge
