// What each selfplay.mode makes of an iteration t ≥ 1 — how its pairs are labeled, which
// objective trains on them, where NPO's noise comes from — as one table (modes.cpp; the same table
// is in docs/algorithm.md). Iteration 0 is SPIN with SPIN labels in every mode.
#pragma once

#include <cstdint>

#include "dnpo/config/config.h"
#include "dnpo/selfplay/labeling.h"

namespace dnpo::selfplay {

/// Where an iteration's noise scale s comes from.
enum class Noise {
  kNone,     ///< no noisy negative (the SPIN objective)
  kLearned,  ///< a learned noise head, unless npo.fixed_noise asks for s ≡ npo.fixed_sigma
  kFixed,    ///< s ≡ npo.fixed_sigma
};

/// What one iteration does.
struct IterationPlan {
  Labeling labeling;
  const char* objective;  ///< train.loss: "spin" | "npo"
  Noise noise;
};

/// The plan of iteration t under cfg.mode. Throws ConfigError on a mode the table lacks.
const IterationPlan& iteration_plan(const config::SelfplayConfig& cfg, std::uint64_t t);

/// "spin" | "dsl", as reports and logs name the labels.
const char* labeling_name(Labeling labeling);

/// The configuration iteration t trains with: train.loss from its plan, train.lr and
/// train.epochs from [selfplay], train.iteration = t (keys every draw), npo.fixed_noise set
/// under a mode of fixed noise.
config::RunConfig iteration_config(const config::RunConfig& cfg, std::uint64_t t);

}  // namespace dnpo::selfplay
