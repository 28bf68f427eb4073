// Noise head forward and init; see noise_head.h.
#include "dnpo/model/noise_head.h"

#include <cmath>
#include <map>

#include <ATen/ATen.h>

#include "dnpo/common/counter_rng.h"
#include "dnpo/common/error.h"
#include "dnpo/model/random.h"

namespace dnpo::model {
namespace {
constexpr double kLayerNormEps = 1e-5;
}  // namespace

NoiseHead::NoiseHead(const config::NpoConfig& cfg,
                     std::int64_t hidden,
                     std::int64_t vocab,
                     std::uint64_t seed)
    : cfg_(cfg) {
  DNPO_CHECK_WITH(ConfigError,
                  cfg.head_init == "torch_linear" || cfg.head_init == "normal",
                  "npo.head_init '{}' is unknown; expected \"torch_linear\" or \"normal\"",
                  cfg.head_init);
  const bool torch_linear = cfg.head_init == "torch_linear";
  // nn.Linear's reset_parameters: kaiming_uniform(a = √5) for the weight, which is uniform in
  // ±1/√fan_in, and the bias uniform in the same bound.
  const double bound = 1.0 / std::sqrt(static_cast<double>(hidden));
  const auto key = draw_key(seed, 0, 0, 0, 0, RandomStream::kInit);
  proj_weight_ = torch_linear ? counter_uniform({vocab, hidden}, bound, key)
                              : counter_normal({vocab, hidden}, cfg.head_init_std, key);
  if (cfg.head == "ln_gelu_linear") {
    norm_weight_ = at::ones({hidden}, at::kFloat);
    norm_bias_ = at::zeros({hidden}, at::kFloat);
    named_ = {
        {"norm.weight", norm_weight_}, {"norm.bias", norm_bias_}, {"proj.weight", proj_weight_}};
  } else {
    DNPO_CHECK_WITH(ConfigError,
                    cfg.head == "linear",
                    "npo.head '{}' is unknown; expected \"ln_gelu_linear\" or \"linear\"",
                    cfg.head);
    proj_bias_ = torch_linear ? counter_uniform({vocab}, bound, fold_key(key, 1))
                              : at::zeros({vocab}, at::kFloat);
    named_ = {{"proj.weight", proj_weight_}, {"proj.bias", proj_bias_}};
  }
}

NoiseHead::NoiseHead(const config::NpoConfig& cfg, const NamedTensors& tensors) : cfg_(cfg) {
  std::map<std::string, at::Tensor> by_name(tensors.begin(), tensors.end());
  auto take = [&](const std::string& name) {
    auto it = by_name.find(name);
    DNPO_CHECK_WITH(
        DataError, it != by_name.end(), "noise head ({}) lacks tensor '{}'", cfg.head, name);
    return it->second.to(at::kFloat).contiguous().clone();
  };
  proj_weight_ = take("proj.weight");
  if (cfg.head == "ln_gelu_linear") {
    norm_weight_ = take("norm.weight");
    norm_bias_ = take("norm.bias");
    named_ = {
        {"norm.weight", norm_weight_}, {"norm.bias", norm_bias_}, {"proj.weight", proj_weight_}};
  } else {
    proj_bias_ = take("proj.bias");
    named_ = {{"proj.weight", proj_weight_}, {"proj.bias", proj_bias_}};
  }
}

NoiseHead NoiseHead::to(const at::Device& device) const {
  NamedTensors moved;
  for (const auto& [name, tensor] : named_) {
    moved.emplace_back(name, tensor.detach().to(device));
  }
  return NoiseHead(cfg_, moved);
}

at::Tensor NoiseHead::sigma(const at::Tensor& h) const {
  return sigma_of(cfg_, parameters(), h);
}

at::Tensor NoiseHead::logits_of(const config::NpoConfig& cfg,
                                const std::vector<at::Tensor>& params,
                                const at::Tensor& h_in) {
  // In the head's own dtype: an fp32 head (the sharded trainer's) reads bf16 hidden states of a
  // bf16 reference.
  const auto h = params.empty() ? h_in : h_in.to(params[0].scalar_type());
  if (cfg.head == "ln_gelu_linear") {
    DNPO_INTERNAL_ASSERT(params.size() == 3);  // norm.weight, norm.bias, proj.weight
    auto normed = at::layer_norm(h, {h.size(-1)}, params[0], params[1], kLayerNormEps);
    return at::linear(at::gelu(normed), params[2]);
  }
  DNPO_INTERNAL_ASSERT(params.size() == 2);  // proj.weight, proj.bias
  return at::linear(h, params[0], params[1]);
}

at::Tensor NoiseHead::sigma_of(const config::NpoConfig& cfg,
                               const std::vector<at::Tensor>& params,
                               const at::Tensor& h) {
  // s: (N, V), a standard deviation, always fp32 (f may come from a bf16 product)
  auto s = cfg.scale * at::exp(logits_of(cfg, params, h).to(at::kFloat));
  if (cfg.max_sigma > 0) {
    s = at::clamp_max(s, cfg.max_sigma);
  }
  return s;
}

std::vector<at::Tensor> NoiseHead::parameters() const {
  std::vector<at::Tensor> out;
  for (const auto& [name, tensor] : named_) {
    out.push_back(tensor);
  }
  return out;
}

void NoiseHead::set_requires_grad(bool requires_grad) {
  for (auto& [name, tensor] : named_) {
    tensor.requires_grad_(requires_grad);
  }
}

}  // namespace dnpo::model
