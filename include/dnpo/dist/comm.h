// Tensor collectives over c10d (ProcessGroupGloo on CPU, ProcessGroupNCCL on CUDA: one GPU per
// rank, by local rank) and MPI point-to-point. Each returns a Work to wait on.
// - Gloo 1.13 lacks reduce_scatter, _allgather_base, ReduceOp::AVG and bf16. On CPU all-gather and
//   reduce-scatter default to rings over MPI point-to-point, done when the call returns (Gloo's
//   emulations and MPI's reduce-scatter stay selectable); every reduction is a SUM (callers scale).
// - NCCL runs each collective on its own CUDA stream; Work::wait() only makes the caller's current
//   stream wait on the collective's event (no host sync). NCCL's watchdog enforces the timeout.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dnpo/config/config.h"
#include "dnpo/dist/mpi_env.h"

namespace dnpo::dist {

/// A collective in flight. wait() blocks until it is done (at most the configured timeout) and
/// throws DistError naming the operation and the cause when it failed.
class Work {
 public:
  Work() = default;
  void wait();

 private:
  friend class Comm;
  struct State;
  std::shared_ptr<State> state_;
};

/// Bytes handed to each kind of collective by this rank: the size of the full (world-sized)
/// buffer for all-gather and reduce-scatter, of the tensor for all-reduce and broadcast.
struct CommBytes {
  std::int64_t all_gather = 0;
  std::int64_t reduce_scatter = 0;
  std::int64_t all_reduce = 0;
  std::int64_t broadcast = 0;
  std::int64_t all_gather_ops = 0;
  std::int64_t reduce_scatter_ops = 0;
};

class Comm {
 public:
  /// collective: opens the c10d store (rank 0 serves it; its address goes out over MPI) and the
  /// process group: Gloo for device "cpu", NCCL for "cuda" (dist.backend may name either).
  /// Throws DistError naming the host/port on failure, ConfigError for a backend this build lacks.
  Comm(const MpiEnv& mpi, const config::DistConfig& cfg, const std::string& device = "cpu");
  /// A world of one process computing on `device`, with no store, process group or MPI: every
  /// collective is a local copy or nothing. What code written for any world size is handed when
  /// there is one process.
  static std::unique_ptr<Comm> one_process(at::Device device = at::kCPU);
  ~Comm();
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;
  Comm(Comm&&) = delete;
  Comm& operator=(Comm&&) = delete;

  int rank() const;
  int world_size() const;
  /// Ranks on this node (to share its cores between them).
  int local_world_size() const;
  /// "gloo", "nccl", or "local" for one_process().
  std::string backend() const;
  /// Where this rank's collectives run: CPU (Gloo) or this rank's GPU (NCCL). Tensors handed to
  /// the collectives must live there.
  at::Device device() const;

  // collective: every rank calls these in the same order.
  /// flat (world·n) ← the shards (n) of every rank, rank r's at [r·n, (r+1)·n).
  Work all_gather_flat(const at::Tensor& flat, const at::Tensor& shard);
  /// shard (n) ← Σ over ranks of flat[r·n, (r+1)·n) for this rank r. Clobbers flat.
  Work reduce_scatter_flat(const at::Tensor& shard, const at::Tensor& flat);
  /// t ← Σ over ranks of t, in place.
  Work all_reduce_sum(const at::Tensor& t);
  /// t ← rank root's t, in place.
  Work broadcast(const at::Tensor& t, int root);
  Work barrier();

  const CommBytes& bytes() const;
  /// How reduce-scatter runs: "ring" (the CPU default), "mpi", "allreduce", "reduce", "nccl", or
  /// "local" for one_process().
  const std::string& reduce_scatter_method() const;

 private:
  explicit Comm(at::Device device);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// The device this rank computes on: the CPU for "cpu"; for "cuda" GPU (local_rank mod the GPUs
/// visible), made the current device. Throws ConfigError naming run.device when this build or
/// machine has no CUDA.
at::Device rank_device(const std::string& run_device, int local_rank);

/// collective: every rank's `text`, in rank order, on every rank (small payloads: answers, scores;
/// one broadcast per rank).
std::vector<std::string> all_gather_text(Comm& comm, const std::string& text);

}  // namespace dnpo::dist
