// make_judge(): the backend [judge] names, and outcome names.
#include "dnpo/judge/judge.h"

#include "dnpo/common/error.h"
#include "dnpo/judge/client.h"
#include "dnpo/judge/rule_judge.h"

namespace dnpo::judge {

const char* outcome_name(Outcome outcome) {
  switch (outcome) {
    case Outcome::kScored:
      return "scored";
    case Outcome::kSpinFallback:
      return "spin_fallback";
    case Outcome::kDropped:
      return "dropped";
    case Outcome::kFailed:
      return "failed";
  }
  return "?";
}

std::unique_ptr<Judge> make_judge(const config::JudgeConfig& cfg, JudgeCache* cache) {
  if (cfg.backend == "rule") {
    return std::make_unique<RuleJudge>(cfg.imperfection, cfg.seed, cache);
  }
  DNPO_CHECK_WITH(ConfigError,
                  cfg.backend == "http",
                  "judge.backend = \"",
                  cfg.backend,
                  "\": expected \"rule\" or \"http\"");
  return std::make_unique<JudgeClient>(cfg, cache);
}

}  // namespace dnpo::judge
