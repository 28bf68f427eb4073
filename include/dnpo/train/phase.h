// Names the phases of a training step for LibTorch's profiler (dnpo_step_bench --profile) and,
// with run.phase_times, times them on the wall clock. Diagnosis only: on a GPU the timing waits
// for the device at every boundary.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/record_function.h>
#include <c10/core/Device.h>

#include "dnpo/common/timer.h"

namespace dnpo::train {

/// A phase ends when the next begins or at end(); a phase begun once per micro-batch adds up
/// over the step. Free when neither the profiler nor the timing is on.
class Phase {
 public:
  Phase(bool timed, const at::Device& device) : timed_(timed), device_(device) {}

  /// name: a static string "dnpo::<phase>" (the profiler keeps the pointer).
  void begin(const char* name);
  void end();
  /// metrics.jsonl fields: "ms_<phase>" (the "dnpo::" dropped), in order of first use.
  void append_times(std::vector<std::pair<std::string, double>>& values) const;

 private:
  void close_timed();

  bool timed_;
  at::Device device_;
  std::optional<at::RecordFunction> current_;
  const char* name_ = nullptr;  // the phase being timed
  Timer clock_;
  std::vector<std::pair<std::string, double>> ms_;
};

}  // namespace dnpo::train
