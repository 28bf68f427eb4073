// Batched GEMM over strided views with CBLAS; see batched_matmul.h.
#include "dnpo/model/batched_matmul.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/core/grad_mode.h>

#if defined(DNPO_HAS_CBLAS)
#include <cblas.h>
#include <torch/csrc/autograd/custom_function.h>
#endif

namespace dnpo::model {

#if defined(DNPO_HAS_CBLAS)
namespace {

/// How BLAS reads one matrix of a strided view: row-major (NoTrans) or column-major (Trans) with
/// leading dimension ld; usable = false when neither holds (the caller then copies).
struct MatrixLayout {
  CBLAS_TRANSPOSE trans = CblasNoTrans;
  std::int64_t ld = 0;
  bool usable = false;
};

MatrixLayout layout_of(std::int64_t rows,
                       std::int64_t cols,
                       std::int64_t row_stride,
                       std::int64_t col_stride) {
  // A dimension of size 1 has no meaningful stride; BLAS still needs ld >= the other extent.
  if ((cols == 1 || col_stride == 1) &&
      (rows == 1 || row_stride >= std::max<std::int64_t>(cols, 1))) {
    return {CblasNoTrans, rows == 1 ? std::max<std::int64_t>(cols, 1) : row_stride, true};
  }
  if ((rows == 1 || row_stride == 1) &&
      (cols == 1 || col_stride >= std::max<std::int64_t>(rows, 1))) {
    return {CblasTrans, cols == 1 ? std::max<std::int64_t>(rows, 1) : col_stride, true};
  }
  return {};
}

/// An operand expanded to the batch shape, in a layout BLAS reads (copied only if it must be).
struct Operand {
  at::Tensor view;
  MatrixLayout layout;
};

Operand operand(const at::Tensor& t, const std::vector<std::int64_t>& shape) {
  auto view = t.expand(shape);
  const auto d = view.dim();
  auto layout =
      layout_of(view.size(d - 2), view.size(d - 1), view.stride(d - 2), view.stride(d - 1));
  if (!layout.usable || layout.ld > INT32_MAX) {
    view = view.contiguous();
    layout = layout_of(view.size(d - 2), view.size(d - 1), view.stride(d - 2), view.stride(d - 1));
  }
  return {view, layout};
}

/// The product without autograd: a (..., M, K), b (..., K, N), fp32 CPU.
at::Tensor gemm_batches(const at::Tensor& a, const at::Tensor& b) {
  const auto m = a.size(-2);
  const auto k = a.size(-1);
  const auto n = b.size(-1);
  TORCH_CHECK(
      b.size(-2) == k, "batched_matmul: shapes ", a.sizes(), " and ", b.sizes(), " do not chain");
  auto batch = at::infer_size(a.sizes().slice(0, a.dim() - 2), b.sizes().slice(0, b.dim() - 2));
  auto shape_a = batch;
  shape_a.insert(shape_a.end(), {m, k});
  auto shape_b = batch;
  shape_b.insert(shape_b.end(), {k, n});
  auto shape_c = batch;
  shape_c.insert(shape_c.end(), {m, n});
  if (k == 0) {
    return at::zeros(shape_c, a.options());
  }
  auto out = at::empty(shape_c, a.options());
  if (out.numel() == 0) {
    return out;
  }
  const auto lhs = operand(a, shape_a);
  const auto rhs = operand(b, shape_b);
  const float* pa = lhs.view.data_ptr<float>();
  const float* pb = rhs.view.data_ptr<float>();
  float* pc = out.data_ptr<float>();
  // Walk the batch index like an odometer, moving both operands' offsets by their strides.
  const auto dims = static_cast<std::int64_t>(batch.size());
  std::vector<std::int64_t> index(batch.size(), 0);
  std::int64_t offset_a = 0;
  std::int64_t offset_b = 0;
  const std::int64_t count = out.numel() / (m * n);
  for (std::int64_t i = 0; i < count; ++i) {
    cblas_sgemm(CblasRowMajor,
                lhs.layout.trans,
                rhs.layout.trans,
                static_cast<int>(m),
                static_cast<int>(n),
                static_cast<int>(k),
                1.0F,
                pa + offset_a,
                static_cast<int>(lhs.layout.ld),
                pb + offset_b,
                static_cast<int>(rhs.layout.ld),
                0.0F,
                pc + i * m * n,
                static_cast<int>(n));
    for (std::int64_t d = dims - 1; d >= 0; --d) {
      offset_a += lhs.view.stride(d);
      offset_b += rhs.view.stride(d);
      if (++index[d] < batch[d]) {
        break;
      }
      offset_a -= lhs.view.stride(d) * batch[d];
      offset_b -= rhs.view.stride(d) * batch[d];
      index[d] = 0;
    }
  }
  return out;
}

/// d(a b) = (g bᵀ, aᵀ g), each summed over the dimensions its operand was broadcast along.
struct BatchedMatmulFunction : public torch::autograd::Function<BatchedMatmulFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx,
                            const at::Tensor& a,
                            const at::Tensor& b) {
    ctx->save_for_backward({a, b});
    return gemm_batches(a, b);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& a = saved[0];
    const auto& b = saved[1];
    const auto& g = grads[0];
    at::Tensor grad_a;
    at::Tensor grad_b;
    if (ctx->needs_input_grad(0)) {
      grad_a = gemm_batches(g, b.transpose(-1, -2)).sum_to_size(a.sizes());
    }
    if (ctx->needs_input_grad(1)) {
      grad_b = gemm_batches(a.transpose(-1, -2), g).sum_to_size(b.sizes());
    }
    return {grad_a, grad_b};
  }
};

bool takes_cblas_path(const at::Tensor& a, const at::Tensor& b) {
  return a.device().is_cpu() && b.device().is_cpu() && a.scalar_type() == at::kFloat &&
         b.scalar_type() == at::kFloat && a.dim() >= 3 && b.dim() >= 3 && a.size(-1) <= INT32_MAX &&
         a.size(-2) <= INT32_MAX && b.size(-1) <= INT32_MAX;
}

}  // namespace

at::Tensor batched_matmul(const at::Tensor& a, const at::Tensor& b) {
  if (!takes_cblas_path(a, b)) {
    return at::matmul(a, b);
  }
  if (at::GradMode::is_enabled() && (a.requires_grad() || b.requires_grad())) {
    return BatchedMatmulFunction::apply(a, b);
  }
  return gemm_batches(a, b);
}

bool batched_matmul_uses_cblas() {
  return true;
}

#else

at::Tensor batched_matmul(const at::Tensor& a, const at::Tensor& b) {
  return at::matmul(a, b);
}

bool batched_matmul_uses_cblas() {
  return false;
}

#endif

}  // namespace dnpo::model
