// Chunked noisy reference log-probs with recompute-in-backward; see noisy_negative.h.
#include "noisy_negative.h"

#include <algorithm>

#include <torch/torch.h>

#include "dnpo/common/error.h"
#include "dnpo/model/noise_head.h"
#include "dnpo/model/random.h"

namespace dnpo::train::detail {
namespace {

// Everything backward needs besides the head parameters; lives in the autograd context.
struct SavedState : torch::CustomClassHolder {
  NoisyNegativeInputs in;
  config::NpoConfig npo;
};

// The ε of a chunk of rows: explicit tensors (tests), else drawn from the rows' keys. Off the CPU
// the keys go to the device once per pass (at first use), not once per chunk: a copy per chunk
// made the host wait for the GPU each time.
class ChunkDraws {
 public:
  ChunkDraws(const NoiseDraws& d, const at::Device& device) : d_(d), device_(device) {}

  at::Tensor at(bool first, std::int64_t begin, std::int64_t len, std::int64_t vocab) {
    const auto& explicit_eps = first ? d_.eps1 : d_.eps2;
    if (explicit_eps.defined()) {  // a copy: the caller's ε must survive the in-place use
      return explicit_eps.narrow(0, begin, len).to(device_, /*non_blocking=*/false, /*copy=*/true);
    }
    const auto& row_keys = first ? d_.row_keys1 : d_.row_keys2;
    if (device_.is_cpu()) {
      const std::vector<std::uint64_t> chunk(row_keys.begin() + begin,
                                             row_keys.begin() + begin + len);
      return model::counter_normal_rows(chunk, vocab, device_);
    }
    auto& keys = first ? keys1_ : keys2_;
    if (!keys.defined()) {
      keys = model::counter_row_keys(row_keys, device_);
    }
    return model::counter_normal_rows(keys.narrow(0, begin, len), vocab);
  }

 private:
  const NoiseDraws& d_;
  at::Device device_;
  at::Tensor keys1_, keys2_;  // the row keys on the device
};

// s (len, V) fp32 of a chunk without autograd, computed in place on the head's output; (len, 0)
// for fixed noise.
at::Tensor sigma_rows(const config::NpoConfig& npo,
                      const std::vector<at::Tensor>& params,
                      const at::Tensor& h) {
  if (params.empty()) {
    return at::full({h.size(0), 0}, npo.fixed_sigma, h.options().dtype(at::kFloat));
  }
  auto s = model::NoiseHead::logits_of(npo, params, h).to(at::kFloat).exp_().mul_(npo.scale);
  return npo.max_sigma > 0 ? s.clamp_max_(npo.max_sigma) : s;
}

at::Tensor penalty_of(const at::Tensor& s, const config::NpoConfig& npo) {
  return npo.penalty == "mean_sq" ? s.pow(2).sum() : s.sum();
}

// log_softmax(z + s·ε)[target] for one chunk of rows: (len,). z + s·ε is formed in ε's buffer.
at::Tensor noisy_chunk_logprobs(const at::Tensor& z,
                                const at::Tensor& s,
                                at::Tensor eps,
                                const at::Tensor& target,
                                const config::NpoConfig& npo) {
  auto x = s.size(1) == 0 ? eps.mul_(npo.fixed_sigma) : eps.mul_(s);
  x.add_(z);
  return at::log_softmax(x, -1).gather(1, target.unsqueeze(1)).squeeze(1);
}

// ∂/∂f of Σ_rows w · log_softmax(z + s·ε)[t] (+ g_pen · P(s) when grad_penalty is defined), with
// s = scale · exp(f) clamped at max_sigma. By hand, in the buffers of f, z and ε and one more:
// autograd of the same expression kept a dozen (len, V) tensors and made as many passes.
//   ∂/∂s = w · ε · (onehot(t) − softmax(z + s·ε)) + g_pen · P'(s)
//   ∂s/∂f = s where scale · exp(f) ≤ max_sigma, else 0 (clamp_max passes the gradient at ≤)
at::Tensor noisy_chunk_grad_f(at::Tensor f,
                              at::Tensor z,
                              at::Tensor eps,
                              const at::Tensor& target,
                              const at::Tensor& row_weight,
                              const at::Tensor& grad_penalty,
                              const config::NpoConfig& npo) {
  auto s = f.exp_().mul_(npo.scale);
  at::Tensor passes;
  if (npo.max_sigma > 0) {
    passes = s <= npo.max_sigma;
    s.clamp_max_(npo.max_sigma);
  }
  const auto t = target.unsqueeze(1);
  auto g = at::softmax(z.addcmul_(eps, s), -1);  // p = softmax(z + ε·s)
  g.mul_(eps).neg_().scatter_add_(1, t, eps.gather(1, t)).mul_(row_weight.unsqueeze(1));
  if (grad_penalty.defined()) {
    if (npo.penalty == "mean_sq") {
      g.addcmul_(s, grad_penalty * 2);
    } else {
      g.add_(grad_penalty);
    }
  }
  g.mul_(s);
  return passes.defined() ? g.mul_(passes) : g;
}

// Forward pass over all chunks, no autograd: both noisy log-probs, the penalty, Σ s.
NoisyNegative forward_chunks(const NoisyNegativeInputs& in,
                             const std::vector<at::Tensor>& params,
                             const config::NpoConfig& npo) {
  at::NoGradGuard no_grad;
  const auto n = in.hidden_rows.size(0);
  const auto vocab = in.ref_lm_head.size(0);
  const std::int64_t chunk = std::max(1, npo.chunk_positions);
  const auto fp32 = in.hidden_rows.options().dtype(at::kFloat);
  const auto device = in.hidden_rows.device();
  ChunkDraws draws(in.draws, device);
  NoisyNegative out;
  out.noisy1 = at::zeros({in.batch}, fp32);
  out.noisy2 = at::zeros({in.batch}, fp32);
  out.penalty_sum = at::zeros({}, fp32);
  // left on the device: the trainer reads it with the step's other statistics
  out.sum_s = at::zeros({}, fp32.dtype(at::kDouble));
  for (std::int64_t begin = 0; begin < n; begin += chunk) {
    const auto len = std::min(chunk, n - begin);
    const auto h = in.hidden_rows.narrow(0, begin, len);  // (len, C)
    const auto target = in.targets.narrow(0, begin, len);
    const auto sample = in.samples.narrow(0, begin, len);
    const auto z = at::linear(h, in.ref_lm_head).to(at::kFloat);  // (len, V)
    const auto s = sigma_rows(npo, params, h);                    // (len, V) or (len, 0)
    out.noisy1.index_add_(
        0, sample, noisy_chunk_logprobs(z, s, draws.at(true, begin, len, vocab), target, npo));
    out.noisy2.index_add_(
        0, sample, noisy_chunk_logprobs(z, s, draws.at(false, begin, len, vocab), target, npo));
    if (s.size(1) > 0) {
      out.sum_s += s.sum();
      if (!in.penalty_rows.defined()) {
        out.penalty_sum += penalty_of(s, npo);
      }
    } else {
      out.sum_s += npo.fixed_sigma * static_cast<double>(len * vocab);
    }
    out.num_s += len * vocab;
  }
  if (in.penalty_rows.defined() && !params.empty()) {
    const auto m = in.penalty_rows.size(0);
    for (std::int64_t begin = 0; begin < m; begin += chunk) {
      const auto len = std::min(chunk, m - begin);
      out.penalty_sum +=
          penalty_of(sigma_rows(npo, params, in.penalty_rows.narrow(0, begin, len)), npo);
    }
  }
  return out;
}

// Autograd node: inputs are the head parameters (up to 3; unused slots get an empty tensor),
// outputs (noisy2, penalty_sum). Backward recomputes s and the ε2 log-probs chunk by chunk.
class NoisyNegativeFunction : public torch::autograd::Function<NoisyNegativeFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& p0,
                                                const at::Tensor& p1,
                                                const at::Tensor& p2,
                                                std::int64_t num_params,
                                                c10::intrusive_ptr<SavedState> state,
                                                NoisyNegative* result) {
    std::vector<at::Tensor> params{p0, p1, p2};
    params.resize(num_params);
    *result = forward_chunks(state->in, params, state->npo);
    ctx->save_for_backward({p0, p1, p2});
    ctx->saved_data["num_params"] = num_params;
    ctx->saved_data["state"] = at::IValue::make_capsule(std::move(state));
    return {result->noisy2, result->penalty_sum};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto state =
        c10::static_intrusive_pointer_cast<SavedState>(ctx->saved_data["state"].toCapsule());
    const auto num_params = ctx->saved_data["num_params"].toInt();
    const auto& in = state->in;
    const auto& npo = state->npo;
    const auto saved = ctx->get_saved_variables();
    std::vector<at::Tensor> params;  // fresh leaves so each chunk's graph is local
    for (std::int64_t i = 0; i < num_params; ++i) {
      params.push_back(saved[i].detach().requires_grad_(true));
    }
    std::vector<at::Tensor> accumulated(num_params);
    // the head parameters' gradients of `output`, given ∂objective/∂output, added up
    const auto accumulate_from = [&](const at::Tensor& output, const at::Tensor& grad_output) {
      const auto g = torch::autograd::grad({output}, params, {grad_output}, false, false, true);
      for (std::int64_t i = 0; i < num_params; ++i) {
        if (g[i].defined()) {
          // in place: a head's weight gradient is as large as the lm_head
          accumulated[i] = accumulated[i].defined() ? accumulated[i].add_(g[i]) : g[i];
        }
      }
    };
    const auto fp32 = in.hidden_rows.options().dtype(at::kFloat);
    const auto grad_noisy2 = grads[0].defined() ? grads[0] : at::zeros({in.batch}, fp32);
    const auto grad_penalty = grads[1].defined() ? grads[1] : at::zeros({}, fp32);
    const auto n = in.hidden_rows.size(0);
    const auto vocab = in.ref_lm_head.size(0);
    const std::int64_t chunk = std::max(1, npo.chunk_positions);
    torch::autograd::AutoGradMode enable(true);
    ChunkDraws draws(in.draws, in.hidden_rows.device());
    for (std::int64_t begin = 0; begin < n; begin += chunk) {
      const auto len = std::min(chunk, n - begin);
      const auto h = in.hidden_rows.narrow(0, begin, len);
      const auto f = model::NoiseHead::logits_of(npo, params, h);  // the head's graph
      at::Tensor grad_f;
      {
        at::NoGradGuard no_grad;
        // f's product saves its inputs, not f: its buffer can become s in place.
        grad_f = noisy_chunk_grad_f(f.detach().to(at::kFloat),
                                    at::linear(h, in.ref_lm_head).to(at::kFloat),
                                    draws.at(false, begin, len, vocab),
                                    in.targets.narrow(0, begin, len),
                                    grad_noisy2.index_select(0, in.samples.narrow(0, begin, len)),
                                    in.penalty_rows.defined() ? at::Tensor() : grad_penalty,
                                    npo);
      }
      accumulate_from(f, grad_f.to(f.scalar_type()));
    }
    if (in.penalty_rows.defined()) {
      const auto m = in.penalty_rows.size(0);
      for (std::int64_t begin = 0; begin < m; begin += chunk) {
        const auto len = std::min(chunk, m - begin);
        const auto s =
            model::NoiseHead::sigma_of(npo, params, in.penalty_rows.narrow(0, begin, len));
        accumulate_from(penalty_of(s, npo), grad_penalty);
      }
    }
    // Backward runs once: let go of the inputs now (the reference's lm_head among them) instead
    // of when the whole graph is freed.
    ctx->saved_data.erase("state");
    torch::autograd::variable_list out(6);  // one per forward argument
    for (std::int64_t i = 0; i < num_params; ++i) {
      out[i] = accumulated[i];
    }
    return out;
  }
};

}  // namespace

NoisyNegative noisy_negative(const NoisyNegativeInputs& in,
                             const std::vector<at::Tensor>& head_params,
                             const config::NpoConfig& npo) {
  if (head_params.empty()) {
    return forward_chunks(in, head_params, npo);  // fixed noise: nothing to train
  }
  DNPO_INTERNAL_ASSERT(head_params.size() <= 3);
  auto state = c10::make_intrusive<SavedState>();
  state->in = in;
  state->npo = npo;
  const auto empty = at::empty({0}, at::kFloat);
  const auto param = [&](std::size_t i) { return i < head_params.size() ? head_params[i] : empty; };
  NoisyNegative result;
  const auto outputs = NoisyNegativeFunction::apply(param(0),
                                                    param(1),
                                                    param(2),
                                                    static_cast<std::int64_t>(head_params.size()),
                                                    std::move(state),
                                                    &result);
  result.noisy2 = outputs[0];
  result.penalty_sum = outputs[1];
  return result;
}

}  // namespace dnpo::train::detail
