// RMSNorm and rotary embedding as one pass each, forward and backward, on CPU fp32; and attention
// for decoding (forward only, for inference). Written out as LibTorch operators RMSNorm and rotary
// are 5 and 6 kernels forward and about twice that in backward, each a full pass over the
// activations with its own temporary. Such passes are bound by memory bandwidth, so one pass that
// reads and writes each activation once does the same work with a fraction of the traffic.
// Other devices and dtypes take the operator form.
#pragma once

#include <ATen/core/Tensor.h>

namespace dnpo::model {

/// weight · x / √(mean(x², last dim) + eps), x (..., d), weight (d); differentiable in both.
at::Tensor fused_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

/// HF rotary: x · cos + rotate_half(x) · sin, x (B, H, T, hd) in any strides, cos and sin
/// (B, 1, T, hd) without gradients; differentiable in x. The result has x's memory layout.
at::Tensor fused_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

/// softmax(q kᵀ · scale + bias) v in one pass per query row, for inference (no autograd): q (B, H,
/// T, hd), k and v (B, KV, L, hd) (grouped-query heads share k, v), bias broadcastable to (B, 1, 1,
/// T, L). Returns (B, H, T, hd) over (B, T, H, hd) memory. For decoding, where T is 1 and the
/// operator form is a BLAS call per (row, head) with one query row each. A bias ≤ −1e8 masks its
/// column: a query with an unmasked column reads none of its masked columns' keys and values (a
/// row's padding costs nothing, and what those columns hold does not matter).
at::Tensor fused_query_attention(const at::Tensor& q,
                                 const at::Tensor& k,
                                 const at::Tensor& v,
                                 const at::Tensor& bias,
                                 double scale);

/// Whether the arguments take the one-pass kernels (CPU, fp32) rather than the operator form.
bool fused_ops_apply(const at::Tensor& x, const at::Tensor& other);

}  // namespace dnpo::model
