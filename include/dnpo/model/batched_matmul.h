// Batched matrix products for attention (scores = q kᵀ, context = p v), as at::matmul but without
// LibTorch 1.13's per-matrix dispatch on CPU: its bmm selects, resolves and dispatches once per
// (batch, head) matrix, and a small model's matrices are small enough that the dispatch costs
// more than the arithmetic. Here one loop calls CBLAS on strided views: no copies for
// transposed or broadcast (GQA) operands, and a custom autograd node with the same kernel.
#pragma once

#include <ATen/core/Tensor.h>

namespace dnpo::model {

/// a (..., M, K) @ b (..., K, N) → (..., M, N), batch dims broadcast, differentiable. CPU fp32
/// tensors take the CBLAS loop (when the build found CBLAS); everything else calls at::matmul.
at::Tensor batched_matmul(const at::Tensor& a, const at::Tensor& b);

/// Whether batched_matmul has the CBLAS path in this build.
bool batched_matmul_uses_cblas();

}  // namespace dnpo::model
