// FSDP / ZeRO-3 sharding over plain named tensor lists (dist/ knows nothing of the model).
// A ShardedUnit stores a group of tensors as one flat fp32 buffer padded to a multiple of the
// world size; rank r keeps slice r (the master shard the optimizer steps). Before a unit computes,
// its slices are all-gathered into a full buffer in the compute dtype; afterwards the buffer is
// dropped. Gradients of the full tensors are reduce-scattered back into the shard's gradient.
// apply_unit() and gather_params() (below) wrap this in autograd.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dnpo/dist/comm.h"

namespace dnpo::dist {

struct TensorSpec {
  std::string name;
  std::vector<std::int64_t> shape;
  std::int64_t numel() const;
};

struct UnitPrecision {
  at::ScalarType compute = at::kFloat;  ///< dtype the parameters are gathered and used in
  at::ScalarType reduce = at::kFloat;   ///< dtype gradients are summed over ranks in
  at::Device device = at::kCPU;         ///< where the shard, its state and gathers live
};

class ShardedUnit {
 public:
  /// With one rank the shard is the whole buffer and nothing is communicated.
  /// trainable: the shard is a leaf that requires grad; otherwise params only (a frozen model).
  ShardedUnit(std::string name,
              std::vector<TensorSpec> specs,
              Comm& comm,
              UnitPrecision precision,
              bool trainable);

  const std::string& name() const {
    return name_;
  }
  const std::vector<TensorSpec>& specs() const {
    return specs_;
  }
  std::int64_t numel() const {
    return numel_;  ///< unpadded
  }
  std::int64_t shard_numel() const {
    return shard_numel_;
  }
  int world_size() const {
    return world_;
  }
  bool trainable() const {
    return trainable_;
  }
  /// This rank's fp32 master slice (shard_numel,); the padding past numel() stays zero.
  const at::Tensor& shard() const {
    return shard_;
  }

  int rank() const {
    return rank_;
  }
  /// This rank's part of one tensor: elements [tensor_offset, tensor_offset + numel) of spec
  /// `spec`'s flattened tensor sit at [shard_offset, shard_offset + numel) of the shard.
  struct ShardPiece {
    std::size_t spec = 0;
    std::int64_t tensor_offset = 0;
    std::int64_t shard_offset = 0;
    std::int64_t numel = 0;  ///< 0 when this rank holds none of the tensor
  };
  /// One piece per spec, in spec order (how checkpoints store shards by logical tensor).
  std::vector<ShardPiece> shard_pieces() const;

  /// Fills this rank's slice from the full tensors, in spec order (every rank passes the same).
  void load_full(const std::vector<at::Tensor>& full);
  /// Copies the shard of a unit with the same specs and world (e.g. a frozen copy of a model).
  void load_shard_of(const ShardedUnit& other);
  /// collective: the full fp32 tensors (or their gradients, zero where none) on every rank.
  std::vector<at::Tensor> gather_full(bool gradients = false);

  // --- gathering; collective, so every rank must call these in the same order ---
  /// Starts the all-gather unless the unit is already gathered or in flight.
  void prefetch();
  /// The gathered parameters in spec shapes and the compute dtype (waits for a prefetch).
  std::vector<at::Tensor> gathered();
  /// Drops the gathered buffer (its memory goes once no tensor refers to it).
  void release();
  bool is_gathered() const {
    return full_.defined();
  }
  /// Σ over ranks of the full-size gradients (spec order; undefined = zero), this rank's slice,
  /// fp32 (shard_numel,). Blocks until the reduction is done. With deferred reduction it only
  /// adds them to a full-size local sum and returns an undefined tensor.
  at::Tensor reduce_scatter_grads(const std::vector<at::Tensor>& grads);
  /// Deferred reduction (more than one rank, trainable units): gradients of a step's
  /// micro-batches are summed locally and reduce-scattered once by flush_grads(), at the memory of
  /// the unit's full fp32 gradient.
  void set_defer_reduction(bool defer);
  /// collective when deferring: reduce-scatters the local sum (zero if this rank had none) and
  /// adds this rank's slice to the shard's gradient. A no-op otherwise.
  void flush_grads();

 private:
  /// collective: Σ over ranks of a flat full-size gradient (reduction dtype), this rank's slice
  /// in fp32 (the test hook's scale applied).
  at::Tensor reduced_slice(at::Tensor flat);
  /// Adds each gradient (spec order; undefined = none), rounded to the reduction dtype and times
  /// scale, into its slice of a flat fp32 buffer in place.
  void add_into_slices(at::Tensor& flat, const std::vector<at::Tensor>& grads, double scale) const;

  std::string name_;
  std::vector<TensorSpec> specs_;
  std::vector<std::int64_t> offsets_;
  Comm& comm_;
  UnitPrecision precision_;
  bool trainable_;
  int world_ = 1;
  int rank_ = 0;
  bool local_only_ = true;  // no collectives: the shard is the whole buffer
  std::int64_t numel_ = 0;
  std::int64_t shard_numel_ = 0;
  double grad_scale_ = 1.0;  // 1 except under the fault-injection test hook (see .cpp)
  bool defer_reduction_ = false;
  at::Tensor pending_grad_;  // deferred: Σ of full flat gradients since the last flush
  at::Tensor shard_;
  at::Tensor full_;  // gathered (or being gathered) flat buffer, compute dtype
  Work in_flight_;   // the gather into full_, until waited on
  bool waiting_ = false;
};

/// The units computed next in forward and in backward order: their gathers are started while
/// this one computes, so at most two units are gathered at once.
struct Prefetch {
  ShardedUnit* forward = nullptr;
  ShardedUnit* backward = nullptr;
};

/// What a unit computes: outputs from its gathered parameters (spec order) and the inputs.
using UnitFn = std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>& params,
                                                     const std::vector<at::Tensor>& inputs)>;

/// Runs fn as one sharded, checkpointed step. Forward: gather, run without keeping activations,
/// release. Backward: gather again, recompute, reduce-scatter the parameter gradients into the
/// shard's gradient (when the unit is trainable), release. Inputs that require grad get theirs.
/// fn must be deterministic (it runs twice). recompute = false keeps the parameters gathered and
/// the activations through backward instead (one process, where nothing is sharded anyway).
std::vector<at::Tensor> apply_unit(ShardedUnit& unit,
                                   const UnitFn& fn,
                                   const std::vector<at::Tensor>& inputs,
                                   Prefetch next = {},
                                   bool recompute = true);

/// The unit's parameters gathered and differentiable: in backward their gradients are
/// reduce-scattered into the shard's gradient. The buffer stays gathered until unit.release(),
/// for a unit whose parameters are used across the loss (the lm_head, the noise head).
/// release_in_backward: drop the gathered buffer once the gradients are in (for a unit used
/// once per backward whose caller keeps no views, e.g. the noise head).
std::vector<at::Tensor> gather_params(ShardedUnit& unit,
                                      ShardedUnit* next_backward = nullptr,
                                      bool release_in_backward = false);

/// collective: √(Σ over units and ranks of ‖shard gradient‖²) — the global gradient norm, a
/// 0-dim fp64 tensor on the gradients' device. Read it with the step's other numbers: on a GPU,
/// reading it at once would make the host wait for the backward.
at::Tensor global_grad_norm(const std::vector<ShardedUnit*>& units, Comm& comm);

/// collective: scales every shard gradient by max_norm / (norm + 1e-6) when the global norm
/// exceeds max_norm (torch.nn.utils.clip_grad_norm_); returns the norm before clipping (as
/// global_grad_norm). On a GPU the factor stays on the device, min(1, ·), without a host sync.
at::Tensor clip_grad_norm(const std::vector<ShardedUnit*>& units, Comm& comm, double max_norm);

}  // namespace dnpo::dist
