// What the benchmark binaries share: medians, peak memory, and synthetic SFT records / preference
// pairs (deterministic letters, so every run and every rank trains on the same data).
#pragma once

#include <algorithm>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <sys/resource.h>

#include "dnpo/data/jsonl.h"
#include "dnpo/data/jsonl_reader.h"
#include "dnpo/train/trainer.h"

namespace dnpo::bench {

/// This process's minor page faults so far (getrusage).
inline double minor_page_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_minflt);
}

/// The upper median of `values` (the middle one for an odd count); 0 for none.
inline double median(std::vector<double> values) {
  if (values.empty()) {
    return 0;
  }
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

inline double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  // glibc's rusage wraps ru_maxrss in an anonymous union (for x32); reading the POSIX field is
  // the only way to get the peak RSS.
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-union-access): system struct, see above
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

inline std::string text_of(int length, int seed) {
  std::string s;
  for (int i = 0; i < length; ++i) {
    s.push_back(static_cast<char>('a' + (i * 7 + seed * 13) % 26));
  }
  return s;
}

/// Trains `batch` synthetic samples: SFT records for loss "sft", else chosen/rejected pairs.
inline train::TrainSummary train_synthetic(
    train::Trainer& trainer, const std::string& loss, int batch, int prompt_len, int response_len) {
  const auto n = static_cast<std::size_t>(std::max(batch, 0));
  if (loss == "sft") {
    std::vector<data::PromptRecord> records;
    records.reserve(n);
    for (int i = 0; i < batch; ++i) {
      records.push_back(
          {std::to_string(i), text_of(prompt_len, i), text_of(response_len - 1, i + 1), "", ""});
    }
    return trainer.train_sft(records);
  }
  std::vector<data::PairRecord> pairs;
  pairs.reserve(n);
  for (int i = 0; i < batch; ++i) {
    pairs.push_back({std::to_string(i),
                     text_of(prompt_len, i),
                     text_of(response_len - 1, i + 1),
                     text_of(response_len - 1, i + 2),
                     std::nullopt,
                     std::nullopt});
  }
  return trainer.train_preference(pairs);
}

/// One JSON line per phase: its median wall time over the timed steps (the warm-up steps of
/// metrics.jsonl left out).
inline void print_phase_medians(const std::string& metrics_path,
                                int warmup_steps,
                                const nlohmann::json& config,
                                const std::string& name) {
  std::vector<std::pair<std::string, std::vector<double>>> by_phase;
  dnpo::data::for_each_jsonl_file(
      metrics_path, [&](const nlohmann::json& row, const data::JsonlLine&) {
        if (row.value("step", 0) <= warmup_steps) {
          return;
        }
        for (const auto& [key, value] : row.items()) {
          if (key.rfind("ms_", 0) != 0) {
            continue;
          }
          auto it = std::find_if(
              by_phase.begin(), by_phase.end(), [&](const auto& p) { return p.first == key; });
          if (it == by_phase.end()) {
            it = by_phase.insert(by_phase.end(), {key, {}});
          }
          it->second.push_back(value.get<double>());
        }
      });
  for (const auto& [key, values] : by_phase) {
    std::cout << nlohmann::json{{"name", name},
                                {"config", config},
                                {"metric", "phase_" + key.substr(3) + "_median"},
                                {"value", median(values)},
                                {"unit", "ms"}}
                     .dump()
              << "\n";
  }
}

}  // namespace dnpo::bench
