// dist.reshard_after_forward = "auto"; see keep_gathered.h.
#include "dnpo/train/keep_gathered.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>
#include <fmt/format.h>

namespace dnpo::train {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// MemAvailable of /proc/meminfo in bytes; 0 when unreadable.
double available_host_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key;
    double kib = 0;
    if (fields >> key >> kib && key == "MemAvailable:") {
      return kib * 1024.0;
    }
  }
  return 0;
}

// The per-rank budget "auto" compares with, in bytes: the configured one, else half of the
// node's available memory shared by its ranks; 0 on a GPU without a configured budget.
double budget_bytes(const config::RunConfig& cfg, const dist::Comm& comm) {
  if (cfg.dist.keep_gathered_budget_gb > 0) {
    return cfg.dist.keep_gathered_budget_gb * kGiB;
  }
  if (comm.device().is_cuda()) {
    return 0;
  }
  return 0.5 * available_host_bytes() / comm.local_world_size();
}

}  // namespace

KeepGatheredCost keep_gathered_cost(const config::RunConfig& cfg,
                                    std::int64_t policy_parameters,
                                    int world_size) {
  const auto& m = cfg.model;
  const std::int64_t dtype_bytes = cfg.train.dtype == "bf16" ? 2 : 4;
  const bool pairs = cfg.train.loss != "sft";
  const std::int64_t head_parameters =
      cfg.train.loss == "npo" && !cfg.npo.fixed_noise ? m.hidden_size * m.vocab_size : 0;
  KeepGatheredCost cost;
  // The policy whole in train.dtype and its fp32 gradient sum; a pair stage's frozen reference
  // (gathered once per stage); NPO's noise head likewise.
  cost.gathered_weights = policy_parameters * (dtype_bytes + 4) +
                          (pairs ? policy_parameters * dtype_bytes : 0) +
                          head_parameters * (dtype_bytes + 4);
  // Autograd keeps about 16 hidden-sized and 3 intermediate-sized values per token and layer
  // (norms, q/k/v/o, the MLP's three projections and SwiGLU), in fp32 where train.dtype is.
  const std::int64_t tokens =
      static_cast<std::int64_t>(cfg.train.micro_batch_size) * (pairs ? 2 : 1) * cfg.data.max_length;
  const std::int64_t per_token_layer = 16 * m.hidden_size + 3 * m.intermediate_size;
  cost.activations = tokens * m.num_hidden_layers * per_token_layer * 4 +
                     tokens * m.vocab_size * 4 * 2;  // logits and their log-softmax
  // The rank's shard: fp32 masters, gradients and optimizer state of what trains, the frozen
  // reference's fp32 values.
  const std::int64_t optimizer_bytes = cfg.train.optimizer == "rmsprop" ? 4 : 8;
  const std::int64_t trained = policy_parameters + head_parameters;
  cost.shard = (trained * (4 + 4 + optimizer_bytes) + (pairs ? policy_parameters * 4 : 0)) /
               std::max(world_size, 1);
  return cost;
}

bool keeps_gathered(const KeepGatheredCost& cost, double budget_bytes) {
  return static_cast<double>(cost.need()) <= budget_bytes &&
         cost.gathered_weights <= kKeepGatheredMaxShardMultiple * cost.shard;
}

KeepGathered decide_keep_gathered(const config::RunConfig& cfg,
                                  dist::Comm& comm,
                                  std::int64_t policy_parameters) {
  const auto& setting = cfg.dist.reshard_after_forward;
  if (setting != "auto") {
    const bool keep = setting == "false";
    return {keep,
            fmt::format("dist.reshard_after_forward = \"{}\": units {}",
                        setting,
                        keep ? "kept gathered through each step" : "resharded after forward")};
  }
  if (comm.world_size() == 1) {
    return {false, "one rank: every unit is whole, nothing is gathered"};
  }
  const auto cost = keep_gathered_cost(cfg, policy_parameters, comm.world_size());
  const double budget = budget_bytes(cfg, comm);
  // Every rank must choose alike (the number of all-gathers differs): keep only if all can.
  auto ranks_that_fit = at::full({1},
                                 keeps_gathered(cost, budget) ? 1.0 : 0.0,
                                 at::TensorOptions().dtype(at::kDouble).device(comm.device()));
  comm.all_reduce_sum(ranks_that_fit).wait();
  const bool keep = ranks_that_fit.item<double>() == comm.world_size();
  return {keep,
          fmt::format("dist.reshard_after_forward = \"auto\": keeping units gathered needs ~{:.2f} "
                      "GiB per rank, the budget is {:.2f} GiB{}; the gathered copies are {:.1f}× "
                      "the rank's shard of the model state (at most {}×): units {}",
                      static_cast<double>(cost.need()) / kGiB,
                      budget / kGiB,
                      cfg.dist.keep_gathered_budget_gb > 0 ? " (dist.keep_gathered_budget_gb)"
                      : comm.device().is_cuda()
                          ? " (set dist.keep_gathered_budget_gb to allow it on a GPU)"
                          : " (half of the memory available)",
                      static_cast<double>(cost.gathered_weights) /
                          static_cast<double>(std::max<std::int64_t>(cost.shard, 1)),
                      kKeepGatheredMaxShardMultiple,
                      keep ? "kept gathered through each step" : "resharded after forward")};
}

}  // namespace dnpo::train
