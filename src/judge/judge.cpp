// make_judge(): the backend [judge] names, and outcome names.
#include "dnpo/judge/judge.h"

#include "dnpo/common/error.h"
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
  }
  return "?";
}

std::unique_ptr<Judge> make_judge(const config::JudgeConfig& cfg, JudgeCache* cache) {
  if (cfg.backend == "rule") {
    return std::make_unique<RuleJudge>(cfg.imperfection, cfg.seed, cache);
  }
  DNPO_FAIL(ConfigError,
            "judge.backend = \"",
            cfg.backend,
            "\": not available in this build; expected \"rule\"");
}

}  // namespace dnpo::judge
