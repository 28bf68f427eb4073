// Batched KV-cache generation with counter-based sampling; see sampler.h.
#include "dnpo/model/sampler.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "dnpo/common/counter_rng.h"
#include "dnpo/common/error.h"
#include "dnpo/model/batch.h"

namespace dnpo::model {

at::ScalarType decoding_dtype(const std::string& sample_dtype) {
  DNPO_CHECK_WITH(ConfigError,
                  sample_dtype == "fp32" || sample_dtype == "bf16",
                  "sample.dtype must be \"fp32\" or \"bf16\", got \"{}\"",
                  sample_dtype);
  return sample_dtype == "bf16" ? at::kBFloat16 : at::kFloat;
}

std::int64_t pick_token(const at::Tensor& logits, const config::SampleConfig& cfg, double u) {
  if (cfg.temperature <= 0.0) {
    return logits.argmax().item<std::int64_t>();
  }
  auto probs = at::softmax(logits.to(at::kDouble) / cfg.temperature, -1);
  auto [sorted, order] = probs.sort(/*dim=*/-1, /*descending=*/true);
  const double* p = sorted.data_ptr<double>();
  const std::int64_t vocab = sorted.numel();
  std::int64_t keep = cfg.top_k > 0 ? std::min<std::int64_t>(cfg.top_k, vocab) : vocab;
  if (cfg.top_p < 1.0) {
    double cumulative = 0.0;
    for (std::int64_t i = 0; i < keep; ++i) {
      cumulative += p[i];
      if (cumulative >= cfg.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double total = 0.0;
  for (std::int64_t i = 0; i < keep; ++i) {
    total += p[i];
  }
  const double target = u * total;
  double cumulative = 0.0;
  std::int64_t chosen = keep - 1;
  for (std::int64_t i = 0; i < keep; ++i) {
    cumulative += p[i];
    if (cumulative > target) {
      chosen = i;
      break;
    }
  }
  return order[chosen].item<std::int64_t>();
}

namespace {

/// A whole model as a Decoder.
class WholeDecoder : public Decoder {
 public:
  explicit WholeDecoder(const LlamaModel& model) : model_(model) {}
  KVCache make_cache(std::int64_t batch, std::int64_t capacity) override {
    return model_.make_cache(batch, capacity);
  }
  at::Tensor forward_hidden(const at::Tensor& input_ids,
                            const at::Tensor& attention_mask,
                            KVCache* cache) override {
    return model_.forward_hidden(input_ids, attention_mask, cache);
  }
  at::Tensor logits(const at::Tensor& hidden) override {
    return model_.logits(hidden);
  }
  at::Device device() const override {
    return model_.weights().embed_tokens.device();
  }

 private:
  const LlamaModel& model_;
};

}  // namespace

std::vector<Generation> generate(const LlamaModel& model,
                                 const std::vector<GenerationRequest>& requests,
                                 const config::SampleConfig& cfg,
                                 std::int64_t eos_id,
                                 std::int64_t pad_id,
                                 const SamplingKeys& keys) {
  WholeDecoder decoder(model);
  return generate(decoder, requests, cfg, eos_id, pad_id, keys);
}

TokenPicker::TokenPicker(const at::Tensor& logits,
                         const config::SampleConfig& cfg,
                         const SamplingKeys& keys)
    : cfg_(cfg),
      keys_(keys),
      picked_(cfg.temperature <= 0.0 ? logits.argmax(-1).to(at::kCPU).contiguous()
                                     : logits.to(at::kCPU, at::kFloat).contiguous()) {}

std::int64_t TokenPicker::pick(std::int64_t row, std::uint64_t sample_id, std::int64_t step) const {
  if (cfg_.temperature <= 0.0) {
    return picked_.data_ptr<std::int64_t>()[row];
  }
  const auto key = draw_key(keys_.seed,
                            keys_.iteration,
                            0,
                            sample_id,
                            static_cast<std::uint64_t>(step),
                            RandomStream::kSampling);
  return pick_token(picked_[row], cfg_, uniform01(key, 0));
}

int answer_limit(const GenerationRequest& request, const config::SampleConfig& cfg) {
  DNPO_CHECK(!request.prompt.empty(), "generate: prompt {} has no tokens", request.sample_id);
  DNPO_CHECK(request.max_new_tokens >= 0 && request.max_new_tokens <= cfg.max_new_tokens,
             "generate: prompt {} asks for {} new tokens, outside [0, sample.max_new_tokens = {}]",
             request.sample_id,
             request.max_new_tokens,
             cfg.max_new_tokens);
  return request.max_new_tokens > 0 ? request.max_new_tokens : cfg.max_new_tokens;
}

bool append_token(
    Generation& answer, std::int64_t token, std::int64_t eos_id, std::int64_t step, int limit) {
  if (token == eos_id) {
    answer.finished = true;
    return true;
  }
  answer.tokens.push_back(token);
  return step + 1 == limit;
}

namespace {

/// One static batch: requests[begin, end) run until the last of their answers ends (or, with
/// fixed_steps, for max_new_tokens steps).
void generate_batch(Decoder& model,
                    const std::vector<GenerationRequest>& requests,
                    std::size_t begin,
                    std::size_t end,
                    const config::SampleConfig& cfg,
                    std::int64_t eos_id,
                    std::int64_t pad_id,
                    const SamplingKeys& keys,
                    bool fixed_steps,
                    std::vector<Generation>& results) {
  const auto device = model.device();
  std::vector<TokenSequence> prompts;
  std::vector<int> limits;
  for (std::size_t i = begin; i < end; ++i) {
    prompts.push_back({requests[i].prompt, {}});
    limits.push_back(answer_limit(requests[i], cfg));
  }
  const int steps =
      fixed_steps ? cfg.max_new_tokens : *std::max_element(limits.begin(), limits.end());
  auto batch = pad_batch(prompts, pad_id, PadSide::kLeft);
  const auto rows = static_cast<std::int64_t>(end - begin);
  const auto prompt_len = batch.input_ids.size(1);
  auto cache = model.make_cache(rows, prompt_len + steps);
  auto mask = batch.attention_mask.to(device);
  auto hidden = model.forward_hidden(batch.input_ids.to(device), mask, &cache);
  std::vector<bool> done(rows, false);
  std::int64_t remaining = rows;
  for (int step = 0; step < steps; ++step) {
    const TokenPicker picker(model.logits(hidden.select(1, hidden.size(1) - 1)), cfg, keys);
    std::vector<std::int64_t> next(static_cast<std::size_t>(rows), pad_id);
    for (std::int64_t r = 0; r < rows; ++r) {
      if (done[r]) {
        continue;
      }
      const auto token = picker.pick(r, requests[begin + r].sample_id, step);
      if (append_token(
              results[begin + r], token, eos_id, step, limits[static_cast<std::size_t>(r)])) {
        done[r] = true;
        --remaining;
      }
      next[static_cast<std::size_t>(r)] = token;
    }
    if ((remaining == 0 && !fixed_steps) || step + 1 == steps) {
      break;
    }
    mask = at::cat({mask, at::ones({rows, 1}, mask.options())}, 1);
    const auto next_ids = at::tensor(next, at::kLong).view({rows, 1}).to(device);
    hidden = model.forward_hidden(next_ids, mask, &cache);
  }
}

}  // namespace

std::vector<Generation> generate(Decoder& model,
                                 const std::vector<GenerationRequest>& requests,
                                 const config::SampleConfig& cfg,
                                 std::int64_t eos_id,
                                 std::int64_t pad_id,
                                 const SamplingKeys& keys,
                                 bool fixed_steps) {
  if (!fixed_steps && cfg.batching == "continuous") {
    return generate_continuous(model, requests, cfg, eos_id, pad_id, keys);
  }
  at::NoGradGuard no_grad;
  std::vector<Generation> results(requests.size());
  const auto batch_size = static_cast<std::size_t>(std::max(1, cfg.batch_size));
  for (std::size_t begin = 0; begin < requests.size(); begin += batch_size) {
    const std::size_t end = std::min(requests.size(), begin + batch_size);
    generate_batch(model, requests, begin, end, cfg, eos_id, pad_id, keys, fixed_steps, results);
  }
  return results;
}

}  // namespace dnpo::model
