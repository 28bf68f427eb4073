// AdamW and RMSprop on shards; see shard_optimizer.h.
#include "dnpo/dist/shard_optimizer.h"

#include <cmath>
#include <cstdint>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "dnpo/common/error.h"

namespace dnpo::dist {
namespace {

// AdamW on contiguous fp32 CPU shards in one pass per element. ATen's sequence (kept below for
// other tensors) makes nine passes over the shard and two shard-sized temporaries, which made the
// optimizer a quarter of a 110M-parameter step. The float operations and their order are the
// same as the ATen kernels' (scalars rounded to float first), so results agree to rounding.
struct AdamWScalars {
  float decay, beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_bias_correction2, eps, step;
};

void adamw_fused(float* p,
                 const float* g,
                 float* exp_avg,
                 float* exp_avg_sq,
                 std::int64_t n,
                 const AdamWScalars& s,
                 bool decay) {
  for (std::int64_t i = 0; i < n; ++i) {
    float param = decay ? p[i] * s.decay : p[i];
    const float grad = g[i];
    const float m = exp_avg[i] * s.beta1 + s.one_minus_beta1 * grad;
    const float v = exp_avg_sq[i] * s.beta2 + s.one_minus_beta2 * grad * grad;
    const float denom = std::sqrt(v) / s.sqrt_bias_correction2 + s.eps;
    param = param + s.step * m / denom;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    p[i] = param;
  }
}

bool fusable(const at::Tensor& t) {
  return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous();
}

}  // namespace

ShardOptimizer::ShardOptimizer(const config::TrainConfig& cfg, std::vector<at::Tensor> params)
    : cfg_(cfg), lr_(cfg.lr), params_(std::move(params)) {
  if (cfg_.optimizer == "adamw") {
    state_names_ = {"exp_avg", "exp_avg_sq"};
  } else {
    DNPO_CHECK_WITH(ConfigError,
                    cfg_.optimizer == "rmsprop",
                    "train.optimizer '{}' is unknown; expected \"adamw\" or \"rmsprop\"",
                    cfg_.optimizer);
    state_names_ = {"square_avg"};
  }
  // Allocated at the first step (or when a checkpoint fills them), not here: a training step's
  // peak (gathered units, activations) then does not stack on top of the optimizer's state.
  state_.assign(params_.size(), std::vector<at::Tensor>(state_names_.size()));
  steps_.assign(params_.size(), 0);
}

void ShardOptimizer::allocate_state(std::size_t param) {
  for (auto& buffer : state_.at(param)) {
    if (!buffer.defined()) {
      buffer = at::zeros_like(params_[param], at::MemoryFormat::Contiguous);
    }
  }
}

at::Tensor& ShardOptimizer::state(std::size_t param, const std::string& name) {
  for (std::size_t i = 0; i < state_names_.size(); ++i) {
    if (state_names_[i] == name) {
      allocate_state(param);
      return state_.at(param)[i];
    }
  }
  DNPO_CHECK(false, "optimizer {} has no state '{}'", cfg_.optimizer, name);
  return state_.at(param)[0];  // unreachable
}

void ShardOptimizer::step() {
  at::NoGradGuard no_grad;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i];
    const auto& grad = p.grad();
    if (!grad.defined()) {
      continue;
    }
    allocate_state(i);
    const auto step = ++steps_[i];
    if (cfg_.optimizer == "adamw") {
      // Decoupled weight decay, then Adam with bias correction (torch.optim.AdamW, amsgrad off).
      auto& exp_avg = state_[i][0];
      auto& exp_avg_sq = state_[i][1];
      const double beta1 = cfg_.adam_beta1;
      const double beta2 = cfg_.adam_beta2;
      const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
      const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));
#if DNPO_TORCH2
      if (p.is_cuda() && p.scalar_type() == at::kFloat) {
        // LibTorch 2.x's fused CUDA AdamW (torch.optim.AdamW(fused=True)): one kernel per shard;
        // the step count goes in as a device scalar (a fill, no host wait).
        const auto step_count = at::full({}, static_cast<double>(step), p.options());
        at::_fused_adamw_({p},
                          {grad},
                          {exp_avg},
                          {exp_avg_sq},
                          {},
                          {step_count},
                          lr_,
                          beta1,
                          beta2,
                          cfg_.weight_decay,
                          cfg_.eps,
                          /*amsgrad=*/false,
                          /*maximize=*/false);
        continue;
      }
#endif
      if (fusable(p) && fusable(grad) && fusable(exp_avg) && fusable(exp_avg_sq)) {
        const AdamWScalars scalars{static_cast<float>(1.0 - lr_ * cfg_.weight_decay),
                                   static_cast<float>(beta1),
                                   static_cast<float>(1.0 - beta1),
                                   static_cast<float>(beta2),
                                   static_cast<float>(1.0 - beta2),
                                   static_cast<float>(std::sqrt(bias_correction2)),
                                   static_cast<float>(cfg_.eps),
                                   static_cast<float>(-lr_ / bias_correction1)};
        adamw_fused(p.data_ptr<float>(),
                    grad.data_ptr<float>(),
                    exp_avg.data_ptr<float>(),
                    exp_avg_sq.data_ptr<float>(),
                    p.numel(),
                    scalars,
                    cfg_.weight_decay != 0);
        for (auto* written : {&p, &exp_avg, &exp_avg_sq}) {
          written->unsafeGetTensorImpl()->bump_version();  // as an in-place ATen op would
        }
        continue;
      }
      if (cfg_.weight_decay != 0) {
        p.mul_(1.0 - lr_ * cfg_.weight_decay);
      }
      exp_avg.mul_(beta1).add_(grad, 1.0 - beta1);
      exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1.0 - beta2);
      const auto denom = (exp_avg_sq.sqrt() / std::sqrt(bias_correction2)).add_(cfg_.eps);
      p.addcdiv_(exp_avg, denom, -lr_ / bias_correction1);
    } else {
      // torch.optim.RMSprop, not centred, no momentum; weight decay as L2 on the gradient.
      auto& square_avg = state_[i][0];
      const auto g = cfg_.weight_decay != 0 ? grad.add(p, cfg_.weight_decay) : grad;
      square_avg.mul_(cfg_.rmsprop_alpha).addcmul_(g, g, 1.0 - cfg_.rmsprop_alpha);
      p.addcdiv_(g, square_avg.sqrt().add_(cfg_.eps), -lr_);
    }
  }
}

void ShardOptimizer::zero_grad() {
  for (auto& p : params_) {
    if (p.grad().defined()) {
      p.mutable_grad().detach_();
      p.mutable_grad().zero_();
    }
  }
}

}  // namespace dnpo::dist
