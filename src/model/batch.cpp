// Padding and masks for token batches (see batch.h).
#include "dnpo/model/batch.h"

#include <algorithm>

#include <ATen/ATen.h>

#include "dnpo/common/error.h"

namespace dnpo::model {

TokenBatch pad_batch(const std::vector<TokenSequence>& sequences,
                     std::int64_t pad_id,
                     PadSide side,
                     std::int64_t pad_to) {
  DNPO_CHECK(!sequences.empty(), "pad_batch: no sequences to pad");
  std::int64_t longest = pad_to;
  for (const auto& seq : sequences) {
    longest = std::max(longest, static_cast<std::int64_t>(seq.prompt.size() + seq.response.size()));
  }
  DNPO_CHECK(longest > 0, "pad_batch: every sequence is empty");
  const auto batch = static_cast<std::int64_t>(sequences.size());
  // input_ids, attention_mask, loss_mask: (B,T) int64
  auto ids = at::full({batch, longest}, pad_id, at::kLong);
  auto attention = at::zeros({batch, longest}, at::kLong);
  auto loss = at::zeros({batch, longest}, at::kLong);
  auto ids_a = ids.accessor<std::int64_t, 2>();
  auto attention_a = attention.accessor<std::int64_t, 2>();
  auto loss_a = loss.accessor<std::int64_t, 2>();
  TokenBatch out;
  for (std::int64_t b = 0; b < batch; ++b) {
    const auto& seq = sequences[b];
    const auto length = static_cast<std::int64_t>(seq.prompt.size() + seq.response.size());
    const std::int64_t start = side == PadSide::kLeft ? longest - length : 0;
    std::int64_t t = start;
    for (const auto token : seq.prompt) {
      ids_a[b][t] = token;
      attention_a[b][t++] = 1;
    }
    for (const auto token : seq.response) {
      ids_a[b][t] = token;
      attention_a[b][t] = 1;
      // The first token of a sequence has no logits before it: it cannot be scored.
      loss_a[b][t] = t > start ? 1 : 0;
      out.num_response_tokens += loss_a[b][t];
      ++t;
    }
  }
  out.input_ids = ids;
  out.attention_mask = attention;
  out.loss_mask = loss;
  return out;
}

bool truncate_sequence(TokenSequence& sequence,
                       std::int64_t max_length,
                       std::int64_t max_prompt_length) {
  bool cut = false;
  const auto prompt_cap = std::min(max_prompt_length, max_length);
  if (static_cast<std::int64_t>(sequence.prompt.size()) > prompt_cap) {
    sequence.prompt.erase(sequence.prompt.begin(), sequence.prompt.end() - prompt_cap);
    cut = true;
  }
  const auto room = max_length - static_cast<std::int64_t>(sequence.prompt.size());
  if (static_cast<std::int64_t>(sequence.response.size()) > room) {
    sequence.response.resize(room);
    cut = true;
  }
  return cut;
}

at::Tensor to_device(const at::Tensor& host, at::Device device) {
  return device.is_cuda() ? host.pin_memory().to(device, /*non_blocking=*/true) : host.to(device);
}

TokenBatch to_device(const TokenBatch& batch, at::Device device) {
  if (batch.input_ids.device() == device) {
    return batch;
  }
  return {to_device(batch.input_ids, device),
          to_device(batch.attention_mask, device),
          to_device(batch.loss_mask, device),
          batch.num_response_tokens};
}

}  // namespace dnpo::model
