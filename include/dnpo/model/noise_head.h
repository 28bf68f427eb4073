// The NPO noise head: s = c · exp(f_φ(h)), the std of the Gaussian noise added to the reference's
// logits of the negative sample (docs/algorithm.md). f is "linear" (W h + b, the paper) or
// "ln_gelu_linear" (LayerNorm → GELU → Linear without bias, the authors' runs).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "dnpo/config/config.h"
#include "dnpo/model/llama.h"

namespace dnpo::model {

class NoiseHead {
 public:
  /// Fresh random head (counter-based init from seed): the projection as npo.head_init says
  /// (nn.Linear's uniform ±1/√hidden, or normal(0, npo.head_init_std) with a zero bias), the
  /// LayerNorm weight one and bias zero.
  NoiseHead(const config::NpoConfig& cfg,
            std::int64_t hidden,
            std::int64_t vocab,
            std::uint64_t seed);
  /// From named tensors: "norm.weight", "norm.bias", "proj.weight" | "proj.weight", "proj.bias".
  NoiseHead(const config::NpoConfig& cfg, const NamedTensors& tensors);
  /// A deep copy on another device.
  NoiseHead to(const at::Device& device) const;

  /// h (N, C) → s (N, V), clamped at npo.max_sigma when that is > 0. Differentiable in φ.
  at::Tensor sigma(const at::Tensor& h) const;
  /// The same as a pure function of parameter tensors in named_parameters() order, so autograd
  /// code can recompute s from (possibly detached) copies.
  static at::Tensor sigma_of(const config::NpoConfig& cfg,
                             const std::vector<at::Tensor>& params,
                             const at::Tensor& h);
  /// The head's output before the exp: f (N, V) in the parameters' dtype, s = scale · exp(f)
  /// (clamped). Differentiable in φ.
  static at::Tensor logits_of(const config::NpoConfig& cfg,
                              const std::vector<at::Tensor>& params,
                              const at::Tensor& h);

  const NamedTensors& named_parameters() const {
    return named_;
  }
  std::vector<at::Tensor> parameters() const;
  void set_requires_grad(bool requires_grad);

 private:
  config::NpoConfig cfg_;
  NamedTensors named_;
  at::Tensor norm_weight_, norm_bias_, proj_weight_, proj_bias_;
};

}  // namespace dnpo::model
