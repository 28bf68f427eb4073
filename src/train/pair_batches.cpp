// Pairs for SPIN and NPO: tokenized once, batched per step, and their shared statistics.
#include "dnpo/train/pair_batches.h"

#include <fmt/format.h>

#include "dnpo/common/error.h"

namespace dnpo::train {

PairData::PairData(const std::vector<data::PairRecord>& records,
                   const data::ChatTemplate& chat,
                   const config::DataConfig& cfg) {
  for (std::size_t i = 0; i < records.size(); ++i) {
    const auto& p = records[i];
    if (p.chosen == p.rejected) {
      ++skipped_identical;
      continue;
    }
    const auto prompt = chat.encode_prompt(p.prompt);
    TokenPair tp{{prompt, chat.encode_response(p.chosen)},
                 {prompt, chat.encode_response(p.rejected)},
                 static_cast<std::int64_t>(i)};
    const bool cut_c = model::truncate_sequence(tp.chosen, cfg.max_length, cfg.max_prompt_length);
    const bool cut_r = model::truncate_sequence(tp.rejected, cfg.max_length, cfg.max_prompt_length);
    truncated += (cut_c || cut_r) ? 1 : 0;
    pairs.push_back(std::move(tp));
  }
  DNPO_CHECK_WITH(DataError,
                  !pairs.empty(),
                  "train: no usable pairs ({} given, {} with identical chosen and rejected)",
                  records.size(),
                  skipped_identical);
}

std::uint64_t PairData::fingerprint() const {
  std::uint64_t hash = 14695981039346656037ULL;  // FNV-1a over every value, in order
  const auto mix = [&hash](std::int64_t value) {
    hash = (hash ^ static_cast<std::uint64_t>(value)) * 1099511628211ULL;
  };
  for (const auto& p : pairs) {
    mix(p.index);
    for (const auto* seq : {&p.chosen, &p.rejected}) {
      mix(static_cast<std::int64_t>(seq->prompt.size()));
      for (const auto t : seq->prompt) {
        mix(t);
      }
      mix(static_cast<std::int64_t>(seq->response.size()));
      for (const auto t : seq->response) {
        mix(t);
      }
    }
  }
  return hash;
}

std::string PairData::describe() const {
  return fmt::format(
      "{} pairs ({} identical skipped, {} truncated)", pairs.size(), skipped_identical, truncated);
}

std::vector<PairBatch> make_pair_batches(const PairData& data,
                                         const std::vector<std::vector<std::int64_t>>& micro,
                                         std::int64_t pad_id) {
  std::vector<PairBatch> out;
  out.reserve(micro.size());
  for (const auto& ids : micro) {
    std::vector<model::TokenSequence> seqs;
    PairBatch m;
    for (const auto i : ids) {
      seqs.push_back(data.pairs[i].chosen);
      m.pair_index.push_back(data.pairs[i].index);
      m.sample.push_back(i);
    }
    for (const auto i : ids) {
      seqs.push_back(data.pairs[i].rejected);
    }
    m.batch = model::pad_batch(seqs, pad_id);
    out.push_back(std::move(m));
  }
  return out;
}

DevicePairBatch to_device(const PairBatch& micro, at::Device device) {
  return {model::to_device(micro.batch, device),
          model::is_right_padded(micro.batch.attention_mask),
          to_device(response_rows(micro.batch.input_ids, micro.batch.loss_mask), device)};
}

PairLogprobs pair_logprobs(ShardedLlama& model, const DevicePairBatch& micro) {
  const auto rows = micro.batch.input_ids.size(0) / 2;
  const auto logps = [&] {
    const auto out =
        model.forward(micro.batch.input_ids, micro.batch.attention_mask, micro.right_padded);
    return sequence_logprobs(out.hidden, out.lm_head, micro.rows);
  }();
  return {logps.narrow(0, 0, rows), logps.narrow(0, rows, rows)};
}

void add_pair_stats(StepStats& stats,
                    const at::Tensor& margins,
                    const at::Tensor& policy_chosen,
                    const at::Tensor& policy_rejected,
                    const PairBatch& micro,
                    double weight) {
  stats.margin.add(margins, weight);
  stats.correct.add(margins > 0, weight);
  stats.logp_chosen.add(policy_chosen, weight);
  stats.logp_rejected.add(policy_rejected, weight);
  stats.add_tokens(micro.batch.attention_mask, weight);
}

MetricValues pair_metrics(const StepStats& stats, double global_pairs) {
  return {{"model_loss", stats.model_loss.value()},
          {"margin", stats.margin.value() / global_pairs},
          {"reward_accuracy", stats.correct.value() / global_pairs},
          {"logp_chosen", stats.logp_chosen.value() / global_pairs},
          {"logp_rejected", stats.logp_rejected.value() / global_pairs}};
}

PairObjective::PairObjective(PairData data,
                             std::int64_t pad_id,
                             dist::Comm& comm,
                             at::Device device,
                             std::int64_t reference_columns)
    : data_(std::move(data)), pad_id_(pad_id), comm_(comm), device_(device) {
  if (reference_columns > 0) {
    reference_logps_.emplace(
        static_cast<std::int64_t>(data_.pairs.size()), reference_columns, data_.fingerprint());
  }
}

void PairObjective::plan_step(std::int64_t /*step*/,
                              const std::vector<std::vector<std::int64_t>>& micro_samples) {
  micro_ = make_pair_batches(data_, micro_samples, pad_id_);
  global_pairs_ = 0;
  step_samples_.clear();
  micro_offset_.clear();
  for (const auto& m : micro_) {
    global_pairs_ += static_cast<double>(m.rows());
    micro_offset_.push_back(static_cast<std::int64_t>(step_samples_.size()));
    step_samples_.insert(step_samples_.end(), m.sample.begin(), m.sample.end());
  }
  step_reference_known_ = reference_logps_ && reference_logps_->has_all(step_samples_);
  if (reference_logps_ && !step_reference_known_) {
    reference_logps_->begin_step(static_cast<std::int64_t>(step_samples_.size()), device_);
  }
}

void PairObjective::finish_step() {
  if (reference_logps_ && !step_reference_known_) {
    reference_logps_->end_step(step_samples_, comm_);
  }
}

at::Tensor PairObjective::known_reference(std::size_t index) const {
  DNPO_INTERNAL_ASSERT(step_reference_known_);
  return reference_logps_->lookup(micro_[index].sample, device_);
}

void PairObjective::keep_reference(std::size_t index, double weight, const at::Tensor& values) {
  if (reference_logps_ && !step_reference_known_ && weight > 0) {
    reference_logps_->record(micro_offset_[index], values);
  }
}

}  // namespace dnpo::train
