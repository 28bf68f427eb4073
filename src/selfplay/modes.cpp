// The table from self-play mode to what an iteration does; see modes.h.
#include "dnpo/selfplay/modes.h"

#include <array>
#include <string>

#include "dnpo/common/error.h"

namespace dnpo::selfplay {
namespace {

struct ModeRow {
  const char* mode;
  IterationPlan plan;  // of iterations t ≥ 1
};

// clang-format off
constexpr std::array<ModeRow, 5> kModes{{
    // mode          labels           objective  noise
    {"spin",        {Labeling::kSpin, "spin",   Noise::kNone}},
    {"dsl",         {Labeling::kDsl,  "spin",   Noise::kNone}},
    {"npo",         {Labeling::kSpin, "npo",    Noise::kLearned}},
    {"dnpo",        {Labeling::kDsl,  "npo",    Noise::kLearned}},
    {"fixed_noise", {Labeling::kDsl,  "npo",    Noise::kFixed}},
}};
// clang-format on

// Iteration 0 of every mode, the SPIN warm-up, and every iteration before selfplay.mode_from.
constexpr IterationPlan kWarmUp{Labeling::kSpin, "spin", Noise::kNone};

const IterationPlan& mode_plan(const std::string& mode) {
  for (const auto& row : kModes) {
    if (mode == row.mode) {
      return row.plan;
    }
  }
  throw ConfigError("selfplay.mode '" + mode + "' has no row in the table of modes");
}

}  // namespace

const IterationPlan& iteration_plan(const config::SelfplayConfig& cfg, std::uint64_t t) {
  const auto& plan = mode_plan(cfg.mode);
  return t < static_cast<std::uint64_t>(cfg.mode_from) ? kWarmUp : plan;
}

const char* labeling_name(Labeling labeling) {
  return labeling == Labeling::kDsl ? "dsl" : "spin";
}

config::RunConfig iteration_config(const config::RunConfig& cfg, std::uint64_t t) {
  auto out = cfg;
  out.train.loss = iteration_plan(cfg.selfplay, t).objective;
  out.train.lr = cfg.selfplay.lr;
  out.train.epochs = cfg.selfplay.epochs;
  out.train.max_steps = 0;
  out.train.iteration = t;
  // From the mode, not the iteration: every stage of a run records the same [npo] in its
  // checkpoints' resolved configuration, the warm-up's included.
  out.npo.fixed_noise = cfg.npo.fixed_noise || mode_plan(cfg.selfplay.mode).noise == Noise::kFixed;
  return out;
}

}  // namespace dnpo::selfplay
