// Phase: profiler scopes and wall-clock times of a step's phases.
#include "dnpo/train/phase.h"

#include <algorithm>

#include <ATen/ATen.h>

namespace dnpo::train {

void Phase::begin(const char* name) {
  close_timed();
  current_.emplace(at::RecordScope::USER_SCOPE);  // ends the previous phase first
  if (current_->isActive()) {
    current_->before(name);
  }
  if (timed_) {
    name_ = name;
    clock_.reset();
  }
}

void Phase::end() {
  close_timed();
  current_.reset();
}

void Phase::append_times(std::vector<std::pair<std::string, double>>& values) const {
  for (const auto& [name, ms] : ms_) {
    values.emplace_back("ms_" + name, ms);
  }
}

void Phase::close_timed() {
  if (name_ == nullptr) {
    return;
  }
  if (!device_.is_cpu()) {
    // one read waits for the work queued so far on the device's current stream
    (void)at::zeros({}, at::TensorOptions(device_)).item<float>();
  }
  std::string name(name_);
  name = name.substr(name.rfind(':') + 1);
  const auto it =
      std::find_if(ms_.begin(), ms_.end(), [&](const auto& entry) { return entry.first == name; });
  (it == ms_.end() ? ms_.emplace_back(name, 0.0).second : it->second) += clock_.millis();
  name_ = nullptr;
}

}  // namespace dnpo::train
