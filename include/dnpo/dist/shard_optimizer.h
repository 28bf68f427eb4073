// The optimizers of FSDP training: AdamW and RMSprop over the ranks' flat fp32 shards (ZeRO-3:
// each rank keeps the state of its own slices only). Written here rather than taken from
// torch::optim so that the state is plain named tensors a checkpoint saves and reshards, the same
// on LibTorch 1.13 and 2.x; the update rules are PyTorch's (tests compare with torch::optim).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dnpo/config/config.h"

namespace dnpo::dist {

class ShardOptimizer {
 public:
  /// cfg.optimizer "adamw" | "rmsprop", with cfg's hyperparameters; params are leaf tensors
  /// (the shards) whose .grad() holds this step's gradient.
  ShardOptimizer(const config::TrainConfig& cfg, std::vector<at::Tensor> params);

  void set_lr(double lr) {
    lr_ = lr;
  }
  /// One update of every parameter that has a gradient (the others keep their state).
  void step();
  /// Zeroes the gradients in place (their memory stays for the next step).
  void zero_grad();

  const std::vector<at::Tensor>& params() const {
    return params_;
  }
  /// Names of the per-parameter state buffers: {"exp_avg", "exp_avg_sq"} (AdamW) or
  /// {"square_avg"} (RMSprop); each has its parameter's shape.
  const std::vector<std::string>& state_names() const {
    return state_names_;
  }
  /// State buffer `name` of parameter i (zeros before the first step; allocated on first use).
  at::Tensor& state(std::size_t param, const std::string& name);
  /// Updates taken by parameter i (AdamW's bias correction uses it).
  std::int64_t steps_taken(std::size_t param) const {
    return steps_.at(param);
  }
  void set_steps_taken(std::size_t param, std::int64_t steps) {
    steps_.at(param) = steps;
  }

 private:
  void allocate_state(std::size_t param);
  config::TrainConfig cfg_;
  double lr_;
  std::vector<at::Tensor> params_;
  std::vector<std::string> state_names_;
  std::vector<std::vector<at::Tensor>> state_;  // [param][state name]
  std::vector<std::int64_t> steps_;
};

}  // namespace dnpo::dist
