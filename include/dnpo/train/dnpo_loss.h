// The losses of DNPO as pure tensor math (docs/algorithm.md): sequence log-probs over response
// tokens, SFT, SPIN/DPO sigmoid loss, DSL relabeling, and NPO's single-step combined objective.
// Everything is normalised by *global* counts passed in, so micro-batches and ranks add up.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dnpo/config/config.h"
#include "dnpo/model/noise_head.h"

namespace dnpo::train {

/// The (b, t) with loss_mask[b,t] = 1 in row-major order. The token at t is scored by the logits
/// at t-1, so hidden_row = b·T + t − 1 indexes the flattened (B·T, C) hidden state. A packed
/// batch makes its own (PairBatch): sample numbers the sequences, position is within one.
struct ResponseRows {
  at::Tensor hidden_row;       // (N,) int64
  at::Tensor target;           // (N,) int64 token ids
  at::Tensor sample;           // (N,) int64 row b within the batch (the sequence)
  at::Tensor position;         // (N,) int64 t (within the sequence)
  std::int64_t sequences = 0;  // how many sequences `sample` numbers; 0: the batch's rows
};
/// Where loss_mask is set, in row-major order. Made from the host copy of a batch, it costs the
/// GPU no host sync (nonzero would); then to_device.
ResponseRows response_rows(const at::Tensor& input_ids, const at::Tensor& loss_mask);
/// The same rows on `device` (from pinned memory when that is a GPU: the copies are queued).
ResponseRows to_device(const ResponseRows& rows, at::Device device);

/// log π(y|x) per sequence: Σ over response tokens of log_softmax(logits)[token], computed only
/// at response rows (hidden (B,T,C), lm_head (V,C)) in chunks of chunk_rows. → (B,) fp32, or
/// (rows.sequences,) when the rows number sequences rather than rows.
at::Tensor sequence_logprobs(const at::Tensor& hidden,
                             const at::Tensor& lm_head,
                             const at::Tensor& input_ids,
                             const at::Tensor& loss_mask,
                             std::int64_t chunk_rows = 1024);

/// Token-level cross-entropy summed over response tokens, divided by global_tokens.
/// As above, with the response rows made already (possibly from the host copy of the batch).
at::Tensor sequence_logprobs(const at::Tensor& hidden,
                             const at::Tensor& lm_head,
                             const ResponseRows& rows,
                             std::int64_t chunk_rows = 1024);

at::Tensor sft_loss(const at::Tensor& hidden,
                    const at::Tensor& lm_head,
                    const at::Tensor& input_ids,
                    const at::Tensor& loss_mask,
                    double global_tokens);
at::Tensor sft_loss(const at::Tensor& hidden,
                    const at::Tensor& lm_head,
                    const ResponseRows& rows,
                    double global_tokens);

/// ℓ(t) = −log σ(t) = softplus(−t), elementwise.
at::Tensor neg_log_sigmoid(const at::Tensor& t);

/// SPIN / DPO sigmoid loss per pair: ℓ(β[(πc − rc) − (πr − rr)]) → (B,).
at::Tensor spin_pair_losses(const at::Tensor& policy_chosen,
                            const at::Tensor& policy_rejected,
                            const at::Tensor& ref_chosen,
                            const at::Tensor& ref_rejected,
                            double beta);

/// DSL: true when the generated answer becomes the positive (s' − s >= threshold; ties →
/// generated).
bool dsl_generated_is_positive(double generated_score, double human_score, double threshold);

/// Where ε for the noisy reference log-prob comes from: explicit tensors (N, V) (golden tests) or
/// one counter key per response row (training; see common/counter_rng.h).
struct NoiseDraws {
  at::Tensor eps1, eps2;                 // explicit (N, V) fp32, or undefined
  std::vector<std::uint64_t> row_keys1;  // else: key of row i for ε1
  std::vector<std::uint64_t> row_keys2;  // and for ε2
};

/// Inputs of NPO for one micro-batch of B pairs whose negatives have N response rows.
struct NpoInputs {
  at::Tensor policy_chosen;    // (B,) log π_θ(y+), with grad
  at::Tensor policy_rejected;  // (B,) log π_θ(y−), with grad
  at::Tensor ref_chosen;       // (B,) log π_ref(y+), no grad
  at::Tensor ref_hidden;       // (B, T, C) reference final hidden state of the negatives, no grad
  at::Tensor ref_lm_head;      // (V, C)
  at::Tensor rejected_ids;     // (B, T) int64
  at::Tensor rejected_loss_mask;  // (B, T) int64
  ResponseRows rejected_rows;     // response_rows of the two above, if made already (else made)
  at::Tensor penalty_positions;   // rows of ref_hidden's flat (B·T) rows that penalty "all"
                                  // reads; undefined: every one
  NoiseDraws draws;
  double global_pairs = 0;             // pairs in the global batch (mean normaliser)
  double global_penalty_elements = 0;  // penalty rows in the global batch × V
};

struct NpoTerms {
  at::Tensor total;             // () the value to backpropagate
  at::Tensor model_loss;        // () Σ ℓ(β m1) / global_pairs
  at::Tensor noise_loss;        // () Σ ℓ(β m2) / global_pairs
  at::Tensor penalty;           // () Σ P(s) / global_penalty_elements (unweighted)
  at::Tensor margins;           // (B,) m1, detached
  at::Tensor noisy_rejected_1;  // (B,) log π~_ref(y−; ε1), detached
  at::Tensor noisy_rejected_2;  // (B,) log π~_ref(y−; ε2), detached
  at::Tensor sum_s;             // () fp64 Σ s over response rows × V (for mean s), not read
  std::int64_t num_s = 0;
};

/// Rows of the flattened reference hidden state that enter the penalty: the negatives' response
/// rows ("response") or every row incl. prompt and padding ("all", the authors' code).
std::int64_t penalty_rows(const config::NpoConfig& cfg, const at::Tensor& rejected_loss_mask);

/// NPO's single-step objective:
///   m1 = [πc − πr] − [rc − r~(ε1, s.detach())],  m2 = [πc − πr].detach() − [rc − r~(ε2, s)]
///   total = ℓ(β m1) − ℓ(β m2) + α P(s)
/// θ gets gradients only from the first term, φ only from the second and the penalty.
/// head may be null only for the fixed-noise ablation (s ≡ npo.fixed_sigma; total = model loss).
NpoTerms npo_loss(const NpoInputs& in,
                  const model::NoiseHead* head,
                  const config::NpoConfig& npo,
                  double beta);
/// The same with the head given as its parameter tensors (NoiseHead::named_parameters order),
/// e.g. gathered from shards; empty only for the fixed-noise ablation.
NpoTerms npo_loss(const NpoInputs& in,
                  const std::vector<at::Tensor>& head_params,
                  const config::NpoConfig& npo,
                  double beta);

}  // namespace dnpo::train
