// Llama/Mistral-style decoder in HF conventions (tensor names, rotate_half RoPE, GQA, SwiGLU).
// Forward is written as free functions over weight structs, so dist/ can hand in gathered
// shards per block (FSDP units) without the model knowing. Shapes: B batch, T time, C hidden.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dnpo/config/config.h"

namespace dnpo::model {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

/// One decoder layer's weights (nn.Linear layout: [out, in]).
struct BlockWeights {
  at::Tensor input_layernorm;           // (C)
  at::Tensor q_proj, k_proj, v_proj;    // (H·hd, C), (KV·hd, C), (KV·hd, C)
  at::Tensor o_proj;                    // (C, H·hd)
  at::Tensor post_attention_layernorm;  // (C)
  at::Tensor gate_proj, up_proj;        // (I, C)
  at::Tensor down_proj;                 // (C, I)
  /// Optional (LlamaModel::prepare_for_decoding): q, k, v stacked ((H+2·KV)·hd, C) and gate, up
  /// stacked (2·I, C), one product each instead of three and two; q_proj … up_proj are then row
  /// blocks of them, which block_forward does not read.
  at::Tensor qkv_proj, gate_up_proj;
};

struct LlamaWeights {
  at::Tensor embed_tokens;  // (V, C)
  std::vector<BlockWeights> layers;
  at::Tensor norm;     // (C)
  at::Tensor lm_head;  // (V, C); the same tensor as embed_tokens when tied
};

/// Keys and values of past positions for incremental decoding; one entry per layer.
struct KVCache {
  std::vector<at::Tensor> keys;    // (B, KV, capacity, hd) each
  std::vector<at::Tensor> values;  // (B, KV, capacity, hd) each
  std::int64_t length = 0;         // positions filled
  std::int64_t capacity = 0;
};

/// Per-forward inputs shared by every layer: rotary tables and the additive attention bias.
struct AttentionContext {
  at::Tensor cos, sin;  // (B, 1, T, hd)
  at::Tensor bias;      // (B, 1, 1, T, past+T): 0 where allowed, a large negative where masked
  /// No past and no left padding or holes: plain causal attention gives the same result for
  /// every real token (right padding only follows them), so fused kernels need no mask.
  bool causal_only = false;
  /// Packed rows on the CPU: each sequence as (row, start, length). Attention then runs sequence
  /// by sequence and costs Σ length² instead of rows × T², and `bias` is left empty (empty:
  /// one masked pass per row).
  std::vector<std::array<std::int64_t, 3>> sequences;
};

/// Whether block_forward may use LibTorch's fused scaled-dot-product attention (LibTorch >= 2.5;
/// flash / memory-efficient kernels on CUDA). On by default; off runs the explicit softmax path.
void set_fused_attention(bool enabled);
bool fused_attention_available();

/// Builds rotary tables and the causal + key-padding bias. attention_mask covers the whole
/// sequence so far (past + new), (B, past+T) int64; positions = cumsum(mask) - 1 (HF style).
/// A packed row numbers its sequences 1, 2, … in order (0 = padding): each attends only to
/// itself and its positions start at 0, as if it were a row of its own.
/// right_padded: whether every row is ones then zeros (is_right_padded of the host copy); when
/// not given and fused attention could use it, it is read from the mask (a host sync on a GPU).
AttentionContext make_attention_context(const config::ModelConfig& cfg,
                                        const at::Tensor& attention_mask,
                                        std::int64_t past_length,
                                        at::ScalarType dtype,
                                        std::optional<bool> right_padded = std::nullopt);

/// Whether every row of a (B,T) 0/1 mask is ones, then zeros (no left padding, no holes).
bool is_right_padded(const at::Tensor& attention_mask);

/// RMSNorm: x · rsqrt(mean(x²) + eps) · w, computed in fp32.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

/// x (..., in) @ weightᵀ (out, in). A weight stored narrower than x (weights-only bf16 for
/// generation) gets x rounded to its dtype for the product, and the result is widened back to
/// x's dtype: the residual stream, norms, attention and KV cache keep x's precision.
at::Tensor project(const at::Tensor& x, const at::Tensor& weight);

/// One decoder layer: x (B,T,C) → (B,T,C). cache may be null; when given, this layer's keys and
/// values are appended at cache->length (the caller advances length after the last layer).
at::Tensor block_forward(const config::ModelConfig& cfg,
                         const BlockWeights& w,
                         const at::Tensor& x,
                         const AttentionContext& ctx,
                         KVCache* cache,
                         std::size_t layer_index);

/// The decoder with its parameters; forward returns the final hidden state (after the last norm,
/// the lm_head input and the noise head's input). Logits are computed by callers where needed.
class LlamaModel {
 public:
  /// Random init: normal(0, initializer_range) for matrices, ones for norms; draws are
  /// counter-based on seed, so the same seed gives the same model everywhere.
  LlamaModel(config::ModelConfig cfg, std::uint64_t seed);
  /// Takes HF-named tensors (as read from safetensors); throws naming missing/mis-shaped tensors.
  LlamaModel(config::ModelConfig cfg, const NamedTensors& tensors);

  const config::ModelConfig& config() const {
    return cfg_;
  }
  const LlamaWeights& weights() const {
    return weights_;
  }
  /// Parameters under their HF names (lm_head.weight omitted when tied).
  const NamedTensors& named_parameters() const {
    return named_;
  }
  std::vector<at::Tensor> parameters() const;
  std::int64_t num_parameters() const;

  /// Sets requires_grad on every parameter (false for a frozen reference).
  void set_requires_grad(bool requires_grad);
  /// A deep copy with its own storage (e.g. the reference := the current policy).
  LlamaModel clone() const;
  /// A deep copy on another device (fp32 masters; requires_grad is not carried over).
  LlamaModel to(const at::Device& device) const;
  /// Re-lays the model out for generation (not training): the projection matrices (attention,
  /// MLP, lm_head) in matrix_dtype, q/k/v and gate/up stacked into one product each (fewer,
  /// larger calls per decode step); the embedding and norms stay fp32 (or become the compute
  /// dtype, when that is narrower), activations keep the compute dtype. With bf16, a decode step,
  /// bound by reading the weights, reads half the bytes (sample.dtype). Done a layer at a time: the
  /// peak is the model plus one layer.
  void prepare_for_decoding(at::ScalarType matrix_dtype);
  /// Copies values from another model of the same shape (no new storage).
  void copy_from(const LlamaModel& other);

  /// input_ids (B,T) int64, attention_mask (B,past+T) int64 → hidden (B,T,C).
  at::Tensor forward_hidden(const at::Tensor& input_ids,
                            const at::Tensor& attention_mask,
                            KVCache* cache = nullptr) const;
  /// hidden (...,C) → logits (...,V).
  at::Tensor logits(const at::Tensor& hidden) const;
  /// The lm_head weight in the compute dtype (differentiable cast of the fp32 master).
  at::Tensor lm_head() const;

  /// Forward runs in this dtype (kFloat or kBFloat16); parameters stay fp32 masters.
  void set_compute_dtype(at::ScalarType dtype) {
    compute_dtype_ = dtype;
  }
  at::ScalarType compute_dtype() const {
    return compute_dtype_;
  }

  KVCache make_cache(std::int64_t batch, std::int64_t capacity) const;

 private:
  void bind_named();
  config::ModelConfig cfg_;
  LlamaWeights weights_;
  NamedTensors named_;
  at::ScalarType compute_dtype_ = at::kFloat;
};

/// HF names of the parameters of a config, in a stable order (embed, layers, norm, lm_head).
std::vector<std::string> parameter_names(const config::ModelConfig& cfg);

/// The shape of a parameter of this config (throws for a name the config has no parameter of).
std::vector<std::int64_t> parameter_shape(const config::ModelConfig& cfg, const std::string& name);

/// One parameter of LlamaModel(cfg, seed), made on its own (sharded init builds a unit at a time).
at::Tensor initial_parameter(const config::ModelConfig& cfg,
                             const std::string& name,
                             std::uint64_t seed);

}  // namespace dnpo::model
