// Tensor collectives over c10d: ProcessGroupGloo on CPU (ProcessGroupNCCL arrives with the gpu
// issue). All operations are asynchronous and return a Work to wait on. Gloo 1.13 lacks
// reduce_scatter, _allgather_base, ReduceOp::AVG and bf16, so: all-gather goes into narrow()
// views of the flat buffer, reduce-scatter is all-reduce + own slice, every reduction is a SUM
// (callers scale explicitly), and bf16 is gathered as raw 16-bit words.
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
  /// process group. Throws DistError naming the host/port on failure.
  Comm(const MpiEnv& mpi, const config::DistConfig& cfg);
  ~Comm();
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;
  Comm(Comm&&) = delete;
  Comm& operator=(Comm&&) = delete;

  int rank() const;
  int world_size() const;
  /// Ranks on this node (to share its cores between them).
  int local_world_size() const;
  std::string backend() const;

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
  /// How reduce-scatter is emulated on this backend ("allreduce", "reduce" or "mpi").
  const std::string& reduce_scatter_method() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// collective: every rank's `text`, in rank order, on every rank (small payloads: answers, scores;
/// one broadcast per rank). comm null = one process.
std::vector<std::string> all_gather_text(Comm* comm, const std::string& text);

}  // namespace dnpo::dist
