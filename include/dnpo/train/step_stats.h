// A training step's statistics, summed where they are computed and read once at the step's end
// (a host read per micro-batch would stall a GPU's queue each time), then summed over ranks.
#pragma once

#include <array>
#include <cstddef>

#include <ATen/core/Tensor.h>

#include "dnpo/dist/comm.h"

namespace dnpo::train {

/// One statistic's sum over a step: host values add at once, tensor values stay where they are
/// until StepStats::reduce reads them all in one transfer.
class StatSum {
 public:
  void add(double value) {
    host_ += value;
  }
  /// Adds Σ value · weight (value detached and summed in its dtype; the step's sum is fp64).
  void add(const at::Tensor& value, double weight);
  /// The sum over the step and the ranks (after StepStats::reduce).
  double value() const {
    return host_;
  }

 private:
  friend struct StepStats;
  double host_ = 0;
  at::Tensor device_;
};

/// What the objectives report per step; an objective fills only the fields it has.
struct StepStats {
  StatSum loss;           ///< the objective's total (the value backpropagated)
  StatSum model_loss;     ///< the policy's term: the loss a stage records per step
  StatSum noise_loss;     ///< NPO: Σ ℓ(β m2) / pairs
  StatSum penalty;        ///< NPO: Σ P(s) / penalty elements
  StatSum margin;         ///< Σ of the pairs' margins m1
  StatSum correct;        ///< pairs with m1 > 0
  StatSum logp_chosen;    ///< Σ log π_θ(y+)
  StatSum logp_rejected;  ///< Σ log π_θ(y−)
  StatSum sum_s;          ///< NPO: Σ s over the noise's elements
  StatSum num_s;          ///< NPO: how many elements s has
  StatSum tokens;         ///< real tokens processed (attention mask), padding repeats excluded
  StatSum slots;          ///< token slots the forwards ran (rows × width): real tokens + padding

  /// Counts a micro-batch's real tokens and its token slots, times `weight`.
  void add_tokens(const at::Tensor& attention_mask, double weight);

  /// collective: reads every sum (one host transfer) and sums it over the ranks (one
  /// all-reduce).
  void reduce(dist::Comm& comm);

 private:
  std::array<StatSum*, 12> all();
};

}  // namespace dnpo::train
