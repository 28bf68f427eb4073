// The noisy side of NPO: log π~_ref(y−) with ε1 (s detached) and ε2 (s trainable), and the
// penalty Σ P(s), computed chunk by chunk at the negatives' response rows only. A custom autograd
// function recomputes each chunk in backward instead of keeping (N, V) tensors alive, so NPO's
// peak memory stays near SPIN's. Private to train/; dnpo_loss.cpp is its one user.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dnpo/config/config.h"
#include "dnpo/train/dnpo_loss.h"

namespace dnpo::train::detail {

struct NoisyNegativeInputs {
  at::Tensor hidden_rows;   // (N, C) reference hidden states scoring the negatives' tokens
  at::Tensor targets;       // (N,) int64 token ids
  at::Tensor samples;       // (N,) int64 pair row within the micro-batch
  at::Tensor ref_lm_head;   // (V, C)
  at::Tensor penalty_rows;  // (M, C) rows entering the penalty (undefined: the N rows above)
  std::int64_t batch = 0;
  NoiseDraws draws;
};

struct NoisyNegative {
  at::Tensor noisy1;       // (B,) with ε1 and s detached — no gradient
  at::Tensor noisy2;       // (B,) with ε2 — gradient reaches the head parameters
  at::Tensor penalty_sum;  // () Σ s or Σ s² — gradient reaches the head parameters
  at::Tensor sum_s;        // () fp64 Σ s over the N response rows × V, on their device
  std::int64_t num_s = 0;
};

/// head_params: the noise head's parameters in NoiseHead::named_parameters() order; empty for
/// the fixed-noise ablation (s ≡ npo.fixed_sigma, nothing trainable).
NoisyNegative noisy_negative(const NoisyNegativeInputs& in,
                             const std::vector<at::Tensor>& head_params,
                             const config::NpoConfig& npo);

}  // namespace dnpo::train::detail
