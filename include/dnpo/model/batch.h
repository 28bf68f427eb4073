// Padding and masks: a list of (prompt, response) token sequences becomes one padded batch.
// Positions come from the attention mask (HF style), so left and right padding give equal results.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace dnpo::model {

struct TokenSequence {
  std::vector<std::int64_t> prompt;    ///< BOS + templated prompt
  std::vector<std::int64_t> response;  ///< answer + EOS (may be empty for generation)
};

enum class PadSide { kLeft, kRight };

/// input_ids, attention_mask, loss_mask: (B,T) int64. loss_mask[b,t] = 1 where the token at t is a
/// response token (its log-prob comes from the logits at t-1). Pads hold pad_id.
struct TokenBatch {
  at::Tensor input_ids;
  at::Tensor attention_mask;
  at::Tensor loss_mask;
  std::int64_t num_response_tokens = 0;
};

/// A host tensor on `device`: to a GPU from pinned memory, so the copy is queued and the host
/// goes on (from pageable memory it would wait for the GPU to drain).
at::Tensor to_device(const at::Tensor& host, at::Device device);
/// The same batch on `device` (the token counts stay as they are).
TokenBatch to_device(const TokenBatch& batch, at::Device device);

/// Pads to the longest sequence (or to pad_to if larger). Throws on an empty list.
TokenBatch pad_batch(const std::vector<TokenSequence>& sequences,
                     std::int64_t pad_id,
                     PadSide side = PadSide::kRight,
                     std::int64_t pad_to = 0);

/// Truncates a sequence to max_length tokens: the prompt keeps its last max_prompt_length tokens,
/// then the response is cut. Returns true when anything was cut.
bool truncate_sequence(TokenSequence& sequence,
                       std::int64_t max_length,
                       std::int64_t max_prompt_length);

}  // namespace dnpo::model
