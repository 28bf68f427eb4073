// Pairs for SPIN and NPO: tokenized once, batched per step, and their shared statistics.
#include "dnpo/train/pair_batches.h"

#include <algorithm>
#include <numeric>

#include <ATen/ATen.h>
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

PairPacking pair_packing(const config::RunConfig& cfg) {
  PairPacking packing;
  packing.packed = cfg.train.pack_pairs;
  packing.row_tokens =
      cfg.train.pack_length > 0 ? cfg.train.pack_length : 2 * std::int64_t{cfg.data.max_length};
  return packing;
}

std::int64_t NegativeRows::penalty_positions(const config::NpoConfig& cfg,
                                             std::int64_t width) const {
  if (cfg.penalty_positions != "all") {
    return rows.hidden_row.numel();
  }
  return all_positions.defined() ? all_positions.numel() : row_count * width;
}

namespace {

std::int64_t length_of(const model::TokenSequence& seq) {
  return static_cast<std::int64_t>(seq.prompt.size() + seq.response.size());
}

std::int64_t length_of(const PairData::TokenPair& pair) {
  return length_of(pair.chosen) + length_of(pair.rejected);
}

// Longest-processing-time grouping: items by length, longest first (ties: lower index), each to
// the group with the fewest tokens so far (ties: the first group). groups[g] lists item indices.
std::vector<std::vector<std::size_t>> balance(const std::vector<std::int64_t>& lengths,
                                              std::size_t count) {
  std::vector<std::size_t> order(lengths.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return lengths[a] > lengths[b];
  });
  std::vector<std::vector<std::size_t>> groups(count);
  std::vector<std::int64_t> load(count, 0);
  for (const auto item : order) {
    const auto g =
        static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    groups[g].push_back(item);
    load[g] += lengths[item];
  }
  return groups;
}

// The fewest rows (from total / row_tokens up) whose balanced loads all fit row_tokens; one item
// per row when nothing fits better (an item longer than row_tokens gets a row of its own).
std::vector<std::vector<std::size_t>> pack_rows(const std::vector<std::int64_t>& lengths,
                                                std::int64_t row_tokens) {
  const auto total = std::accumulate(lengths.begin(), lengths.end(), std::int64_t{0});
  auto count =
      static_cast<std::size_t>(std::max<std::int64_t>(1, (total + row_tokens - 1) / row_tokens));
  for (;; ++count) {
    auto rows = balance(lengths, std::min(count, lengths.size()));
    const bool fits = std::all_of(rows.begin(), rows.end(), [&](const auto& row) {
      std::int64_t load = 0;
      for (const auto i : row) {
        load += lengths[i];
      }
      return load <= row_tokens;
    });
    if (fits || count >= lengths.size()) {
      return rows;
    }
  }
}

// Sequences laid out in rows, right-padded to the longest row: row r holds sequences rows[r] in
// that order, numbered 1, 2, … in its attention mask. A sequence's first token has no logits
// before it, so it is never scored.
struct LaidOut {
  model::TokenBatch batch;
  std::vector<std::int64_t> flat_start;  // each sequence's first token as a flattened row
};

LaidOut lay_out(const std::vector<const model::TokenSequence*>& seqs,
                const std::vector<std::vector<std::size_t>>& rows,
                std::int64_t pad_id) {
  std::int64_t width = 1;
  for (const auto& row : rows) {
    std::int64_t load = 0;
    for (const auto i : row) {
      load += length_of(*seqs[i]);
    }
    width = std::max(width, load);
  }
  const auto count = static_cast<std::int64_t>(rows.size());
  LaidOut out;
  out.batch.input_ids = at::full({count, width}, pad_id, at::kLong);
  out.batch.attention_mask = at::zeros({count, width}, at::kLong);
  out.batch.loss_mask = at::zeros({count, width}, at::kLong);
  out.flat_start.assign(seqs.size(), 0);
  auto* ids = out.batch.input_ids.data_ptr<std::int64_t>();
  auto* attention = out.batch.attention_mask.data_ptr<std::int64_t>();
  auto* loss = out.batch.loss_mask.data_ptr<std::int64_t>();
  for (std::int64_t r = 0; r < count; ++r) {
    std::int64_t at = r * width;
    std::int64_t number = 0;
    for (const auto i : rows[static_cast<std::size_t>(r)]) {
      const auto& seq = *seqs[i];
      out.flat_start[i] = at;
      ++number;
      for (const auto token : seq.prompt) {
        ids[at] = token;
        attention[at++] = number;
      }
      for (const auto token : seq.response) {
        ids[at] = token;
        attention[at] = number;
        loss[at] = at > out.flat_start[i] ? 1 : 0;
        out.batch.num_response_tokens += loss[at];
        ++at;
      }
    }
  }
  return out;
}

// The response tokens of sequences [first, first + count) of a layout, sequence by sequence:
// sample = i − first.
ResponseRows responses_of(const std::vector<const model::TokenSequence*>& seqs,
                          const LaidOut& laid,
                          std::size_t first,
                          std::size_t count) {
  std::vector<std::int64_t> hidden_row, target, sample, position;
  for (std::size_t i = first; i < first + count; ++i) {
    const auto& seq = *seqs[i];
    const auto prompt = static_cast<std::int64_t>(seq.prompt.size());
    for (std::int64_t k = 0; k < static_cast<std::int64_t>(seq.response.size()); ++k) {
      const auto t = prompt + k;
      if (t == 0) {
        continue;
      }
      hidden_row.push_back(laid.flat_start[i] + t - 1);
      target.push_back(seq.response[static_cast<std::size_t>(k)]);
      sample.push_back(static_cast<std::int64_t>(i - first));
      position.push_back(t);
    }
  }
  const auto tensor = [](const std::vector<std::int64_t>& v) {
    return at::tensor(at::ArrayRef<std::int64_t>(v), at::kLong);
  };
  return {tensor(hidden_row),
          tensor(target),
          tensor(sample),
          tensor(position),
          static_cast<std::int64_t>(count)};
}

// Every token's flattened row of sequences [first, first + count).
at::Tensor positions_of(const std::vector<const model::TokenSequence*>& seqs,
                        const LaidOut& laid,
                        std::size_t first,
                        std::size_t count) {
  std::vector<std::int64_t> out;
  for (std::size_t i = first; i < first + count; ++i) {
    for (std::int64_t t = 0; t < length_of(*seqs[i]); ++t) {
      out.push_back(laid.flat_start[i] + t);
    }
  }
  return at::tensor(at::ArrayRef<std::int64_t>(out), at::kLong);
}

// The chosen (or rejected) sequences of a micro-batch's pairs, in pair order.
std::vector<const model::TokenSequence*> sides_of(const PairData& data,
                                                  const std::vector<std::int64_t>& ids,
                                                  bool chosen) {
  std::vector<const model::TokenSequence*> out;
  for (const auto i : ids) {
    out.push_back(chosen ? &data.pairs[i].chosen : &data.pairs[i].rejected);
  }
  return out;
}

PairBatch padded_pair_batch(const PairData& data,
                            const std::vector<std::int64_t>& ids,
                            std::int64_t pad_id) {
  std::vector<model::TokenSequence> seqs;
  for (const auto* seq : sides_of(data, ids, true)) {
    seqs.push_back(*seq);
  }
  for (const auto* seq : sides_of(data, ids, false)) {
    seqs.push_back(*seq);
  }
  PairBatch m;
  m.batch = model::pad_batch(seqs, pad_id);
  const auto pairs = static_cast<std::int64_t>(ids.size());
  m.rows = response_rows(m.batch.input_ids, m.batch.loss_mask);  // row-major: chosen rows first
  m.chosen_entries = m.batch.loss_mask.narrow(0, 0, pairs).sum().item<std::int64_t>();
  m.negatives.first_row = pairs;
  m.negatives.row_count = pairs;
  m.negatives.rows = response_rows(m.batch.input_ids.narrow(0, pairs, pairs),
                                   m.batch.loss_mask.narrow(0, pairs, pairs));
  return m;
}

PairBatch packed_pair_batch(const PairData& data,
                            const std::vector<std::int64_t>& ids,
                            std::int64_t pad_id,
                            std::int64_t row_tokens) {
  const auto pairs = ids.size();
  auto seqs = sides_of(data, ids, true);  // [chosen of each pair; rejected of each pair]
  const auto rejected = sides_of(data, ids, false);
  seqs.insert(seqs.end(), rejected.begin(), rejected.end());
  std::vector<std::int64_t> lengths;
  for (const auto i : ids) {
    lengths.push_back(length_of(data.pairs[i]));
  }
  std::vector<std::vector<std::size_t>> rows;
  for (const auto& row : pack_rows(lengths, row_tokens)) {
    rows.emplace_back();
    for (const auto k : row) {  // a pair's chosen, then its rejected, side by side
      rows.back().push_back(k);
      rows.back().push_back(pairs + k);
    }
  }
  const auto laid = lay_out(seqs, rows, pad_id);
  PairBatch m;
  m.batch = laid.batch;
  const auto chosen = responses_of(seqs, laid, 0, pairs);
  const auto negative = responses_of(seqs, laid, pairs, pairs);
  m.rows = {at::cat({chosen.hidden_row, negative.hidden_row}),
            at::cat({chosen.target, negative.target}),
            at::cat({chosen.sample, negative.sample + static_cast<std::int64_t>(pairs)}),
            at::cat({chosen.position, negative.position}),
            static_cast<std::int64_t>(2 * pairs)};
  m.chosen_entries = chosen.hidden_row.numel();
  m.negatives.row_count = static_cast<std::int64_t>(rows.size());
  m.negatives.rows = negative;
  m.negatives.all_positions = positions_of(seqs, laid, pairs, pairs);
  return m;
}

}  // namespace

std::vector<std::vector<std::int64_t>> balance_micro_batches(
    const PairData& data, const std::vector<std::vector<std::int64_t>>& micro) {
  std::vector<std::int64_t> step;
  std::vector<std::int64_t> lengths;
  for (const auto& ids : micro) {
    for (const auto i : ids) {
      step.push_back(i);
      lengths.push_back(length_of(data.pairs[i]));
    }
  }
  std::vector<std::vector<std::int64_t>> out;
  for (const auto& group : balance(lengths, micro.size())) {
    out.emplace_back();
    for (const auto k : group) {
      out.back().push_back(step[k]);
    }
  }
  return out;
}

std::vector<PairBatch> make_pair_batches(const PairData& data,
                                         const std::vector<std::vector<std::int64_t>>& micro,
                                         std::int64_t pad_id,
                                         const PairPacking& packing) {
  std::vector<PairBatch> out;
  out.reserve(micro.size());
  for (const auto& ids : micro) {
    auto m = packing.packed ? packed_pair_batch(data, ids, pad_id, packing.row_tokens)
                            : padded_pair_batch(data, ids, pad_id);
    for (const auto i : ids) {
      m.pair_index.push_back(data.pairs[i].index);
      m.sample.push_back(i);
    }
    out.push_back(std::move(m));
  }
  return out;
}

NegativeBatch negatives_alone(const PairData& data,
                              const PairBatch& micro,
                              const PairPacking& packing,
                              std::int64_t pad_id) {
  NegativeBatch out;
  const auto& n = micro.negatives;
  if (!packing.packed) {
    const auto narrow = [&n](const at::Tensor& t) { return t.narrow(0, n.first_row, n.row_count); };
    out.batch = {narrow(micro.batch.input_ids),
                 narrow(micro.batch.attention_mask),
                 narrow(micro.batch.loss_mask),
                 n.rows.hidden_row.numel()};
    out.negatives = n;
    out.negatives.first_row = 0;
    return out;
  }
  const auto seqs = sides_of(data, micro.sample, false);
  std::vector<std::int64_t> lengths;
  for (const auto* seq : seqs) {
    lengths.push_back(length_of(*seq));
  }
  const auto laid = lay_out(seqs, pack_rows(lengths, packing.row_tokens), pad_id);
  out.batch = laid.batch;
  out.negatives.row_count = laid.batch.input_ids.size(0);
  out.negatives.rows = responses_of(seqs, laid, 0, seqs.size());
  out.negatives.all_positions = positions_of(seqs, laid, 0, seqs.size());
  return out;
}

ResponseRows PairBatch::chosen_rows() const {
  const auto first = [this](const at::Tensor& t) { return t.narrow(0, 0, chosen_entries); };
  return {first(rows.hidden_row),
          first(rows.target),
          first(rows.sample),
          first(rows.position),
          pairs()};
}

DevicePairBatch to_device(const PairBatch& micro, at::Device device) {
  return {model::to_device(micro.batch, device),
          model::is_right_padded(micro.batch.attention_mask),
          to_device(micro.rows, device)};
}

PairLogprobs pair_logprobs(ShardedLlama& model, const DevicePairBatch& micro) {
  const auto pairs =
      micro.rows.sequences > 0 ? micro.rows.sequences / 2 : micro.batch.input_ids.size(0) / 2;
  const auto logps = [&] {
    const auto out =
        model.forward(micro.batch.input_ids, micro.batch.attention_mask, micro.right_padded);
    return sequence_logprobs(out.hidden, out.lm_head, micro.rows);
  }();
  return {logps.narrow(0, 0, pairs), logps.narrow(0, pairs, pairs)};
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
                             std::int64_t reference_columns,
                             PairPacking packing)
    : data_(std::move(data)), packing_(packing), pad_id_(pad_id), comm_(comm), device_(device) {
  if (reference_columns > 0) {
    reference_logps_.emplace(
        static_cast<std::int64_t>(data_.pairs.size()), reference_columns, data_.fingerprint());
  }
}

std::string PairObjective::describe_data() const {
  return packing_.packed
             ? fmt::format(
                   "{}, packed in rows of up to {} tokens", data_.describe(), packing_.row_tokens)
             : data_.describe() + ", padded";
}

void PairObjective::plan_step(std::int64_t /*step*/,
                              const std::vector<std::vector<std::int64_t>>& micro_samples) {
  micro_ = make_pair_batches(
      data_,
      packing_.packed ? balance_micro_batches(data_, micro_samples) : micro_samples,
      pad_id_,
      packing_);
  global_pairs_ = 0;
  step_samples_.clear();
  micro_offset_.clear();
  for (const auto& m : micro_) {
    global_pairs_ += static_cast<double>(m.pairs());
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
