// SFT: cross-entropy over answer tokens, summed and divided by the global step's answer tokens.
#include "dnpo/train/sft_objective.h"

#include <fmt/format.h>

#include "dnpo/train/dnpo_loss.h"

namespace dnpo::train {

SftData::SftData(const std::vector<data::PromptRecord>& records,
                 const data::ChatTemplate& chat,
                 const config::DataConfig& cfg) {
  sequences.reserve(records.size());
  for (const auto& r : records) {
    model::TokenSequence seq{chat.encode_prompt(r.prompt), chat.encode_response(r.answer)};
    truncated += model::truncate_sequence(seq, cfg.max_length, cfg.max_prompt_length) ? 1 : 0;
    sequences.push_back(std::move(seq));
  }
}

SftObjective::SftObjective(SftData data,
                           ShardedLlama& policy,
                           std::int64_t pad_id,
                           at::Device device)
    : data_(std::move(data)), policy_(policy), pad_id_(pad_id), device_(device) {
  models_.trained = {{"policy", policy.units()}};
  models_.modules = {&policy};
}

std::string SftObjective::describe_data() const {
  return fmt::format("{} samples ({} truncated)", data_.sequences.size(), data_.truncated);
}

void SftObjective::plan_step(std::int64_t /*step*/,
                             const std::vector<std::vector<std::int64_t>>& micro_samples) {
  micro_.clear();
  global_tokens_ = 0;
  for (const auto& ids : micro_samples) {
    std::vector<model::TokenSequence> seqs;
    seqs.reserve(ids.size());
    for (const auto i : ids) {
      seqs.push_back(data_.sequences[i]);
    }
    micro_.push_back(model::pad_batch(seqs, pad_id_));
    global_tokens_ += static_cast<double>(micro_.back().num_response_tokens);
  }
}

at::Tensor SftObjective::micro_batch_loss(std::size_t index,
                                          double weight,
                                          StepStats& stats,
                                          Phase& phase) {
  const auto& host_batch = micro_[index];
  const auto batch = model::to_device(host_batch, device_);
  // what the forward and the loss need to know of the masks, read from the host copy: on a GPU,
  // reading them from the device copy would make the host wait
  const auto rows = to_device(response_rows(host_batch.input_ids, host_batch.loss_mask), device_);
  phase.begin("dnpo::policy_forward");
  const auto out = policy_.forward(
      batch.input_ids, batch.attention_mask, model::is_right_padded(host_batch.attention_mask));
  phase.begin("dnpo::loss");
  auto loss = sft_loss(out.hidden, out.lm_head, rows, global_tokens_);
  stats.model_loss.add(loss, weight);
  stats.add_tokens(host_batch.attention_mask, weight);
  return loss;
}

MetricValues SftObjective::metrics(const StepStats& /*stats*/) const {
  return {};
}

}  // namespace dnpo::train
