// Single-process batched generation on the KV cache: greedy or temperature / top-k / top-p.
// Sampling draws are counter-based per (seed, iteration, prompt id, token index), so a prompt's
// answer does not depend on which batch or rank generated it (up to float rounding).
#pragma once

#include <cstdint>
#include <vector>

#include "dnpo/config/config.h"
#include "dnpo/model/llama.h"

namespace dnpo::model {

struct GenerationRequest {
  std::vector<std::int64_t> prompt;  ///< templated prompt tokens
  std::uint64_t sample_id = 0;       ///< global prompt index: keys the sampling draws
};

struct Generation {
  std::vector<std::int64_t> tokens;  ///< response tokens, EOS excluded
  bool finished = false;             ///< ended with EOS (else hit max_new_tokens)
};

struct SamplingKeys {
  std::uint64_t seed = 0;
  std::uint64_t iteration = 0;
};

/// Generates for every request, in batches of cfg.batch_size. temperature 0 = greedy.
std::vector<Generation> generate(const LlamaModel& model,
                                 const std::vector<GenerationRequest>& requests,
                                 const config::SampleConfig& cfg,
                                 std::int64_t eos_id,
                                 std::int64_t pad_id,
                                 const SamplingKeys& keys);

/// Picks one token from logits (V) fp32 with draw u in [0,1): exposed for tests.
std::int64_t pick_token(const at::Tensor& logits, const config::SampleConfig& cfg, double u);

}  // namespace dnpo::model
