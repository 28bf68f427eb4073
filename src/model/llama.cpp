// Llama decoder forward in HF conventions; see llama.h for the contract.
#include "dnpo/model/llama.h"

#include <atomic>
#include <cmath>
#include <map>
#include <optional>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "dnpo/common/counter_rng.h"
#include "dnpo/common/error.h"
#include "dnpo/model/batched_matmul.h"
#include "dnpo/model/fused_ops.h"
#include "dnpo/model/random.h"

namespace dnpo::model {
namespace {

std::int64_t head_dim(const config::ModelConfig& cfg) {
  return cfg.hidden_size / cfg.num_attention_heads;
}

// HF rotate_half: (x1, x2) → (−x2, x1) over the last dim split in halves.
at::Tensor rotate_half(const at::Tensor& x) {
  const auto half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

at::Tensor apply_rotary(const at::Tensor& x, const AttentionContext& ctx) {
  if (fused_ops_apply(x, ctx.cos)) {
    return fused_rotary(x, ctx.cos, ctx.sin);
  }
  return x * ctx.cos + rotate_half(x) * ctx.sin;
}

// Up to this many query positions attention takes fused_query_attention (without gradients).
constexpr std::int64_t kFusedAttentionMaxSteps = 4;

// Process-wide switch (set_fused_attention); read on every block.
std::atomic<bool> fused_attention_enabled{fused_attention_available()};

// Grouped-query softmax(q kᵀ / √hd + bias) v without copying K/V: q (…, H, T, hd) viewed as
// (…, KV, group, T, hd) against k, v (…, KV, Tk, hd).
at::Tensor grouped_attention(const at::Tensor& q,
                             const at::Tensor& k,
                             const at::Tensor& v,
                             const at::Tensor& bias) {
  const auto heads = q.size(-3);
  const auto kv_heads = k.size(-3);
  auto shape = q.sizes().vec();
  shape.insert(shape.end() - 3, kv_heads);
  shape[shape.size() - 3] = heads / kv_heads;
  auto scores = batched_matmul(q.reshape(shape), k.unsqueeze(-3).transpose(-1, -2)) /
                std::sqrt(static_cast<double>(q.size(-1)));
  auto probs = at::softmax(scores + bias, -1, at::kFloat).to(q.scalar_type());
  return batched_matmul(probs, v.unsqueeze(-3)).reshape(q.sizes());
}

// Packed rows (ctx.sequences): each sequence attends causally to itself alone, the sequences of
// one length together. Padding positions get zeros (nothing reads them).
at::Tensor attention_by_sequence(const at::Tensor& q,
                                 const at::Tensor& k,
                                 const at::Tensor& v,
                                 const AttentionContext& ctx) {
  const auto batch = q.size(0);
  const auto heads = q.size(1);
  const auto steps = q.size(2);
  const auto hd = q.size(3);
  // (B, H, T, hd) → (B·T, H, hd): a sequence's tokens are consecutive rows
  const auto flat = [](const at::Tensor& t) {
    return t.transpose(1, 2).reshape({-1, t.size(1), t.size(3)});
  };
  const auto qf = flat(q);
  const auto kf = flat(k);
  const auto vf = flat(v);
  std::map<std::int64_t, std::vector<std::int64_t>> starts_by_length;
  for (const auto& [row, start, length] : ctx.sequences) {
    starts_by_length[length].push_back(row * steps + start);
  }
  std::vector<at::Tensor> indices;
  std::vector<at::Tensor> outputs;
  for (const auto& [length, starts] : starts_by_length) {
    const auto n = static_cast<std::int64_t>(starts.size());
    const auto index = (at::tensor(starts, at::kLong).unsqueeze(1) + at::arange(length, at::kLong))
                           .reshape({-1})
                           .to(q.device());
    const auto gather = [&](const at::Tensor& f) {  // (n, heads, L, hd)
      return f.index_select(0, index).view({n, length, f.size(1), hd}).transpose(1, 2);
    };
    const auto causal = at::full({length, length}, -1e9, q.options()).triu_(1);
    const auto out = grouped_attention(gather(qf), gather(kf), gather(vf), causal);
    outputs.push_back(out.transpose(1, 2).reshape({n * length, heads, hd}));
    indices.push_back(index);
  }
  return at::zeros({batch * steps, heads, hd}, q.options())
      .index_copy(0, at::cat(indices), at::cat(outputs))
      .view({batch, steps, heads, hd})
      .transpose(1, 2);
}

// softmax(q kᵀ / √hd + bias) v for q (B, H, T, hd) and k, v (B, KV, Tk, hd) → (B, H, T, hd).
at::Tensor attention(const at::Tensor& q,
                     const at::Tensor& k,
                     const at::Tensor& v,
                     const AttentionContext& ctx) {
  const auto steps = q.size(2);
  const auto hd = q.size(3);
#if defined(DNPO_HAS_SDPA_GQA)
  if (fused_attention_enabled) {
    // Without a mask (causal) the flash kernel runs; with one, the memory-efficient kernel.
    const bool causal = ctx.causal_only && k.size(2) == steps;
    std::optional<at::Tensor> mask;
    if (!causal) {
      mask = ctx.bias.squeeze(1);  // (B, 1, T, Tk)
    }
    return at::scaled_dot_product_attention(
        q, k, v, mask, 0.0, causal, std::nullopt, /*enable_gqa=*/true);
  }
#endif
  if (!ctx.sequences.empty()) {  // packed rows, no past: ctx.bias is empty
    return attention_by_sequence(q, k, v, ctx);
  }
  // Decoding (a few query rows, no gradient): one pass per row instead of a GEMM per (row, head).
  if (steps <= kFusedAttentionMaxSteps && fused_ops_apply(q, k) && fused_ops_apply(v, ctx.bias) &&
      !(at::GradMode::is_enabled() &&
        (q.requires_grad() || k.requires_grad() || v.requires_grad()))) {
    return fused_query_attention(q, k, v, ctx.bias, 1.0 / std::sqrt(static_cast<double>(hd)));
  }
  return grouped_attention(q, k, v, ctx.bias);  // bias (B, 1, 1, T, Tk)
}

struct ParamSpec {
  std::string name;
  std::vector<std::int64_t> shape;
  bool is_norm;
};

std::vector<ParamSpec> parameter_specs(const config::ModelConfig& cfg) {
  const std::int64_t c = cfg.hidden_size;
  const std::int64_t hd = head_dim(cfg);
  const std::int64_t q = cfg.num_attention_heads * hd;
  const std::int64_t kv = cfg.num_key_value_heads * hd;
  const std::int64_t inter = cfg.intermediate_size;
  const std::int64_t v = cfg.vocab_size;
  std::vector<ParamSpec> specs{{"model.embed_tokens.weight", {v, c}, false}};
  for (int i = 0; i < cfg.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    specs.push_back({p + "input_layernorm.weight", {c}, true});
    specs.push_back({p + "self_attn.q_proj.weight", {q, c}, false});
    specs.push_back({p + "self_attn.k_proj.weight", {kv, c}, false});
    specs.push_back({p + "self_attn.v_proj.weight", {kv, c}, false});
    specs.push_back({p + "self_attn.o_proj.weight", {c, q}, false});
    specs.push_back({p + "post_attention_layernorm.weight", {c}, true});
    specs.push_back({p + "mlp.gate_proj.weight", {inter, c}, false});
    specs.push_back({p + "mlp.up_proj.weight", {inter, c}, false});
    specs.push_back({p + "mlp.down_proj.weight", {c, inter}, false});
  }
  specs.push_back({"model.norm.weight", {c}, true});
  if (!cfg.tie_word_embeddings) {
    specs.push_back({"lm_head.weight", {v, c}, false});
  }
  return specs;
}

LlamaWeights weights_from_map(const config::ModelConfig& cfg,
                              std::map<std::string, at::Tensor>& by_name) {
  LlamaWeights w;
  w.embed_tokens = by_name.at("model.embed_tokens.weight");
  for (int i = 0; i < cfg.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    BlockWeights b;
    b.input_layernorm = by_name.at(p + "input_layernorm.weight");
    b.q_proj = by_name.at(p + "self_attn.q_proj.weight");
    b.k_proj = by_name.at(p + "self_attn.k_proj.weight");
    b.v_proj = by_name.at(p + "self_attn.v_proj.weight");
    b.o_proj = by_name.at(p + "self_attn.o_proj.weight");
    b.post_attention_layernorm = by_name.at(p + "post_attention_layernorm.weight");
    b.gate_proj = by_name.at(p + "mlp.gate_proj.weight");
    b.up_proj = by_name.at(p + "mlp.up_proj.weight");
    b.down_proj = by_name.at(p + "mlp.down_proj.weight");
    w.layers.push_back(b);
  }
  w.norm = by_name.at("model.norm.weight");
  w.lm_head = cfg.tie_word_embeddings ? w.embed_tokens : by_name.at("lm_head.weight");
  return w;
}

void check_model_config(const config::ModelConfig& cfg) {
  DNPO_CHECK_WITH(ConfigError,
                  cfg.num_attention_heads > 0 && cfg.hidden_size % cfg.num_attention_heads == 0,
                  "model.hidden_size ({}) must be divisible by model.num_attention_heads ({})",
                  cfg.hidden_size,
                  cfg.num_attention_heads);
  DNPO_CHECK_WITH(
      ConfigError,
      cfg.num_key_value_heads > 0 && cfg.num_attention_heads % cfg.num_key_value_heads == 0,
      "model.num_attention_heads ({}) must be divisible by model.num_key_value_heads ({})",
      cfg.num_attention_heads,
      cfg.num_key_value_heads);
  DNPO_CHECK_WITH(ConfigError,
                  head_dim(cfg) % 2 == 0,
                  "head dim (hidden_size / heads = {}) must be even for rotary embeddings",
                  head_dim(cfg));
}

// fp32 masters are cast to the compute dtype (differentiably); a weight stored narrower than the
// activations (prepare_for_decoding) is used as stored, and project() rounds its input to match.
at::Tensor as_compute(const at::Tensor& w, at::ScalarType dtype) {
  return w.scalar_type() == at::kFloat && dtype != at::kFloat ? w.to(dtype) : w;
}

}  // namespace

std::vector<std::string> parameter_names(const config::ModelConfig& cfg) {
  std::vector<std::string> names;
  for (const auto& spec : parameter_specs(cfg)) {
    names.push_back(spec.name);
  }
  return names;
}

namespace {

// The sequences of packed rows as (row, start, length): runs of one number > 0 in a CPU mask;
// none when no row numbers more than one sequence.
std::vector<std::array<std::int64_t, 3>> packed_sequences(const at::Tensor& attention_mask) {
  const auto mask = attention_mask.contiguous();
  if (mask.numel() == 0 || mask.max().item<std::int64_t>() <= 1) {
    return {};
  }
  const auto rows = mask.size(0);
  const auto steps = mask.size(1);
  const auto* m = mask.data_ptr<std::int64_t>();
  std::vector<std::array<std::int64_t, 3>> out;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t t = 0; t < steps;) {
      const auto number = m[r * steps + t];
      const auto start = t;
      while (t < steps && m[r * steps + t] == number) {
        ++t;
      }
      if (number > 0) {
        out.push_back({r, start, t - start});
      }
    }
  }
  return out;
}

}  // namespace

AttentionContext make_attention_context(const config::ModelConfig& cfg,
                                        const at::Tensor& attention_mask,
                                        std::int64_t past_length,
                                        at::ScalarType dtype,
                                        std::optional<bool> right_padded) {
  const auto total = attention_mask.size(1);
  const auto steps = total - past_length;
  DNPO_CHECK(steps > 0,
             "attention_mask covers {} positions but the cache already holds {}",
             total,
             past_length);
  const auto device = attention_mask.device();
  // positions: (B, T) — HF style, so left padding does not shift real tokens' positions; in a
  // packed row each sequence's restart at 0 (the real tokens of the sequences before it, of
  // lower number, are subtracted: sizes per number, summed exclusively, read back per token).
  const auto real = attention_mask.gt(0).to(at::kLong);
  const auto sizes = at::zeros({attention_mask.size(0), total + 1}, real.options())
                         .scatter_add_(1, attention_mask.clamp(0, total), real);
  const auto before = (sizes.cumsum(1) - sizes).gather(1, attention_mask.clamp(0, total));
  auto positions = (real.cumsum(1) - 1 - before).clamp_min(0).narrow(1, past_length, steps);
  const auto hd = head_dim(cfg);
  // made on the device: a host-made tensor would cost a copy that waits for the GPU
  auto inv_freq =
      at::pow(cfg.rope_theta,
              at::arange(0, hd, 2, at::TensorOptions().dtype(at::kDouble).device(device)) /
                  static_cast<double>(hd))
          .reciprocal()
          .to(at::kFloat);
  auto freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq;  // (B, T, hd/2)
  auto emb = at::cat({freqs, freqs}, -1).unsqueeze(1);             // (B, 1, T, hd)
  AttentionContext ctx;
  ctx.cos = emb.cos().to(dtype);
  ctx.sin = emb.sin().to(dtype);
  if (past_length == 0 && device.is_cpu() && !fused_attention_enabled) {
    ctx.sequences = packed_sequences(attention_mask);
    if (!ctx.sequences.empty()) {
      // attention_by_sequence makes a causal bias per length: a (T, T) one per row goes unread
      ctx.bias = at::empty({0}, at::TensorOptions().dtype(dtype).device(device));
      return ctx;
    }
  }
  // allowed[b, q, k] = key k is real and k <= past + q
  auto query_pos =
      at::arange(past_length, total, at::TensorOptions().dtype(at::kLong).device(device));
  auto key_pos = at::arange(0, total, at::TensorOptions().dtype(at::kLong).device(device));
  auto causal = key_pos.unsqueeze(0) <= query_pos.unsqueeze(1);  // (T, past+T)
  auto allowed = causal.unsqueeze(0) & attention_mask.unsqueeze(1).to(at::kBool);
  // a packed row's sequences see only themselves (a padding query keeps every real key: its
  // output is never read, and a row of masks only would be all -1e9)
  const auto query_seq = attention_mask.narrow(1, past_length, steps).unsqueeze(2);
  allowed &= query_seq.eq(attention_mask.unsqueeze(1)) | query_seq.eq(0);
  // A finite negative (not -inf) keeps fully masked rows (left pads) free of NaN.
  ctx.bias = at::zeros(allowed.sizes(), at::TensorOptions().dtype(dtype).device(device))
                 .masked_fill(allowed.logical_not(), -1e9)
                 .unsqueeze(1)
                 .unsqueeze(1);
  if (fused_attention_enabled && past_length == 0) {
    // without the caller's answer: one host sync per forward (not per layer) on a GPU
    ctx.causal_only = right_padded.has_value() ? *right_padded : is_right_padded(attention_mask);
  }
  return ctx;
}

bool is_right_padded(const at::Tensor& attention_mask) {
  const auto steps = attention_mask.size(1);
  return steps <= 1 ||
         (attention_mask.narrow(1, 1, steps - 1) <= attention_mask.narrow(1, 0, steps - 1))
             .all()
             .item<bool>();
}

void set_fused_attention(bool enabled) {
  fused_attention_enabled = enabled && fused_attention_available();
}

bool fused_attention_available() {
#if defined(DNPO_HAS_SDPA_GQA)
  return true;
#else
  return false;
#endif
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (fused_ops_apply(x, weight)) {
    return fused_rms_norm(x, weight, eps);
  }
  auto xf = x.to(at::kFloat);
  auto normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

at::Tensor project(const at::Tensor& x, const at::Tensor& weight) {
  if (x.scalar_type() == weight.scalar_type()) {
    return at::linear(x, weight);
  }
  return at::linear(x.to(weight.scalar_type()), weight).to(x.scalar_type());
}

at::Tensor block_forward(const config::ModelConfig& cfg,
                         const BlockWeights& w,
                         const at::Tensor& x,
                         const AttentionContext& ctx,
                         KVCache* cache,
                         std::size_t layer_index) {
  const auto batch = x.size(0);
  const auto steps = x.size(1);
  const std::int64_t hd = head_dim(cfg);
  const std::int64_t heads = cfg.num_attention_heads;
  const std::int64_t kv_heads = cfg.num_key_value_heads;

  // --- attention ---
  auto h = rms_norm(x, w.input_layernorm, cfg.rms_norm_eps);
  at::Tensor q, k, v;
  if (w.qkv_proj.defined()) {
    const auto qkv = project(h, w.qkv_proj);  // (B, T, (H + 2·KV)·hd)
    q = qkv.narrow(-1, 0, heads * hd);
    k = qkv.narrow(-1, heads * hd, kv_heads * hd);
    v = qkv.narrow(-1, (heads + kv_heads) * hd, kv_heads * hd);
  } else {
    q = project(h, w.q_proj);
    k = project(h, w.k_proj);
    v = project(h, w.v_proj);
  }
  q = q.view({batch, steps, heads, hd}).transpose(1, 2);
  k = k.view({batch, steps, kv_heads, hd}).transpose(1, 2);
  v = v.view({batch, steps, kv_heads, hd}).transpose(1, 2);
  q = apply_rotary(q, ctx);  // (B, H, T, hd)
  k = apply_rotary(k, ctx);  // (B, KV, T, hd)
  if (cache != nullptr) {
    const auto past = cache->length;
    DNPO_CHECK(past + steps <= cache->capacity,
               "KV cache full: {} + {} > {}",
               past,
               steps,
               cache->capacity);
    cache->keys[layer_index].narrow(2, past, steps).copy_(k);
    cache->values[layer_index].narrow(2, past, steps).copy_(v);
    k = cache->keys[layer_index].narrow(2, 0, past + steps);
    v = cache->values[layer_index].narrow(2, 0, past + steps);
  }
  // (B, H, T, hd) → (B, T, H·hd)
  const auto attn = attention(q, k, v, ctx).transpose(1, 2).reshape({batch, steps, heads * hd});
  auto x1 = x + project(attn, w.o_proj);

  // --- SwiGLU MLP ---
  auto h2 = rms_norm(x1, w.post_attention_layernorm, cfg.rms_norm_eps);
  at::Tensor gate, up;
  if (w.gate_up_proj.defined()) {
    const auto gate_up = project(h2, w.gate_up_proj);  // (B, T, 2·I)
    const auto inter = gate_up.size(-1) / 2;
    gate = gate_up.narrow(-1, 0, inter);
    up = gate_up.narrow(-1, inter, inter);
  } else {
    gate = project(h2, w.gate_proj);
    up = project(h2, w.up_proj);
  }
  const auto mlp = project(at::silu(gate) * up, w.down_proj);
  return x1 + mlp;
}

std::vector<std::int64_t> parameter_shape(const config::ModelConfig& cfg, const std::string& name) {
  for (const auto& spec : parameter_specs(cfg)) {
    if (spec.name == name) {
      return spec.shape;
    }
  }
  DNPO_FAIL(Error, "the model config has no parameter '{}'", name);
  return {};
}

at::Tensor initial_parameter(const config::ModelConfig& cfg,
                             const std::string& name,
                             std::uint64_t seed) {
  const auto specs = parameter_specs(cfg);
  std::size_t index = 0;
  while (index < specs.size() && specs[index].name != name) {
    ++index;
  }
  DNPO_CHECK(index < specs.size(), "the model config has no parameter '{}'", name);
  const auto& spec = specs[index];
  const auto key = draw_key(seed, 0, 0, index, 0, RandomStream::kInit);
  return spec.is_norm ? at::ones(spec.shape, at::kFloat)
                      : counter_normal(spec.shape, cfg.initializer_range, key);
}

LlamaModel::LlamaModel(config::ModelConfig cfg, std::uint64_t seed) : cfg_(std::move(cfg)) {
  check_model_config(cfg_);
  std::map<std::string, at::Tensor> by_name;
  for (const auto& name : parameter_names(cfg_)) {
    by_name[name] = initial_parameter(cfg_, name, seed);
  }
  weights_ = weights_from_map(cfg_, by_name);
  bind_named();
}

LlamaModel::LlamaModel(config::ModelConfig cfg, const NamedTensors& tensors)
    : cfg_(std::move(cfg)) {
  check_model_config(cfg_);
  std::map<std::string, at::Tensor> given(tensors.begin(), tensors.end());
  std::map<std::string, at::Tensor> by_name;
  for (const auto& spec : parameter_specs(cfg_)) {
    auto it = given.find(spec.name);
    DNPO_CHECK_WITH(DataError,
                    it != given.end(),
                    "model weights lack tensor '{}'; hint: the weights do not match model config "
                    "(layers={}, tie_word_embeddings={})",
                    spec.name,
                    cfg_.num_hidden_layers,
                    cfg_.tie_word_embeddings);
    DNPO_CHECK_WITH(DataError,
                    it->second.sizes().vec() == spec.shape,
                    "tensor '{}' has shape {}; expected {} from the model config",
                    spec.name,
                    it->second.sizes(),
                    at::IntArrayRef(spec.shape));
    by_name[spec.name] = it->second.to(at::kFloat).contiguous().clone();
    given.erase(it);
  }
  given.erase("lm_head.weight");  // tied checkpoints sometimes still carry it
  for (const auto& [name, tensor] : given) {
    // Rotary caches of older exports are derived buffers, not parameters.
    DNPO_CHECK_WITH(DataError,
                    name.find("rotary_emb") != std::string::npos,
                    "unexpected tensor '{}' in model weights",
                    name);
  }
  weights_ = weights_from_map(cfg_, by_name);
  bind_named();
}

void LlamaModel::bind_named() {
  named_.clear();
  named_.emplace_back("model.embed_tokens.weight", weights_.embed_tokens);
  for (int i = 0; i < cfg_.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const auto& b = weights_.layers[i];
    named_.emplace_back(p + "input_layernorm.weight", b.input_layernorm);
    named_.emplace_back(p + "self_attn.q_proj.weight", b.q_proj);
    named_.emplace_back(p + "self_attn.k_proj.weight", b.k_proj);
    named_.emplace_back(p + "self_attn.v_proj.weight", b.v_proj);
    named_.emplace_back(p + "self_attn.o_proj.weight", b.o_proj);
    named_.emplace_back(p + "post_attention_layernorm.weight", b.post_attention_layernorm);
    named_.emplace_back(p + "mlp.gate_proj.weight", b.gate_proj);
    named_.emplace_back(p + "mlp.up_proj.weight", b.up_proj);
    named_.emplace_back(p + "mlp.down_proj.weight", b.down_proj);
  }
  named_.emplace_back("model.norm.weight", weights_.norm);
  if (!cfg_.tie_word_embeddings) {
    named_.emplace_back("lm_head.weight", weights_.lm_head);
  }
}

std::vector<at::Tensor> LlamaModel::parameters() const {
  std::vector<at::Tensor> out;
  out.reserve(named_.size());
  for (const auto& [name, tensor] : named_) {
    out.push_back(tensor);
  }
  return out;
}

std::int64_t LlamaModel::num_parameters() const {
  std::int64_t total = 0;
  for (const auto& [name, tensor] : named_) {
    total += tensor.numel();
  }
  return total;
}

void LlamaModel::set_requires_grad(bool requires_grad) {
  for (auto& [name, tensor] : named_) {
    tensor.requires_grad_(requires_grad);
  }
}

LlamaModel LlamaModel::clone() const {
  NamedTensors copies;
  for (const auto& [name, tensor] : named_) {
    copies.emplace_back(name, tensor.detach());
  }
  LlamaModel copy(cfg_, copies);  // the constructor clones
  copy.compute_dtype_ = compute_dtype_;
  return copy;
}

void LlamaModel::prepare_for_decoding(at::ScalarType matrix_dtype) {
  at::NoGradGuard no_grad;
  // Layer by layer, so that the peak is the model plus one layer's matrices (named_ would hold
  // the old ones until the end).
  named_.clear();
  for (auto& b : weights_.layers) {
    const auto q_rows = b.q_proj.size(0);
    const auto k_rows = b.k_proj.size(0);
    b.qkv_proj = at::cat({b.q_proj, b.k_proj, b.v_proj}).to(matrix_dtype);
    b.q_proj = b.qkv_proj.narrow(0, 0, q_rows);
    b.k_proj = b.qkv_proj.narrow(0, q_rows, k_rows);
    b.v_proj = b.qkv_proj.narrow(0, q_rows + k_rows, b.v_proj.size(0));
    const auto gate_rows = b.gate_proj.size(0);
    b.gate_up_proj = at::cat({b.gate_proj, b.up_proj}).to(matrix_dtype);
    b.gate_proj = b.gate_up_proj.narrow(0, 0, gate_rows);
    b.up_proj = b.gate_up_proj.narrow(0, gate_rows, b.up_proj.size(0));
    b.o_proj = b.o_proj.to(matrix_dtype);
    b.down_proj = b.down_proj.to(matrix_dtype);
  }
  // When tied, the lm_head becomes a tensor of its own (in matrix_dtype); the embedding stays.
  weights_.lm_head = weights_.lm_head.to(matrix_dtype);
  // With a narrower compute dtype the forward would cast the fp32 embedding and norms on every
  // call (for the embedding, a read of the whole table per decode step): cast them once here.
  if (compute_dtype_ != at::kFloat) {
    weights_.embed_tokens = weights_.embed_tokens.to(compute_dtype_);
    weights_.norm = weights_.norm.to(compute_dtype_);
    for (auto& b : weights_.layers) {
      b.input_layernorm = b.input_layernorm.to(compute_dtype_);
      b.post_attention_layernorm = b.post_attention_layernorm.to(compute_dtype_);
    }
  }
  bind_named();
}

LlamaModel LlamaModel::to(const at::Device& device) const {
  NamedTensors moved;
  for (const auto& [name, tensor] : named_) {
    moved.emplace_back(name, tensor.detach().to(device));
  }
  LlamaModel copy(cfg_, moved);
  copy.compute_dtype_ = compute_dtype_;
  return copy;
}

void LlamaModel::copy_from(const LlamaModel& other) {
  DNPO_INTERNAL_ASSERT(other.named_.size() == named_.size());
  at::NoGradGuard no_grad;
  for (std::size_t i = 0; i < named_.size(); ++i) {
    named_[i].second.copy_(other.named_[i].second);
  }
}

at::Tensor LlamaModel::forward_hidden(const at::Tensor& input_ids,
                                      const at::Tensor& attention_mask,
                                      KVCache* cache) const {
  DNPO_CHECK(input_ids.dim() == 2, "input_ids must be (B,T), got {}", input_ids.sizes());
  const std::int64_t past = cache != nullptr ? cache->length : 0;
  DNPO_CHECK(attention_mask.dim() == 2 && attention_mask.size(0) == input_ids.size(0) &&
                 attention_mask.size(1) == past + input_ids.size(1),
             "attention_mask must be (B, past+T) = ({}, {}), got {}",
             input_ids.size(0),
             past + input_ids.size(1),
             attention_mask.sizes());
  const auto dtype = compute_dtype_;
  auto cast = [dtype](const at::Tensor& w) { return as_compute(w, dtype); };
  auto x = at::embedding(cast(weights_.embed_tokens), input_ids);  // (B, T, C)
  const auto ctx = make_attention_context(cfg_, attention_mask, past, dtype);
  for (std::size_t i = 0; i < weights_.layers.size(); ++i) {
    const auto& w = weights_.layers[i];
    // Stacked (prepare_for_decoding): block_forward reads only the stacked matrices, so only
    // they are cast; casting their row-block views too would cast every matrix twice.
    const bool stacked = w.qkv_proj.defined();
    const auto cast_used = [&cast](const at::Tensor& t, bool used) {
      return used ? cast(t) : at::Tensor();
    };
    const BlockWeights wc{cast(w.input_layernorm),
                          cast_used(w.q_proj, !stacked),
                          cast_used(w.k_proj, !stacked),
                          cast_used(w.v_proj, !stacked),
                          cast(w.o_proj),
                          cast(w.post_attention_layernorm),
                          cast_used(w.gate_proj, !stacked),
                          cast_used(w.up_proj, !stacked),
                          cast(w.down_proj),
                          cast_used(w.qkv_proj, stacked),
                          cast_used(w.gate_up_proj, stacked)};
    x = block_forward(cfg_, wc, x, ctx, cache, i);
  }
  if (cache != nullptr) {
    cache->length += input_ids.size(1);
  }
  return rms_norm(x, cast(weights_.norm), cfg_.rms_norm_eps);
}

at::Tensor LlamaModel::lm_head() const {
  return as_compute(weights_.lm_head, compute_dtype_);
}

at::Tensor LlamaModel::logits(const at::Tensor& hidden) const {
  return project(hidden, lm_head());
}

KVCache LlamaModel::make_cache(std::int64_t batch, std::int64_t capacity) const {
  KVCache cache;
  cache.capacity = capacity;
  const auto hd = head_dim(cfg_);
  for (int i = 0; i < cfg_.num_hidden_layers; ++i) {
    const auto options = weights_.embed_tokens.options().dtype(compute_dtype_).requires_grad(false);
    cache.keys.push_back(at::zeros({batch, cfg_.num_key_value_heads, capacity, hd}, options));
    cache.values.push_back(at::zeros({batch, cfg_.num_key_value_heads, capacity, hd}, options));
  }
  return cache;
}

}  // namespace dnpo::model
