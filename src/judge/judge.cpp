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

config::JudgeConfig rank_share(const config::JudgeConfig& cfg, int rank, int world) {
  DNPO_CHECK(world >= 1 && rank >= 0 && rank < world, "rank {} of {}", rank, world);
  config::JudgeConfig mine = cfg;
  if (cfg.backend != "http") {
    return mine;  // the rule judge runs in-process: nothing to share
  }
  DNPO_CHECK_WITH(ConfigError,
                  cfg.concurrency >= world,
                  "judge.concurrency = {} is job-wide and below the {} ranks, each of which needs "
                  "a request in flight; hint: set it to at least {}",
                  cfg.concurrency,
                  world,
                  world);
  mine.concurrency = cfg.concurrency / world + (rank < cfg.concurrency % world ? 1 : 0);
  mine.requests_per_minute = cfg.requests_per_minute / world;
  return mine;
}

std::unique_ptr<Judge> make_judge(const config::JudgeConfig& cfg, VerdictBook* cache) {
  if (cfg.backend == "rule") {
    return std::make_unique<RuleJudge>(cfg.imperfection, cfg.seed, cache);
  }
  DNPO_CHECK_WITH(ConfigError,
                  cfg.backend == "http",
                  "judge.backend = \"{}\": expected \"rule\" or \"http\"",
                  cfg.backend);
  return std::make_unique<JudgeClient>(cfg, cache);
}

}  // namespace dnpo::judge
