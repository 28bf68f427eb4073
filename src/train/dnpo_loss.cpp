// DNPO losses as pure tensor math; formulas and paper references beside each function.
#include "dnpo/train/dnpo_loss.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "dnpo/common/error.h"
#include "dnpo/model/random.h"

namespace dnpo::train {

ResponseRows response_rows(const at::Tensor& input_ids, const at::Tensor& loss_mask) {
  DNPO_CHECK(input_ids.sizes() == loss_mask.sizes(), "input_ids ", input_ids.sizes(),
             " and loss_mask ", loss_mask.sizes(), " differ in shape");
  const auto steps = input_ids.size(1);
  auto nz = loss_mask.nonzero();  // (N, 2): (b, t) in row-major order
  ResponseRows rows;
  rows.sample = nz.select(1, 0).contiguous();
  rows.position = nz.select(1, 1).contiguous();
  DNPO_CHECK(rows.position.numel() == 0 || rows.position.min().item<std::int64_t>() > 0,
             "loss_mask marks position 0, which has no logits before it");
  rows.hidden_row = rows.sample * steps + rows.position - 1;
  rows.target = input_ids.reshape({-1}).index_select(0, rows.sample * steps + rows.position);
  return rows;
}

namespace {

// Σ over rows of log_softmax(h_rows · Wᵀ)[target], accumulated per sample. hidden_flat (B·T, C).
at::Tensor gather_logprobs(const at::Tensor& hidden_flat,
                           const at::Tensor& lm_head,
                           const ResponseRows& rows,
                           std::int64_t batch,
                           std::int64_t chunk_rows) {
  auto out = at::zeros({batch}, hidden_flat.options().dtype(at::kFloat));
  const auto n = rows.hidden_row.size(0);
  for (std::int64_t begin = 0; begin < n; begin += chunk_rows) {
    const auto len = std::min(chunk_rows, n - begin);
    auto h = hidden_flat.index_select(0, rows.hidden_row.narrow(0, begin, len));
    // log-softmax in fp32 whatever the compute dtype
    auto logp = at::log_softmax(at::linear(h, lm_head).to(at::kFloat), -1);  // (len, V)
    auto picked = logp.gather(1, rows.target.narrow(0, begin, len).unsqueeze(1)).squeeze(1);
    out = out.index_add(0, rows.sample.narrow(0, begin, len), picked);
  }
  return out;
}

}  // namespace

at::Tensor sequence_logprobs(const at::Tensor& hidden,
                             const at::Tensor& lm_head,
                             const at::Tensor& input_ids,
                             const at::Tensor& loss_mask,
                             std::int64_t chunk_rows) {
  DNPO_CHECK(hidden.dim() == 3, "hidden must be (B,T,C), got ", hidden.sizes());
  const auto rows = response_rows(input_ids, loss_mask);
  return gather_logprobs(hidden.reshape({-1, hidden.size(2)}), lm_head, rows, hidden.size(0),
                         chunk_rows);
}

at::Tensor sft_loss(const at::Tensor& hidden,
                    const at::Tensor& lm_head,
                    const at::Tensor& input_ids,
                    const at::Tensor& loss_mask,
                    double global_tokens) {
  DNPO_CHECK(global_tokens > 0, "sft_loss: the global batch has no response tokens");
  return -sequence_logprobs(hidden, lm_head, input_ids, loss_mask).sum() / global_tokens;
}

at::Tensor neg_log_sigmoid(const at::Tensor& t) {
  return at::softplus(-t);
}

// SPIN (Chen et al. 2024, eq. 4.7 with ℓ logistic) = DPO sigmoid loss.
at::Tensor spin_pair_losses(const at::Tensor& policy_chosen,
                            const at::Tensor& policy_rejected,
                            const at::Tensor& ref_chosen,
                            const at::Tensor& ref_rejected,
                            double beta) {
  auto logits = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected);
  return neg_log_sigmoid(beta * logits);
}

// DSL (DNPO §3.1): the higher-scoring answer is the positive; ties go to the generated answer.
bool dsl_generated_is_positive(double generated_score, double human_score, double threshold) {
  return generated_score - human_score >= threshold;
}

std::int64_t penalty_rows(const config::NpoConfig& cfg, const at::Tensor& rejected_loss_mask) {
  if (cfg.penalty_positions == "all") {
    return rejected_loss_mask.numel();
  }
  return rejected_loss_mask.sum().item<std::int64_t>();
}

namespace {

at::Tensor draws_for(const NoiseDraws& d, bool first, std::int64_t begin, std::int64_t len,
                     std::int64_t vocab) {
  const auto& explicit_eps = first ? d.eps1 : d.eps2;
  if (explicit_eps.defined()) {
    return explicit_eps.narrow(0, begin, len);
  }
  const auto& keys = first ? d.row_keys1 : d.row_keys2;
  const std::vector<std::uint64_t> chunk(keys.begin() + begin, keys.begin() + begin + len);
  return model::counter_normal_rows(chunk, vocab);
}

at::Tensor penalty_of(const at::Tensor& s, const config::NpoConfig& npo) {
  return npo.penalty == "mean_sq" ? s.pow(2).sum() : s.sum();
}

}  // namespace

// NPO (DNPO §3.2) with the authors' single-step combined objective (ALGORITHM.md §3).
NpoTerms npo_loss(const NpoInputs& in,
                  const model::NoiseHead* head,
                  const config::NpoConfig& npo,
                  double beta) {
  DNPO_CHECK(npo.fixed_noise || head != nullptr, "npo_loss: a noise head is required unless "
                                                 "npo.fixed_noise = true");
  DNPO_CHECK(in.global_pairs > 0, "npo_loss: global_pairs must be > 0");
  const auto batch = in.policy_chosen.size(0);
  const auto steps = in.rejected_ids.size(1);
  const auto vocab = in.ref_lm_head.size(0);
  const auto h_flat = in.ref_hidden.reshape({-1, in.ref_hidden.size(2)}).detach();
  const auto rows = response_rows(in.rejected_ids, in.rejected_loss_mask);
  const auto n = rows.hidden_row.size(0);
  const auto explicit_n = in.draws.eps1.defined() ? in.draws.eps1.size(0)
                                                  : static_cast<std::int64_t>(in.draws.row_keys1.size());
  DNPO_CHECK(explicit_n == n, "npo_loss: ", explicit_n, " noise rows given for ", n,
             " response rows of the negatives");
  const std::int64_t chunk = std::max(1, npo.chunk_positions);

  NpoTerms out;
  auto noisy1 = at::zeros({batch}, at::kFloat);
  auto noisy2 = at::zeros({batch}, at::kFloat);
  auto penalty_sum = at::zeros({}, at::kFloat);
  // --- noisy reference log-probs, only at the negatives' response rows, chunk by chunk ---
  for (std::int64_t begin = 0; begin < n; begin += chunk) {
    const auto len = std::min(chunk, n - begin);
    const auto idx = rows.hidden_row.narrow(0, begin, len);
    const auto target = rows.target.narrow(0, begin, len).unsqueeze(1);
    const auto sample = rows.sample.narrow(0, begin, len);
    const auto h = h_flat.index_select(0, idx);                           // (len, C)
    at::Tensor z;
    {
      at::NoGradGuard no_grad;
      z = at::linear(h, in.ref_lm_head.detach()).to(at::kFloat);          // (len, V)
    }
    const auto s = npo.fixed_noise ? at::full({len, vocab}, npo.fixed_sigma, at::kFloat)
                                   : head->sigma(h).to(at::kFloat);       // (len, V)
    {
      at::NoGradGuard no_grad;  // ε1 term: the reference is frozen and s is detached
      auto logp1 = at::log_softmax(z + s.detach() * draws_for(in.draws, true, begin, len, vocab), -1);
      noisy1.index_add_(0, sample, logp1.gather(1, target).squeeze(1));
      out.sum_s += s.detach().sum().item<double>();
      out.num_s += s.numel();
    }
    auto logp2 = at::log_softmax(z + s * draws_for(in.draws, false, begin, len, vocab), -1);
    noisy2 = noisy2.index_add(0, sample, logp2.gather(1, target).squeeze(1));
    if (npo.penalty_positions != "all" && !npo.fixed_noise) {
      penalty_sum = penalty_sum + penalty_of(s, npo);
    }
  }
  // --- penalty over every row (prompt and padding too), the authors' variant ---
  if (npo.penalty_positions == "all" && !npo.fixed_noise) {
    const auto all_rows = batch * steps;
    for (std::int64_t begin = 0; begin < all_rows; begin += chunk) {
      const auto len = std::min(chunk, all_rows - begin);
      penalty_sum = penalty_sum + penalty_of(head->sigma(h_flat.narrow(0, begin, len)), npo);
    }
  }

  const auto policy_margin = in.policy_chosen - in.policy_rejected;  // (B,) with grad in θ
  const auto ref_chosen = in.ref_chosen.detach();
  const auto m1 = policy_margin - (ref_chosen - noisy1);
  const auto m2 = policy_margin.detach() - (ref_chosen - noisy2);
  out.model_loss = neg_log_sigmoid(beta * m1).sum() / in.global_pairs;
  out.noise_loss = neg_log_sigmoid(beta * m2).sum() / in.global_pairs;
  out.penalty = in.global_penalty_elements > 0 ? penalty_sum / in.global_penalty_elements
                                               : penalty_sum;
  out.total = npo.fixed_noise ? out.model_loss
                              : out.model_loss - out.noise_loss + npo.alpha * out.penalty;
  out.margins = m1.detach();
  out.noisy_rejected_1 = noisy1;
  out.noisy_rejected_2 = noisy2.detach();
  return out;
}

}  // namespace dnpo::train
