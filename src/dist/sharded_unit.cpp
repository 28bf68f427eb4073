// Sharded units and their autograd wrappers; see sharded_unit.h.
#include "dnpo/dist/sharded_unit.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "dnpo/common/env.h"
#include "dnpo/common/error.h"

namespace dnpo::dist {

std::int64_t TensorSpec::numel() const {
  std::int64_t n = 1;
  for (const auto d : shape) {
    n *= d;
  }
  return n;
}

ShardedUnit::ShardedUnit(std::string name,
                         std::vector<TensorSpec> specs,
                         Comm& comm,
                         UnitPrecision precision,
                         bool trainable)
    : name_(std::move(name)),
      specs_(std::move(specs)),
      comm_(comm),
      precision_(precision),
      trainable_(trainable),
      world_(comm.world_size()),
      rank_(comm.rank()) {
  DNPO_CHECK(comm_.device().type() == precision_.device.type(),
             "unit {}: its buffers are on {} but the process group moves {} tensors",
             name_,
             precision_.device.str(),
             comm_.device().str());
  // NCCL's collectives run even for one rank (a device copy each), so that one GPU exercises the
  // same streams and events as many; Gloo's would only cost time on the host.
  local_only_ = world_ == 1 && comm_.backend() != "nccl";
  for (const auto& s : specs_) {
    offsets_.push_back(numel_);
    numel_ += s.numel();
  }
  shard_numel_ = (numel_ + world_ - 1) / world_;
  shard_ =
      at::zeros({shard_numel_}, at::TensorOptions().dtype(at::kFloat).device(precision_.device));
  if (trainable_) {
    shard_.requires_grad_(true);
  }
  // Test hook: a deliberately mis-scaled reduce-scatter, to show that the world-size
  // equivalence tests catch one (tests/mpi/train/fsdp_equivalence_test.cpp).
  if (const auto scale = env::get(env::kTestGradScale)) {
    grad_scale_ = std::stod(*scale);
  }
}

std::vector<ShardedUnit::ShardPiece> ShardedUnit::shard_pieces() const {
  const std::int64_t begin = static_cast<std::int64_t>(rank_) * shard_numel_;
  const std::int64_t end = begin + shard_numel_;
  std::vector<ShardPiece> pieces;
  for (std::size_t i = 0; i < specs_.size(); ++i) {
    const auto lo = std::max(begin, offsets_[i]);
    const auto hi = std::min(end, offsets_[i] + specs_[i].numel());
    ShardPiece piece;
    piece.spec = i;
    if (hi > lo) {
      piece.tensor_offset = lo - offsets_[i];
      piece.shard_offset = lo - begin;
      piece.numel = hi - lo;
    }
    pieces.push_back(piece);
  }
  return pieces;
}

void ShardedUnit::load_full(const std::vector<at::Tensor>& full) {
  DNPO_CHECK(full.size() == specs_.size(),
             "unit {}: {} tensors given for {} specs",
             name_,
             full.size(),
             specs_.size());
  at::NoGradGuard no_grad;
  const std::int64_t begin = static_cast<std::int64_t>(rank_) * shard_numel_;
  const std::int64_t end = begin + shard_numel_;
  for (std::size_t i = 0; i < specs_.size(); ++i) {
    DNPO_CHECK(full[i].numel() == specs_[i].numel(),
               "unit {}: tensor {} has {} elements; expected {}",
               name_,
               specs_[i].name,
               full[i].numel(),
               specs_[i].numel());
    // The overlap of tensor i's range [off, off+numel) with this rank's [begin, end).
    const auto off = offsets_[i];
    const auto lo = std::max(begin, off);
    const auto hi = std::min(end, off + specs_[i].numel());
    if (lo < hi) {
      shard_.narrow(0, lo - begin, hi - lo)
          .copy_(full[i].reshape({-1}).narrow(0, lo - off, hi - lo).to(at::kFloat));
    }
  }
}

void ShardedUnit::load_shard_of(const ShardedUnit& other) {
  DNPO_INTERNAL_ASSERT(other.shard_numel_ == shard_numel_ && other.numel_ == numel_);
  at::NoGradGuard no_grad;
  shard_.copy_(other.shard_);
}

std::vector<at::Tensor> ShardedUnit::gather_full(bool gradients) {
  at::NoGradGuard no_grad;
  at::Tensor mine = gradients ? shard_.grad() : shard_;
  mine = mine.defined() ? mine.detach().contiguous() : at::zeros_like(shard_);
  at::Tensor flat = mine.clone();
  if (!local_only_) {
    flat = at::empty({shard_numel_ * world_}, shard_.options());
    comm_.all_gather_flat(flat, mine).wait();
  }
  std::vector<at::Tensor> out;
  for (std::size_t i = 0; i < specs_.size(); ++i) {
    out.push_back(flat.narrow(0, offsets_[i], specs_[i].numel()).view(specs_[i].shape).clone());
  }
  return out;
}

void ShardedUnit::prefetch() {
  if (full_.defined()) {
    return;
  }
  at::NoGradGuard no_grad;
  const auto local = shard_.detach().to(precision_.compute);
  if (local_only_) {
    full_ = local;  // fp32: the shard itself (updated in place only after backward)
    return;
  }
  full_ = at::empty({shard_numel_ * world_}, local.options());
  in_flight_ = comm_.all_gather_flat(full_, local.contiguous());
  waiting_ = true;
}

std::vector<at::Tensor> ShardedUnit::gathered() {
  prefetch();
  if (waiting_) {
    in_flight_.wait();
    in_flight_ = Work();  // a finished c10d work still refers to its buffers
    waiting_ = false;
  }
  std::vector<at::Tensor> views;
  views.reserve(specs_.size());
  for (std::size_t i = 0; i < specs_.size(); ++i) {
    views.push_back(full_.narrow(0, offsets_[i], specs_[i].numel()).view(specs_[i].shape));
  }
  return views;
}

void ShardedUnit::release() {
  if (waiting_) {
    in_flight_.wait();  // a collective in flight must finish on every rank
    in_flight_ = Work();
    waiting_ = false;
  }
  full_ = at::Tensor();
}

void ShardedUnit::add_into_slices(at::Tensor& flat,
                                  const std::vector<at::Tensor>& grads,
                                  double scale) const {
  for (std::size_t i = 0; i < specs_.size(); ++i) {
    if (grads[i].defined()) {
      flat.narrow(0, offsets_[i], specs_[i].numel())
          .add_(grads[i].reshape({-1}).to(precision_.reduce), scale);
    }
  }
}

at::Tensor ShardedUnit::reduce_scatter_grads(const std::vector<at::Tensor>& grads) {
  DNPO_INTERNAL_ASSERT(grads.size() == specs_.size());
  at::NoGradGuard no_grad;
  if (local_only_ && precision_.reduce == at::kFloat && !defer_reduction_) {
    // One process: add each gradient into its slice of the shard's gradient in place, rather
    // than into a flat copy for autograd to accumulate: that would be a fresh buffer per unit and
    // micro-batch, page-faulted in, and one more pass over every gradient.
    if (!shard_.grad().defined()) {
      shard_.mutable_grad() = at::zeros_like(shard_);
    }
    add_into_slices(shard_.mutable_grad(), grads, grad_scale_);
    return {};
  }
  const auto reduce = at::TensorOptions().dtype(precision_.reduce).device(shard_.device());
  if (defer_reduction_) {
    // Summed in fp32 whatever the reduction dtype, each gradient added into its slice of the
    // step's sum in place: concatenating the whole unit per micro-batch first would copy every
    // gradient once more, into a fresh buffer. Rounded to the reduction dtype first, as the
    // reduction itself would.
    if (!pending_grad_.defined()) {
      pending_grad_ = at::zeros({shard_numel_ * world_}, reduce.dtype(at::kFloat));
    }
    add_into_slices(pending_grad_, grads, 1.0);
    return {};
  }
  // The flat gradient in parameter order (offsets are contiguous), zero for a parameter that got
  // none and for the padding: one concatenation, not a zero-filled buffer and a copy per tensor.
  std::vector<at::Tensor> parts;
  parts.reserve(specs_.size() + 1);
  for (std::size_t i = 0; i < specs_.size(); ++i) {
    parts.push_back(grads[i].defined() ? grads[i].reshape({-1}).to(precision_.reduce)
                                       : at::zeros({specs_[i].numel()}, reduce));
  }
  if (shard_numel_ * world_ > numel_) {
    parts.push_back(at::zeros({shard_numel_ * world_ - numel_}, reduce));
  }
  return reduced_slice(at::cat(parts));
}

at::Tensor ShardedUnit::reduced_slice(at::Tensor flat) {
  at::Tensor slice = flat;
  if (!local_only_) {
    slice = at::empty({shard_numel_}, flat.options());
    comm_.reduce_scatter_flat(slice, flat).wait();
  }
  flat = at::Tensor();  // the full-size buffer goes before the fp32 copy is made
  slice = slice.to(at::kFloat);
  return grad_scale_ == 1.0 ? slice : slice * grad_scale_;
}

void ShardedUnit::set_defer_reduction(bool defer) {
  DNPO_CHECK(!pending_grad_.defined(), "unit {}: unflushed gradients", name_);
  defer_reduction_ = defer && !local_only_ && trainable_;
}

void ShardedUnit::flush_grads() {
  if (!defer_reduction_) {
    return;
  }
  at::NoGradGuard no_grad;
  auto flat = pending_grad_.defined()
                  ? pending_grad_.to(precision_.reduce)
                  : at::zeros({shard_numel_ * world_},
                              at::TensorOptions().dtype(precision_.reduce).device(shard_.device()));
  pending_grad_ = at::Tensor();
  auto shard_grad = reduced_slice(std::move(flat));
  if (shard_.grad().defined()) {
    shard_.mutable_grad().add_(shard_grad);
  } else {
    shard_.mutable_grad() = shard_grad;
  }
}

namespace {

// Carries the unit and its function through the autograd context.
struct UnitCall : torch::CustomClassHolder {
  ShardedUnit* unit = nullptr;
  UnitFn fn;
  Prefetch next;
  bool release_in_backward = false;
};

// Inputs of the autograd functions travel as one TensorList: [shard, inputs...].
class ApplyUnitFunction : public torch::autograd::Function<ApplyUnitFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                at::TensorList tensors,
                                                const c10::intrusive_ptr<UnitCall>& call) {
    auto& unit = *call->unit;
    const std::vector<at::Tensor> inputs(tensors.begin() + 1, tensors.end());
    const auto params = unit.gathered();
    if (call->next.forward != nullptr) {
      call->next.forward->prefetch();
    }
    auto outputs = call->fn(params, inputs);
    unit.release();
    ctx->save_for_backward(inputs);
    ctx->saved_data["call"] = at::IValue::make_capsule(call);
    return outputs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto call =
        c10::static_intrusive_pointer_cast<UnitCall>(ctx->saved_data["call"].toCapsule());
    auto& unit = *call->unit;
    const auto saved = ctx->get_saved_variables();
    // --- recompute with fresh leaves: the inputs that need a gradient, and the parameters ---
    std::vector<at::Tensor> inputs;
    std::vector<at::Tensor> wrt;
    std::vector<std::size_t> input_slots;  // which inputs are in wrt (after the params)
    auto params = unit.gathered();
    if (call->next.backward != nullptr) {
      call->next.backward->prefetch();
    }
    const bool param_grads = unit.trainable() && ctx->needs_input_grad(0);
    for (auto& p : params) {
      p = p.detach().requires_grad_(param_grads);
      if (param_grads) {
        wrt.push_back(p);
      }
    }
    for (std::size_t i = 0; i < saved.size(); ++i) {
      auto x = saved[i].detach();
      if (ctx->needs_input_grad(i + 1) && x.is_floating_point()) {
        x.requires_grad_(true);
        input_slots.push_back(i);
        wrt.push_back(x);
      }
      inputs.push_back(x);
    }
    std::vector<at::Tensor> outputs, grads;
    {
      torch::autograd::AutoGradMode enable(true);
      const auto recomputed = call->fn(params, inputs);
      for (std::size_t i = 0; i < recomputed.size(); ++i) {
        if (grad_outputs[i].defined() && recomputed[i].requires_grad()) {
          outputs.push_back(recomputed[i]);
          grads.push_back(grad_outputs[i]);
        }
      }
    }
    std::vector<at::Tensor> found(wrt.size());
    if (!outputs.empty() && !wrt.empty()) {
      found = torch::autograd::grad(outputs, wrt, grads, false, false, true);
    }
    // --- the answer: one gradient per forward input ([shard, inputs...], then the call) ---
    torch::autograd::variable_list result(saved.size() + 2);
    if (param_grads) {
      const std::vector<at::Tensor> param_grad(found.begin(),
                                               found.begin() + static_cast<long>(params.size()));
      params.clear();
      unit.release();  // the gathered buffer goes before the reduction allocates its own
      result[0] = unit.reduce_scatter_grads(param_grad);
    } else {
      unit.release();
    }
    const std::size_t first_input = param_grads ? unit.specs().size() : 0;
    for (std::size_t k = 0; k < input_slots.size(); ++k) {
      result[input_slots[k] + 1] = found[first_input + k];
    }
    return result;
  }
};

class GatherParamsFunction : public torch::autograd::Function<GatherParamsFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& /*shard*/,
                                                const c10::intrusive_ptr<UnitCall>& call) {
    ctx->saved_data["call"] = at::IValue::make_capsule(call);
    return call->unit->gathered();
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx, const torch::autograd::variable_list& grad_outputs) {
    const auto call =
        c10::static_intrusive_pointer_cast<UnitCall>(ctx->saved_data["call"].toCapsule());
    auto& unit = *call->unit;
    if (call->next.backward != nullptr) {
      call->next.backward->prefetch();
    }
    if (call->release_in_backward) {
      unit.release();  // before the reduction allocates its flat buffer
    }
    return {unit.reduce_scatter_grads(grad_outputs), at::Tensor()};
  }
};

}  // namespace

std::vector<at::Tensor> apply_unit(ShardedUnit& unit,
                                   const UnitFn& fn,
                                   const std::vector<at::Tensor>& inputs,
                                   Prefetch next,
                                   bool recompute) {
  if (!recompute) {
    if (next.forward != nullptr) {
      next.forward->prefetch();
    }
    return fn(gather_params(unit, next.backward), inputs);
  }
  auto call = c10::make_intrusive<UnitCall>();
  call->unit = &unit;
  call->fn = fn;
  call->next = next;
  std::vector<at::Tensor> tensors{unit.shard()};
  tensors.insert(tensors.end(), inputs.begin(), inputs.end());
  return ApplyUnitFunction::apply(at::TensorList(tensors), std::move(call));
}

std::vector<at::Tensor> gather_params(ShardedUnit& unit,
                                      ShardedUnit* next_backward,
                                      bool release_in_backward) {
  if (!unit.trainable() || !at::GradMode::is_enabled()) {
    return unit.gathered();
  }
  auto call = c10::make_intrusive<UnitCall>();
  call->unit = &unit;
  call->next.backward = next_backward;
  call->release_in_backward = release_in_backward;
  return GatherParamsFunction::apply(unit.shard(), std::move(call));
}

at::Tensor global_grad_norm(const std::vector<ShardedUnit*>& units, Comm& comm) {
  // One fp32 norm per shard (a single pass, no fp64 copy of the gradients, as PyTorch's
  // clip_grad_norm_), their squares summed in fp64.
  std::vector<at::Tensor> norms;
  for (const auto* unit : units) {
    const auto& g = unit->shard().grad();
    if (g.defined()) {
      norms.push_back(g.norm().reshape({1}));
    }
  }
  const auto device = norms.empty() ? comm.device() : norms.front().device();
  auto sum_sq = norms.empty()
                    ? at::zeros({1}, at::TensorOptions().dtype(at::kDouble).device(device))
                    : at::cat(norms).to(at::kDouble).pow(2).sum().reshape({1});
  if (comm.world_size() > 1) {
    comm.all_reduce_sum(sum_sq).wait();
  }
  return sum_sq.sqrt().reshape({});
}

at::Tensor clip_grad_norm(const std::vector<ShardedUnit*>& units, Comm& comm, double max_norm) {
  const auto norm = global_grad_norm(units, comm);
  if (max_norm <= 0) {
    return norm;
  }
  if (norm.is_cpu()) {
    // on the host no read waits: the gradients are touched only when clipped
    const double coef = max_norm / (norm.item<double>() + 1e-6);
    if (coef < 1) {
      for (const auto* unit : units) {
        auto g = unit->shard().grad();
        if (g.defined()) {
          g.mul_(coef);
        }
      }
    }
    return norm;
  }
  // on a GPU: one multiply by min(1, factor) per shard instead of a host sync
  const auto coef = (max_norm / (norm + 1e-6)).clamp_max(1.0);
  for (const auto* unit : units) {
    auto g = unit->shard().grad();
    if (g.defined()) {
      g.mul_(coef.to(g.scalar_type()));
    }
  }
  return norm;
}

}  // namespace dnpo::dist
