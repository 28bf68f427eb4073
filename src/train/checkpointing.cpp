// Stage state ⇄ ckpt::StateDict, and when to save; see checkpointing.h.
#include "dnpo/train/checkpointing.h"

#include <csignal>
#include <cstdio>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "dnpo/ckpt/checkpoint.h"
#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "dnpo/common/preemption.h"
#include "dnpo/common/timer.h"

namespace dnpo::train {
namespace {

// Pieces of one flat per-rank buffer (a shard, or an optimizer state of the shard's shape) under
// "<prefix>/<tensor name>": added to `out` for saving, or requested for loading.
void add_pieces(ckpt::StateDict& out,
                const std::string& prefix,
                const dist::ShardedUnit& unit,
                const at::Tensor& flat) {
  for (const auto& piece : unit.shard_pieces()) {
    const auto& spec = unit.specs()[piece.spec];
    out.add(prefix + "." + spec.name,
            spec.shape,
            piece.tensor_offset,
            // checkpoints are written from host memory (a copy of a GPU shard)
            flat.detach().narrow(0, piece.shard_offset, piece.numel).cpu());
  }
}

void request_pieces(ckpt::StateDict& out,
                    const std::string& prefix,
                    const dist::ShardedUnit& unit) {
  for (const auto& piece : unit.shard_pieces()) {
    const auto& spec = unit.specs()[piece.spec];
    out.add_request(prefix + "." + spec.name, spec.shape, piece.tensor_offset, piece.numel);
  }
}

void copy_pieces(const ckpt::StateDict& in,
                 const std::string& prefix,
                 const dist::ShardedUnit& unit,
                 const at::Tensor& flat) {
  at::NoGradGuard no_grad;
  for (const auto& piece : unit.shard_pieces()) {
    const auto& slice = in.at(prefix + "." + unit.specs()[piece.spec].name);
    if (piece.numel > 0) {
      flat.detach().narrow(0, piece.shard_offset, piece.numel).copy_(slice.data);
    }
  }
}

// The optimizer's parameters in order: (group prefix, unit) of every trained unit.
std::vector<std::pair<std::string, dist::ShardedUnit*>> trained_units(const StageState& state) {
  std::vector<std::pair<std::string, dist::ShardedUnit*>> out;
  for (const auto& group : state.trained) {
    for (auto* unit : group.units) {
      out.emplace_back(group.prefix, unit);
    }
  }
  return out;
}

std::string steps_key(const std::string& prefix, const dist::ShardedUnit& unit) {
  return "optimizer_steps." + prefix + "." + unit.name();
}

std::string carried_key(const CarriedState& carried) {
  return "carried." + carried.name();
}

LoopPosition position_from(const ckpt::StateDict& sd, const std::string& path) {
  const auto it = sd.blobs.find("loop");
  DNPO_CHECK_WITH(
      CheckpointError,
      it != sd.blobs.end(),
      "checkpoint {} has no training loop state (blob 'loop'); is it a dnpo training checkpoint?",
      path);
  return parse_loop_position(it->second, path);
}

// Index of a checkpoint name "ckpt-NNNNNNNNN"; -1 if it is not one.
std::int64_t name_index(const std::string& name) {
  long long index = -1;
  if (std::sscanf(name.c_str(), "ckpt-%lld", &index) != 1) {  // NOLINT(cert-err34-c)
    return -1;
  }
  return index;
}

}  // namespace

Preempted::Preempted(const std::string& path_, std::int64_t step_, int signal_number_)
    : std::runtime_error("preempted: checkpoint " + path_ + " saved at step " +
                         std::to_string(step_)),
      path(path_),
      step(step_),
      signal_number(signal_number_) {}

std::string save_stage(const std::string& dir,
                       const std::string& name,
                       const StageState& state,
                       bool keep,
                       int keep_last) {
  ckpt::StateDict sd;
  for (const auto& groups : {state.trained, state.frozen}) {
    for (const auto& group : groups) {
      for (const auto* unit : group.units) {
        add_pieces(sd, group.prefix, *unit, unit->shard());
      }
    }
  }
  if (state.optimizer != nullptr) {
    const auto units = trained_units(state);
    DNPO_INTERNAL_ASSERT(units.size() == state.optimizer->params().size());
    for (std::size_t i = 0; i < units.size(); ++i) {
      const auto& [prefix, unit] = units[i];
      for (const auto& s : state.optimizer->state_names()) {
        add_pieces(sd, "optimizer." + s + "." + prefix, *unit, state.optimizer->state(i, s));
      }
      sd.ints[steps_key(prefix, *unit)] = state.optimizer->steps_taken(i);
    }
  }
  sd.strings["stage"] = state.position.stage;
  sd.ints["steps_done"] = state.position.steps_done;
  for (const auto& [key, bytes] : state.blobs) {
    sd.blobs["stage." + key] = bytes;
  }
  if (state.carried != nullptr) {
    sd.blobs[carried_key(*state.carried)] = state.carried->encode();
  }
  sd.blobs["loop"] = loop_position_text(state.position);
  sd.blobs["config"] = state.resolved_config;
  ckpt::CommitOptions options;
  options.keep = keep;
  options.keep_last = keep_last;
  return ckpt::commit_checkpoint(dir, name, sd, options);
}

LoopPosition read_position(const std::string& path) {
  ckpt::StateDict wanted;  // no tensors: attributes and blobs only
  ckpt::load_into(path, wanted);
  return position_from(wanted, path);
}

std::map<std::string, std::string> read_stage_blobs(const std::string& path) {
  ckpt::StateDict wanted;
  ckpt::load_into(path, wanted);
  std::map<std::string, std::string> blobs;
  for (const auto& [key, bytes] : wanted.blobs) {
    if (key.rfind("stage.", 0) == 0) {
      blobs[key.substr(6)] = bytes;
    }
  }
  return blobs;
}

void load_stage(const std::string& path, StageState& state) {
  ckpt::StateDict wanted;
  for (const auto& groups : {state.trained, state.frozen}) {
    for (const auto& group : groups) {
      for (const auto* unit : group.units) {
        request_pieces(wanted, group.prefix, *unit);
      }
    }
  }
  const auto units = trained_units(state);
  if (state.optimizer != nullptr) {
    for (const auto& [prefix, unit] : units) {
      for (const auto& s : state.optimizer->state_names()) {
        request_pieces(wanted, "optimizer." + s + "." + prefix, *unit);
      }
    }
  }
  ckpt::load_into(path, wanted);
  const auto position = position_from(wanted, path);
  DNPO_CHECK_WITH(
      CheckpointError,
      position.stage == state.position.stage && position.iteration == state.position.iteration,
      "checkpoint {} is of stage '{}' iteration {}; this run is at stage '{}' iteration {}",
      path,
      position.stage,
      position.iteration,
      state.position.stage,
      state.position.iteration);
  for (const auto& groups : {state.trained, state.frozen}) {
    for (const auto& group : groups) {
      for (const auto* unit : group.units) {
        copy_pieces(wanted, group.prefix, *unit, unit->shard());
      }
    }
  }
  if (state.optimizer != nullptr) {
    for (std::size_t i = 0; i < units.size(); ++i) {
      const auto& [prefix, unit] = units[i];
      for (const auto& s : state.optimizer->state_names()) {
        copy_pieces(wanted, "optimizer." + s + "." + prefix, *unit, state.optimizer->state(i, s));
      }
      const auto it = wanted.ints.find(steps_key(prefix, *unit));
      DNPO_CHECK_WITH(CheckpointError,
                      it != wanted.ints.end(),
                      "checkpoint {} lacks the optimizer's step count of {}/{}",
                      path,
                      prefix,
                      unit->name());
      state.optimizer->set_steps_taken(i, it->second);
    }
  }
  if (state.carried != nullptr) {
    const auto it = wanted.blobs.find(carried_key(*state.carried));
    if (it != wanted.blobs.end()) {
      state.carried->decode(it->second, path);
    }
  }
  state.position = position;
  state.blobs.clear();
  for (const auto& [key, bytes] : wanted.blobs) {
    if (key.rfind("stage.", 0) == 0) {
      state.blobs[key.substr(6)] = bytes;
    }
  }
}

Checkpointer::Checkpointer(const config::CheckpointConfig& cfg, std::string dir, dist::Comm& comm)
    : cfg_(cfg), dir_(std::move(dir)), comm_(comm) {}

std::string Checkpointer::next_name() const {
  // Rank 0 reads the directory; everyone uses its answer (one sum: the others add 0).
  std::int64_t next = 0;
  if (comm_.rank() == 0) {
    const auto names = ckpt::list_checkpoints(dir_);
    for (const auto& name : names) {
      next = std::max(next, name_index(name) + 1);
    }
  }
  if (comm_.world_size() > 1) {
    auto t = at::tensor({static_cast<double>(next)}, at::kDouble);
    comm_.all_reduce_sum(t).wait();
    next = static_cast<std::int64_t>(t.item<double>());
  }
  return ckpt::checkpoint_name(next);
}

std::pair<bool, bool> Checkpointer::poll() const {
  // Any rank's signal or clock decides for all: one small all-reduce.
  std::vector<double> flags{
      preemption::requested_signal() != 0 ? 1.0 : 0.0,
      cfg_.every_minutes > 0 && since_save_.seconds() >= cfg_.every_minutes * 60.0 ? 1.0 : 0.0};
  if (comm_.world_size() > 1) {
    auto t = at::tensor(flags, at::kDouble);
    comm_.all_reduce_sum(t).wait();
    flags = {t[0].item<double>(), t[1].item<double>()};
  }
  return {flags[0] > 0, flags[1] > 0};
}

void Checkpointer::after_step(const StageState& state) {
  const auto& pos = state.position;
  const auto [stop, clock] = poll();
  if (stop) {
    const auto path = save_stage(dir_, next_name(), state, false, cfg_.keep_last);
    log::info_rank0("preemption: saved {} at step {}", path, pos.steps_done);
    throw Preempted(path, pos.steps_done, preemption::requested_signal());
  }
  const bool last = pos.steps_done == pos.total_steps;  // save_final comes next
  const bool every = cfg_.every_steps > 0 && pos.steps_done % cfg_.every_steps == 0;
  if (!last && (every || clock)) {
    const auto path = save_stage(dir_, next_name(), state, false, cfg_.keep_last);
    since_save_.reset();
    log::info_rank0("checkpoint: saved {} at step {}", path, pos.steps_done);
  }
}

void Checkpointer::at_boundary(const std::function<StageState(bool stopping)>& make_state,
                               std::int64_t rounds_done) {
  const auto [stop, clock] = poll();
  const bool every = cfg_.every_steps > 0 && rounds_done % cfg_.every_steps == 0;
  if (!stop && !clock && !every) {
    return;
  }
  const auto state = make_state(stop);
  const auto path = save_stage(dir_, next_name(), state, false, cfg_.keep_last);
  since_save_.reset();
  if (stop) {
    log::info_rank0("preemption: saved {} in {} of iteration {} after round {}",
                    path,
                    state.position.stage,
                    state.position.iteration,
                    rounds_done);
    throw Preempted(path, rounds_done, preemption::requested_signal());
  }
  log::info_rank0("checkpoint: saved {} in {} of iteration {} after round {}",
                  path,
                  state.position.stage,
                  state.position.iteration,
                  rounds_done);
}

std::string Checkpointer::save_now(const StageState& state) {
  const auto path = save_stage(dir_, next_name(), state, false, cfg_.keep_last);
  since_save_.reset();
  log::info_rank0("checkpoint: saved {} ({} of iteration {})",
                  path,
                  state.position.stage,
                  state.position.iteration);
  return path;
}

std::string Checkpointer::save_final(const StageState& state) {
  const auto path = save_stage(dir_, next_name(), state, true, cfg_.keep_last);
  log::info_rank0("checkpoint: saved {} (end of {})", path, state.position.stage);
  return path;
}

std::optional<std::string> resume_checkpoint(const config::CheckpointConfig& cfg,
                                             const std::string& dir) {
  if (cfg.resume == "none") {
    return std::nullopt;
  }
  if (cfg.resume == "auto") {
    const auto point = ckpt::find_latest_valid(dir);
    if (!point) {
      log::info_rank0("resume: no valid checkpoint in {}; starting from the beginning", dir);
      return std::nullopt;
    }
    log::info_rank0("resume: from {}", point->path);
    return point->path;
  }
  ckpt::verify(cfg.resume);
  log::info_rank0("resume: from {}", cfg.resume);
  return cfg.resume;
}

}  // namespace dnpo::train
