// Fault draws of the test server (see faults.h).
#include "dnpo/judge/faults.h"

#include "dnpo/common/counter_rng.h"

namespace dnpo::judge {

const char* fault_name(Fault fault) {
  switch (fault) {
    case Fault::kNone:
      return "ok";
    case Fault::kTooManyRequests:
      return "429";
    case Fault::kServerError:
      return "500";
    case Fault::kDrop:
      return "drop";
    case Fault::kSlow:
      return "slow";
    case Fault::kMalformed:
      return "malformed";
    case Fault::kQuota:
      return "quota";
    case Fault::kProse:
      return "prose";
  }
  return "?";
}

Fault draw_fault(const FaultOptions& options, std::uint64_t body_hash, int attempt) {
  if (options.first_k > 0 && attempt >= options.first_k) {
    return Fault::kNone;
  }
  std::uint64_t key = fold_key(mix64(options.seed), body_hash);
  key = fold_key(key, static_cast<std::uint64_t>(attempt));
  const double u = uniform01(key, 0);
  double edge = 0;
  const std::pair<double, Fault> kinds[] = {{options.p_429, Fault::kTooManyRequests},
                                            {options.p_500, Fault::kServerError},
                                            {options.p_drop, Fault::kDrop},
                                            {options.p_slow, Fault::kSlow},
                                            {options.p_malformed, Fault::kMalformed},
                                            {options.p_quota, Fault::kQuota},
                                            {options.p_prose, Fault::kProse}};
  for (const auto& [p, fault] : kinds) {
    edge += p;
    if (u < edge) {
      return fault;
    }
  }
  return Fault::kNone;
}

}  // namespace dnpo::judge
