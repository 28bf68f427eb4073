// DNPO losses as pure tensor math; formulas and paper references beside each function.
#include "dnpo/train/dnpo_loss.h"

#include <algorithm>

#include <ATen/ATen.h>

#include "dnpo/common/error.h"
#include "dnpo/model/batch.h"
#include "noisy_negative.h"

namespace dnpo::train {

ResponseRows response_rows(const at::Tensor& input_ids, const at::Tensor& loss_mask) {
  DNPO_CHECK(input_ids.sizes() == loss_mask.sizes(),
             "input_ids {} and loss_mask {} differ in shape",
             input_ids.sizes(),
             loss_mask.sizes());
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

ResponseRows to_device(const ResponseRows& rows, at::Device device) {
  if (rows.hidden_row.device() == device) {
    return rows;
  }
  const auto move = [device](const at::Tensor& t) { return model::to_device(t, device); };
  return {move(rows.hidden_row),
          move(rows.target),
          move(rows.sample),
          move(rows.position),
          rows.sequences};
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
  return sequence_logprobs(hidden, lm_head, response_rows(input_ids, loss_mask), chunk_rows);
}

at::Tensor sequence_logprobs(const at::Tensor& hidden,
                             const at::Tensor& lm_head,
                             const ResponseRows& rows,
                             std::int64_t chunk_rows) {
  DNPO_CHECK(hidden.dim() == 3, "hidden must be (B,T,C), got {}", hidden.sizes());
  return gather_logprobs(hidden.reshape({-1, hidden.size(2)}),
                         lm_head,
                         rows,
                         rows.sequences > 0 ? rows.sequences : hidden.size(0),
                         chunk_rows);
}

at::Tensor sft_loss(const at::Tensor& hidden,
                    const at::Tensor& lm_head,
                    const at::Tensor& input_ids,
                    const at::Tensor& loss_mask,
                    double global_tokens) {
  return sft_loss(hidden, lm_head, response_rows(input_ids, loss_mask), global_tokens);
}

at::Tensor sft_loss(const at::Tensor& hidden,
                    const at::Tensor& lm_head,
                    const ResponseRows& rows,
                    double global_tokens) {
  DNPO_CHECK(global_tokens > 0, "sft_loss: the global batch has no response tokens");
  return -sequence_logprobs(hidden, lm_head, rows).sum() / global_tokens;
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

// NPO (DNPO §3.2) with the authors' single-step combined objective (docs/algorithm.md).
NpoTerms npo_loss(const NpoInputs& in,
                  const model::NoiseHead* head,
                  const config::NpoConfig& npo,
                  double beta) {
  DNPO_CHECK(npo.fixed_noise || head != nullptr,
             "npo_loss: a noise head is required unless npo.fixed_noise = true");
  return npo_loss(in, npo.fixed_noise ? std::vector<at::Tensor>{} : head->parameters(), npo, beta);
}

NpoTerms npo_loss(const NpoInputs& in,
                  const std::vector<at::Tensor>& head_params,
                  const config::NpoConfig& npo,
                  double beta) {
  DNPO_CHECK(npo.fixed_noise || !head_params.empty(),
             "npo_loss: noise head parameters are required unless npo.fixed_noise = true");
  DNPO_CHECK(in.global_pairs > 0, "npo_loss: global_pairs must be > 0");
  const auto batch = in.policy_chosen.size(0);
  const auto h_flat = in.ref_hidden.reshape({-1, in.ref_hidden.size(2)}).detach();
  const auto rows = in.rejected_rows.hidden_row.defined()
                        ? in.rejected_rows
                        : response_rows(in.rejected_ids, in.rejected_loss_mask);
  const auto n = rows.hidden_row.size(0);
  const auto given = in.draws.eps1.defined() ? in.draws.eps1.size(0)
                                             : static_cast<std::int64_t>(in.draws.row_keys1.size());
  DNPO_CHECK(
      given == n, "npo_loss: {} noise rows given for {} response rows of the negatives", given, n);

  // --- the noisy side: log π~_ref(y−; ε1, s.detach()), log π~_ref(y−; ε2, s), Σ P(s) ---
  detail::NoisyNegativeInputs noisy_in;
  noisy_in.hidden_rows = h_flat.index_select(0, rows.hidden_row);
  noisy_in.targets = rows.target;
  noisy_in.samples = rows.sample;
  noisy_in.ref_lm_head = in.ref_lm_head.detach();
  if (npo.penalty_positions == "all") {  // every row (prompt and padding included) or those given
    noisy_in.penalty_rows =
        in.penalty_positions.defined() ? h_flat.index_select(0, in.penalty_positions) : h_flat;
  }
  noisy_in.batch = batch;
  noisy_in.draws = in.draws;
  const auto noisy = detail::noisy_negative(
      noisy_in, npo.fixed_noise ? std::vector<at::Tensor>{} : head_params, npo);

  // --- the two margins and the combined objective ---
  const auto policy_margin = in.policy_chosen - in.policy_rejected;  // (B,) with grad in θ
  const auto ref_chosen = in.ref_chosen.detach();
  const auto m1 = policy_margin - (ref_chosen - noisy.noisy1);
  const auto m2 = policy_margin.detach() - (ref_chosen - noisy.noisy2);
  NpoTerms out;
  out.model_loss = neg_log_sigmoid(beta * m1).sum() / in.global_pairs;
  out.noise_loss = neg_log_sigmoid(beta * m2).sum() / in.global_pairs;
  out.penalty = in.global_penalty_elements > 0 ? noisy.penalty_sum / in.global_penalty_elements
                                               : noisy.penalty_sum;
  out.total =
      npo.fixed_noise ? out.model_loss : out.model_loss - out.noise_loss + npo.alpha * out.penalty;
  out.margins = m1.detach();
  out.noisy_rejected_1 = noisy.noisy1;
  out.noisy_rejected_2 = noisy.noisy2.detach();
  out.sum_s = noisy.sum_s;
  out.num_s = noisy.num_s;
  return out;
}

}  // namespace dnpo::train
