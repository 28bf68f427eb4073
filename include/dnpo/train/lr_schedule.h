// Learning-rate schedule: linear warm-up to the peak, then linear decay (or constant).
#pragma once

#include <algorithm>
#include <cstdint>

#include "dnpo/config/config.h"

namespace dnpo::train {

/// lr at optimizer step `step` (0-based) of `total_steps`; warm-up = ceil(warmup_ratio × total).
inline double lr_at(const config::TrainConfig& cfg, std::int64_t step, std::int64_t total_steps) {
  const auto warmup =
      static_cast<std::int64_t>(cfg.warmup_ratio * static_cast<double>(total_steps) + 0.999999);
  if (warmup > 0 && step < warmup) {
    return cfg.lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  }
  if (cfg.lr_schedule == "constant") {
    return cfg.lr;
  }
  const auto decay_steps = std::max<std::int64_t>(1, total_steps - warmup);
  const double progress =
      std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(decay_steps));
  return cfg.lr * (1.0 - progress * (1.0 - cfg.min_lr_ratio));
}

}  // namespace dnpo::train
