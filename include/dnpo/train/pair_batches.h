// What SPIN and NPO share: chosen/rejected pairs as token sequences, their micro-batches (chosen
// and rejected in one forward: padded to the longest, or packed side by side several pairs to a
// row), and the pair statistics both report.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dnpo/config/config.h"
#include "dnpo/data/chat_template.h"
#include "dnpo/data/jsonl.h"
#include "dnpo/model/batch.h"
#include "dnpo/train/dnpo_loss.h"
#include "dnpo/train/objective.h"
#include "dnpo/train/reference_logps.h"

namespace dnpo::train {

/// The pairs as token sequences, cut to data.max_length (counted). Pairs whose texts are
/// identical carry no signal: skipped and counted. Throws DataError when none is left.
struct PairData {
  PairData(const std::vector<data::PairRecord>& records,
           const data::ChatTemplate& chat,
           const config::DataConfig& cfg);
  struct TokenPair {
    model::TokenSequence chosen, rejected;
    std::int64_t index;  ///< the pair's index among the records: keys its noise draws
  };
  std::vector<TokenPair> pairs;
  std::int64_t truncated = 0;
  std::int64_t skipped_identical = 0;

  /// "20 pairs (1 identical skipped, 0 truncated)"
  std::string describe() const;
  /// A hash of every pair's index and tokens (FNV-1a): which pairs a stage trains on.
  std::uint64_t fingerprint() const;
};

/// How a micro-batch lays out its pairs (train.pack_pairs, train.pack_length).
struct PairPacking {
  bool packed = false;
  std::int64_t row_tokens = 0;  ///< packed: a row holds pairs up to this many tokens (> 0)
};
PairPacking pair_packing(const config::RunConfig& cfg);

/// Where a micro-batch's negatives are in the rows of a forward: what NPO's noisy side reads.
struct NegativeRows {
  std::int64_t first_row = 0;  ///< the forward rows [first_row, first_row + row_count) hold them
  std::int64_t row_count = 0;
  ResponseRows rows;  ///< their response tokens; hidden_row within those rows, sample = pair k
  /// Flattened rows (within those rows) that npo.penalty_positions = "all" reads: every token of
  /// the negatives when packed; undefined when padded: every row, padding included.
  at::Tensor all_positions;
  /// Positions the penalty covers under `cfg` (its normaliser, divided by the vocabulary).
  std::int64_t penalty_positions(const config::NpoConfig& cfg, std::int64_t width) const;
};

/// One micro-batch of m pairs. Padded: rows [0, m) chosen, [m, 2m) rejected, padded to the
/// longest. Packed: a pair's chosen and rejected side by side in one row, several pairs to a row
/// (numbered 1, 2, … in the attention mask, so each sees only itself), rows balanced in length.
struct PairBatch {
  model::TokenBatch batch;
  /// Every response token (host): the chosen ones first (sample k for pair k), then the rejected
  /// (sample m + k); position = place within its own sequence, whatever the layout.
  ResponseRows rows;
  std::int64_t chosen_entries = 0;       ///< rows' first entries that are the chosen's
  NegativeRows negatives;                ///< the negatives within `batch`
  std::vector<std::int64_t> pair_index;  ///< PairData::TokenPair::index of each pair
  std::vector<std::int64_t> sample;      ///< each pair's place in PairData::pairs
  std::int64_t pairs() const {
    return static_cast<std::int64_t>(pair_index.size());
  }
  /// The chosen's entries of `rows` (sample k for pair k).
  ResponseRows chosen_rows() const;
};

/// A micro-batch's negatives alone (the reference's rows once the positives' log-probs are
/// known): padded, rows [m, 2m) of the pair batch; packed, the negatives packed on their own.
struct NegativeBatch {
  model::TokenBatch batch;
  NegativeRows negatives;
};
NegativeBatch negatives_alone(const PairData& data,
                              const PairBatch& micro,
                              const PairPacking& packing,
                              std::int64_t pad_id);

/// A pair micro-batch on the compute device, with what the forwards and losses need to know of
/// its masks read from the host copy (on a GPU, reading the device copy would make the host wait).
struct DevicePairBatch {
  model::TokenBatch batch;
  bool right_padded = false;
  ResponseRows rows;  ///< every response token (PairBatch::rows)
};
DevicePairBatch to_device(const PairBatch& micro, at::Device device);

/// log π(y+) and log π(y−), (m,) each, from one forward of `model` over the pair batch.
struct PairLogprobs {
  at::Tensor chosen, rejected;
};
PairLogprobs pair_logprobs(ShardedLlama& model, const DevicePairBatch& micro);

/// The step's pairs regrouped into as many micro-batches, balanced in tokens (packed layout):
/// longest pair first, each to the micro-batch with the fewest tokens so far (ties: the first).
/// Deterministic, and the same whatever the world size; the step's pairs do not change.
std::vector<std::vector<std::int64_t>> balance_micro_batches(
    const PairData& data, const std::vector<std::vector<std::int64_t>>& micro);

std::vector<PairBatch> make_pair_batches(const PairData& data,
                                         const std::vector<std::vector<std::int64_t>>& micro,
                                         std::int64_t pad_id,
                                         const PairPacking& packing = {});

/// The statistics SPIN and NPO both report of a micro-batch, times `weight`: margins (B,) m1,
/// detached; the policy's log-probs of chosen and rejected (B,); tokens of the batch.
void add_pair_stats(StepStats& stats,
                    const at::Tensor& margins,
                    const at::Tensor& policy_chosen,
                    const at::Tensor& policy_rejected,
                    const PairBatch& micro,
                    double weight);
/// model_loss, margin, reward_accuracy, logp_chosen, logp_rejected: means over the step's pairs.
MetricValues pair_metrics(const StepStats& stats, double global_pairs);

/// What SPIN and NPO share as objectives: the pairs, a step's pair micro-batches and its count
/// of pairs, the reference's log-probs kept for later epochs, and the pair metrics.
class PairObjective : public Objective {
 public:
  /// reference_columns: the reference log-probs kept per pair (train.reuse_reference; 0: none).
  PairObjective(PairData data,
                std::int64_t pad_id,
                dist::Comm& comm,
                at::Device device,
                std::int64_t reference_columns,
                PairPacking packing);
  /// "20 pairs (…), packed in rows of up to 128 tokens" (or ", padded")
  std::string describe_data() const override;
  std::int64_t num_samples() const override {
    return static_cast<std::int64_t>(data_.pairs.size());
  }
  void plan_step(std::int64_t step,
                 const std::vector<std::vector<std::int64_t>>& micro_samples) override;
  /// Shares the reference log-probs the step computed (collective) so later epochs reuse them.
  void finish_step() override;
  MetricValues metrics(const StepStats& stats) const override {
    return pair_metrics(stats, global_pairs_);
  }
  CarriedState* carried_state() override {
    return reference_logps_ ? &*reference_logps_ : nullptr;
  }

 protected:
  /// Whether the planned step's reference log-probs are all known (the same on every rank).
  bool reference_known() const {
    return step_reference_known_;
  }
  /// The known reference log-probs of micro-batch `index`, (columns, m) on the device.
  at::Tensor known_reference(std::size_t index) const;
  /// Keeps micro-batch `index`'s reference log-probs (columns, m), unless it is a padding
  /// repeat (weight 0: another rank runs the same pairs).
  void keep_reference(std::size_t index, double weight, const at::Tensor& values);

  PairData data_;
  PairPacking packing_;
  std::int64_t pad_id_;
  dist::Comm& comm_;
  at::Device device_;
  std::vector<PairBatch> micro_;  ///< the planned step's micro-batches (host)
  double global_pairs_ = 0;       ///< pairs in the planned step

 private:
  std::optional<ReferenceLogps> reference_logps_;
  std::vector<std::int64_t> step_samples_;  // the planned step's pairs, in micro-batch order
  std::vector<std::int64_t> micro_offset_;  // each micro-batch's first place in step_samples_
  bool step_reference_known_ = false;
};

}  // namespace dnpo::train
