// One-pass CPU kernels for RMSNorm and rotary embedding; see fused_ops.h.
#include "dnpo/model/fused_ops.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

namespace dnpo::model {
namespace {

// Rows per parallel task: enough that a task outweighs its scheduling.
constexpr std::int64_t kRowGrain = 64;

// --- RMSNorm ---

struct RmsForward {
  at::Tensor y;
  at::Tensor rstd;  // (rows,) fp32: 1 / √(mean(x²) + eps) per row
};

RmsForward rms_norm_forward(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const auto d = x.size(-1);
  const auto rows = d == 0 ? 0 : x.numel() / d;
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto rstd = at::empty({rows}, x.options());
  const float* px = x.data_ptr<float>();
  const float* pw = weight.data_ptr<float>();
  float* py = y.data_ptr<float>();
  float* pr = rstd.data_ptr<float>();
  at::parallel_for(0, rows, kRowGrain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t r = begin; r < end; ++r) {
      const float* xr = px + r * d;
      float* yr = py + r * d;
      double sum_sq = 0;
      for (std::int64_t i = 0; i < d; ++i) {
        sum_sq += static_cast<double>(xr[i]) * xr[i];
      }
      const auto inv = static_cast<float>(1.0 / std::sqrt(sum_sq / static_cast<double>(d) + eps));
      pr[r] = inv;
      for (std::int64_t i = 0; i < d; ++i) {
        yr[i] = pw[i] * (xr[i] * inv);  // weight · normed, as the operator form rounds it
      }
    }
  });
  return {y, rstd};
}

// gx = r (gy·w − x r² ⟨gy·w, x⟩ / d);  gw = Σ_rows gy · x r.
std::array<at::Tensor, 2> rms_norm_backward(const at::Tensor& gy,
                                            const at::Tensor& x,
                                            const at::Tensor& weight,
                                            const at::Tensor& rstd,
                                            bool need_x,
                                            bool need_weight) {
  const auto d = x.size(-1);
  const auto rows = d == 0 ? 0 : x.numel() / d;
  auto gx = need_x ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::Tensor();
  // One fp64 partial sum of gw per thread, added up after.
  const auto threads = at::get_num_threads();
  auto partial =
      need_weight ? at::zeros({threads, d}, x.options().dtype(at::kDouble)) : at::Tensor();
  const float* pg = gy.data_ptr<float>();
  const float* px = x.data_ptr<float>();
  const float* pw = weight.data_ptr<float>();
  const float* pr = rstd.data_ptr<float>();
  float* pgx = need_x ? gx.data_ptr<float>() : nullptr;
  double* ppart = need_weight ? partial.data_ptr<double>() : nullptr;
  at::parallel_for(0, rows, kRowGrain, [&](std::int64_t begin, std::int64_t end) {
    double* gw = ppart != nullptr ? ppart + at::get_thread_num() * d : nullptr;
    for (std::int64_t r = begin; r < end; ++r) {
      const float* gr = pg + r * d;
      const float* xr = px + r * d;
      const float inv = pr[r];
      if (pgx != nullptr) {
        double dot = 0;
        for (std::int64_t i = 0; i < d; ++i) {
          dot += static_cast<double>(gr[i] * pw[i]) * xr[i];
        }
        const auto scale = static_cast<float>(dot * inv * inv / static_cast<double>(d));
        float* gxr = pgx + r * d;
        for (std::int64_t i = 0; i < d; ++i) {
          gxr[i] = inv * (gr[i] * pw[i] - xr[i] * scale);
        }
      }
      if (gw != nullptr) {
        for (std::int64_t i = 0; i < d; ++i) {
          gw[i] += static_cast<double>(gr[i]) * (xr[i] * inv);
        }
      }
    }
  });
  at::Tensor gw;
  if (need_weight) {
    gw = partial.sum(0).to(at::kFloat);
  }
  return {gx, gw};
}

struct RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx,
                            const at::Tensor& x,
                            const at::Tensor& weight,
                            double eps) {
    auto out = rms_norm_forward(x, weight, eps);
    ctx->save_for_backward({x, weight, out.rstd});
    return out.y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto g = grads[0].contiguous();
    auto [gx, gw] = rms_norm_backward(
        g, saved[0], saved[1], saved[2], ctx->needs_input_grad(0), ctx->needs_input_grad(1));
    return {gx, gw, at::Tensor()};
  }
};

// --- rotary ---

using Strides = std::array<std::int64_t, 4>;

Strides strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// out = x·c + rotate_half(x)·s (forward), or its transpose gx = g·c + rotate_halfᵀ(g·s)
// (backward), over (B, H, T) rows of hd values; c and s broadcast over H.
void rotary_kernel(const at::Tensor& in,
                   const at::Tensor& cos,
                   const at::Tensor& sin,
                   const at::Tensor& out,
                   bool transpose) {
  const auto batch = in.size(0);
  const auto heads = in.size(1);
  const auto steps = in.size(2);
  const auto hd = in.size(3);
  const auto half = hd / 2;
  const Strides si = strides_of(in);
  const Strides so = strides_of(out);
  const Strides sc = strides_of(cos);
  const Strides ss = strides_of(sin);
  const float* pi = in.data_ptr<float>();
  const float* pc = cos.data_ptr<float>();
  const float* ps = sin.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, batch * heads * steps, kRowGrain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t row = begin; row < end; ++row) {
      const auto t = row % steps;
      const auto h = (row / steps) % heads;
      const auto b = row / (steps * heads);
      const float* x = pi + b * si[0] + h * si[1] + t * si[2];
      const float* c = pc + b * sc[0] + t * sc[2];
      const float* s = ps + b * ss[0] + t * ss[2];
      float* y = po + b * so[0] + h * so[1] + t * so[2];
      for (std::int64_t i = 0; i < half; ++i) {
        const float x1 = x[i];
        const float x2 = x[i + half];
        if (!transpose) {
          y[i] = x1 * c[i] - x2 * s[i];
          y[i + half] = x2 * c[i + half] + x1 * s[i + half];
        } else {
          y[i] = x1 * c[i] + x2 * s[i + half];
          y[i + half] = x2 * c[i + half] - x1 * s[i];
        }
      }
    }
  });
}

// The layouts the kernel reads: last dimension dense; cos and sin expanded to (B, 1, T, hd).
at::Tensor last_dim_dense(const at::Tensor& t) {
  return t.stride(-1) == 1 ? t : t.contiguous();
}

at::Tensor rotary_apply(const at::Tensor& x,
                        const at::Tensor& cos,
                        const at::Tensor& sin,
                        bool transpose) {
  const auto in = last_dim_dense(x);
  // empty_like keeps a dense permuted layout (q and k arrive as (B, T, H, hd) transposed).
  auto out = at::empty_like(in);
  if (out.stride(-1) != 1) {
    out = at::empty_like(in, at::MemoryFormat::Contiguous);
  }
  const std::vector<std::int64_t> shape{x.size(0), 1, x.size(2), x.size(3)};
  rotary_kernel(
      in, last_dim_dense(cos).expand(shape), last_dim_dense(sin).expand(shape), out, transpose);
  return out;
}

struct RotaryFunction : public torch::autograd::Function<RotaryFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx,
                            const at::Tensor& x,
                            const at::Tensor& cos,
                            const at::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    return rotary_apply(x, cos, sin, false);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {rotary_apply(grads[0], saved[0], saved[1], true), at::Tensor(), at::Tensor()};
  }
};

// --- attention for a few query positions (decoding) ---

// A bias at or below this masks its column (make_attention_context writes -1e9): added to any
// score of an unmasked column's size, its exp is exactly 0 in fp32.
constexpr float kMaskedBias = -1e8F;

// ⟨a, b⟩ over n floats in 8 independent partial sums, so the compiler can vectorize it.
float dot(const float* a, const float* b, std::int64_t n) {
  std::array<float, 8> lanes{};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (std::int64_t j = 0; j < 8; ++j) {
      lanes[j] += a[i + j] * b[i + j];
    }
  }
  float sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
              ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  for (; i < n; ++i) {
    sum += a[i] * b[i];
  }
  return sum;
}

/// A run of columns: column l starts at data + l · stride.
struct Columns {
  const float* data;
  std::int64_t stride;
};

struct QueryShape {
  std::int64_t length;  // columns
  std::int64_t hd;
  float scale;
};

// softmax((q·k) · scale + bias) v for one query row into out (hd floats); scores has a float per
// column. The operator form's steps (a max-shifted softmax), though not its rounding (8-lane sums,
// a multiply by scale), so results differ in the last bits. Masked columns are skipped when some
// column is not: their exp underflows to exactly 0, so they add nothing, and a row's padding and
// other rows' columns cost no reads.
void attend_query(const float* q,
                  Columns keys,
                  Columns values,
                  Columns bias,
                  QueryShape shape,
                  float* scores,
                  float* out) {
  const auto masked = [&](std::int64_t l) { return bias.data[l * bias.stride] <= kMaskedBias; };
  bool skip = false;
  for (std::int64_t l = 0; l < shape.length && !skip; ++l) {
    skip = !masked(l);
  }
  float top = -std::numeric_limits<float>::infinity();
  for (std::int64_t l = 0; l < shape.length; ++l) {
    if (skip && masked(l)) {
      continue;
    }
    scores[l] =
        dot(q, keys.data + l * keys.stride, shape.hd) * shape.scale + bias.data[l * bias.stride];
    top = std::max(top, scores[l]);
  }
  float total = 0;
  for (std::int64_t l = 0; l < shape.length; ++l) {
    if (skip && masked(l)) {
      continue;
    }
    scores[l] = std::exp(scores[l] - top);
    total += scores[l];
  }
  const float inv = 1.0F / total;
  std::fill(out, out + shape.hd, 0.0F);
  for (std::int64_t l = 0; l < shape.length; ++l) {
    if (skip && masked(l)) {
      continue;
    }
    const float w = scores[l] * inv;
    const float* v = values.data + l * values.stride;
    for (std::int64_t i = 0; i < shape.hd; ++i) {
      out[i] += w * v[i];
    }
  }
}
}  // namespace

at::Tensor fused_query_attention(const at::Tensor& q,
                                 const at::Tensor& k,
                                 const at::Tensor& v,
                                 const at::Tensor& bias,
                                 double scale) {
  TORCH_CHECK(fused_ops_apply(q, k) && fused_ops_apply(q, v) && fused_ops_apply(q, bias) &&
                  q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes() &&
                  k.size(0) == q.size(0) && k.size(3) == q.size(3) && k.size(1) > 0 &&
                  q.size(1) % k.size(1) == 0,
              "fused_query_attention: needs CPU fp32 q (B, H, T, hd), k and v (B, KV, L, hd) with "
              "KV dividing H; got ",
              q.sizes(),
              ", ",
              k.sizes(),
              " and ",
              v.sizes());
  const auto batch = q.size(0);
  const auto heads = q.size(1);
  const auto steps = q.size(2);
  const auto hd = q.size(3);
  const auto kv_heads = k.size(1);
  const auto length = k.size(2);
  const auto group = heads / kv_heads;
  // The bias as (B, T, L) strides, broadcast where it has size 1.
  TORCH_CHECK(bias.dim() >= 2 && bias.size(-1) == length && bias.size(-2) == steps &&
                  (bias.dim() == 2 || bias.size(0) == batch || bias.size(0) == 1),
              "fused_query_attention: bias must broadcast to (B, 1, 1, T, L) = (",
              batch,
              ", 1, 1, ",
              steps,
              ", ",
              length,
              "); got ",
              bias.sizes());
  for (std::int64_t d = 1; d + 2 < bias.dim(); ++d) {
    TORCH_CHECK(bias.size(d) == 1, "fused_query_attention: bias ", bias.sizes(), " is per head");
  }
  const auto bias_b = bias.dim() > 2 && bias.size(0) == batch ? bias.stride(0) : 0;
  const auto bias_t = bias.stride(-2);
  const auto bias_l = bias.stride(-1);
  // Rows of hd contiguous; the cache's narrowed views already are.
  const auto qc = q.stride(3) == 1 ? q : q.contiguous();
  const auto kc = k.stride(3) == 1 ? k : k.contiguous();
  const auto vc = v.stride(3) == 1 ? v : v.contiguous();
  // (B, T, H, hd) memory, returned as (B, H, T, hd): the caller's (B, T, H·hd) is then a view.
  auto out = at::empty({batch, steps, heads, hd}, q.options());
  const float* pq = qc.data_ptr<float>();
  const float* pk = kc.data_ptr<float>();
  const float* pv = vc.data_ptr<float>();
  const float* pb = bias.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const auto rows = batch * heads * steps;
  at::parallel_for(0, rows, 16, [&](std::int64_t begin, std::int64_t end) {
    std::vector<float> scores(static_cast<std::size_t>(length));
    for (std::int64_t r = begin; r < end; ++r) {
      const auto b = r / (heads * steps);
      const auto h = (r / steps) % heads;
      const auto t = r % steps;
      const float* qr = pq + b * qc.stride(0) + h * qc.stride(1) + t * qc.stride(2);
      attend_query(qr,
                   {pk + b * kc.stride(0) + (h / group) * kc.stride(1), kc.stride(2)},
                   {pv + b * vc.stride(0) + (h / group) * vc.stride(1), vc.stride(2)},
                   {pb + b * bias_b + t * bias_t, bias_l},
                   {length, hd, static_cast<float>(scale)},
                   scores.data(),
                   po + ((b * steps + t) * heads + h) * hd);
    }
  });
  return out.transpose(1, 2);
}

bool fused_ops_apply(const at::Tensor& x, const at::Tensor& other) {
  return x.device().is_cpu() && other.device().is_cpu() && x.scalar_type() == at::kFloat &&
         other.scalar_type() == at::kFloat;
}

at::Tensor fused_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(fused_ops_apply(x, weight) && x.dim() >= 1 && weight.dim() == 1 &&
                  weight.size(0) == x.size(-1),
              "fused_rms_norm: needs CPU fp32 x (..., d) and weight (d); got ",
              x.sizes(),
              " and ",
              weight.sizes());
  const auto xc = x.contiguous();
  const auto wc = weight.contiguous();
  if (at::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad())) {
    return RmsNormFunction::apply(xc, wc, eps);
  }
  return rms_norm_forward(xc, wc, eps).y;
}

at::Tensor fused_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(fused_ops_apply(x, cos) && fused_ops_apply(x, sin) && x.dim() == 4 &&
                  cos.dim() == 4 && sin.sizes() == cos.sizes() && cos.size(1) == 1 &&
                  cos.size(2) == x.size(2) && cos.size(3) == x.size(3) && x.size(3) % 2 == 0 &&
                  (cos.size(0) == x.size(0) || cos.size(0) == 1),
              "fused_rotary: needs CPU fp32 x (B, H, T, hd) and cos, sin (B, 1, T, hd); got ",
              x.sizes(),
              " and ",
              cos.sizes());
  TORCH_CHECK(!cos.requires_grad() && !sin.requires_grad(),
              "fused_rotary: cos and sin take no gradient");
  if (at::GradMode::is_enabled() && x.requires_grad()) {
    return RotaryFunction::apply(x, cos, sin);
  }
  return rotary_apply(x, cos, sin, false);
}

}  // namespace dnpo::model
