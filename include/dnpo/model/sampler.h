// Single-process batched generation on the KV cache: greedy or temperature / top-k / top-p.
// Sampling draws are counter-based per (seed, iteration, prompt id, token index), so a prompt's
// answer does not depend on which batch or rank generated it (up to float rounding).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dnpo/config/config.h"
#include "dnpo/model/llama.h"

namespace dnpo::model {

struct GenerationRequest {
  std::vector<std::int64_t> prompt;  ///< templated prompt tokens
  std::uint64_t sample_id = 0;       ///< global prompt index: keys the sampling draws
  int max_new_tokens = 0;            ///< at most SampleConfig::max_new_tokens; 0 = that
};

struct Generation {
  std::vector<std::int64_t> tokens;  ///< response tokens, EOS excluded
  bool finished = false;             ///< ended with EOS (else hit max_new_tokens)
};

struct SamplingKeys {
  std::uint64_t seed = 0;
  std::uint64_t iteration = 0;
};

/// What generation needs of a model: a forward over the KV cache and the logits. LlamaModel is
/// one (whole parameters); train/ has one that gathers each sharded layer as it computes.
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual KVCache make_cache(std::int64_t batch, std::int64_t capacity) = 0;
  /// As LlamaModel::forward_hidden (advances cache->length).
  virtual at::Tensor forward_hidden(const at::Tensor& input_ids,
                                    const at::Tensor& attention_mask,
                                    KVCache* cache) = 0;
  /// Logits of the hidden states the last forward_hidden returned (or a part of them).
  virtual at::Tensor logits(const at::Tensor& hidden) = 0;
  virtual at::Device device() const = 0;
};

/// Generates for every request, cfg.batch_size rows at a time, continuously or in static batches
/// (cfg.batching). temperature 0 = greedy.
/// fixed_steps: static batches, each running 1 + (max_new_tokens − 1) forwards even when all its
/// rows have ended (ranks decoding in lockstep, where each forward is collective); the results are
/// the same.
std::vector<Generation> generate(Decoder& model,
                                 const std::vector<GenerationRequest>& requests,
                                 const config::SampleConfig& cfg,
                                 std::int64_t eos_id,
                                 std::int64_t pad_id,
                                 const SamplingKeys& keys,
                                 bool fixed_steps = false);

/// As above, on a whole model.
std::vector<Generation> generate(const LlamaModel& model,
                                 const std::vector<GenerationRequest>& requests,
                                 const config::SampleConfig& cfg,
                                 std::int64_t eos_id,
                                 std::int64_t pad_id,
                                 const SamplingKeys& keys);

/// sample.dtype as a tensor dtype ("fp32" | "bf16"), for LlamaModel::prepare_for_decoding.
at::ScalarType decoding_dtype(const std::string& sample_dtype);

/// Picks one token from logits (V) fp32 with draw u in [0,1): exposed for tests.
std::int64_t pick_token(const at::Tensor& logits, const config::SampleConfig& cfg, double u);

/// The next tokens of a decode step's rows, from their logits (rows, V): greedy takes every row's
/// argmax at once; sampling copies the logits to the host once and draws each row's token with
/// the key of its (prompt, answer position).
class TokenPicker {
 public:
  TokenPicker(const at::Tensor& logits, const config::SampleConfig& cfg, const SamplingKeys& keys);
  /// Row `row`'s token at answer position `step` of the prompt `sample_id`.
  std::int64_t pick(std::int64_t row, std::uint64_t sample_id, std::int64_t step) const;

 private:
  const config::SampleConfig& cfg_;
  SamplingKeys keys_;
  at::Tensor picked_;  // greedy: (rows) int64 argmax; sampling: (rows, V) fp32 on the host
};

/// A request's answer length limit: its own, or the config's. Throws on a request without prompt
/// tokens or with a limit above the config's.
int answer_limit(const GenerationRequest& request, const config::SampleConfig& cfg);

/// Records the token an answer picked at position `step` (EOS marks it finished and is not kept);
/// returns whether the answer has ended: EOS, or `limit` tokens picked.
bool append_token(
    Generation& answer, std::int64_t token, std::int64_t eos_id, std::int64_t step, int limit);

/// Continuous batching (cfg.batching = "continuous"; generate() dispatches to it): cfg.batch_size
/// rows decode together and a row whose answer ends takes the next waiting prompt at once.
std::vector<Generation> generate_continuous(Decoder& model,
                                            const std::vector<GenerationRequest>& requests,
                                            const config::SampleConfig& cfg,
                                            std::int64_t eos_id,
                                            std::int64_t pad_id,
                                            const SamplingKeys& keys);

}  // namespace dnpo::model
