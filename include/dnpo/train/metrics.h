// Run directory outputs: metrics.jsonl (rank 0) and the progress display on stderr
// (a bar on a terminal, periodic log lines otherwise).
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace dnpo::train {

/// One flat JSON object per line: {"kind": ..., "iteration": ..., "step": ..., "<metric>": value}.
class MetricsWriter {
 public:
  MetricsWriter() = default;
  explicit MetricsWriter(const std::string& path);  ///< appends; "" = disabled
  void write(const std::string& kind,
             std::int64_t step,
             const std::vector<std::pair<std::string, double>>& values);

  /// The self-play iteration written into the following lines (default 0).
  void set_iteration(std::uint64_t iteration) {
    iteration_ = iteration;
  }
  /// Removes the lines of `kind` in the current iteration with a step after `step` (a resumed
  /// run redoes those steps).
  void drop_after(const std::string& kind, std::int64_t step);
  /// Empties the file (a run that starts over, not resumed).
  void restart();
  /// Appends one JSON object as a line (reports that are not per-step values).
  void write_object(const std::string& json_line);

 private:
  std::string path_;
  std::uint64_t iteration_ = 0;
  std::ofstream out_;
};

/// Progress of a long loop: a bar redrawn in place on a terminal, a log line every
/// `every` steps (and at the end) otherwise. Only rank 0 should own one.
class Progress {
 public:
  Progress(std::string label, std::int64_t total, int every);
  void update(std::int64_t done, const std::string& status);
  void finish();

 private:
  std::string label_;
  std::int64_t total_;
  int every_;
  bool tty_;
};

}  // namespace dnpo::train
