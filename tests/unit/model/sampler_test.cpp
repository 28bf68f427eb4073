// Generation: greedy follows the argmax path of full forwards, results do not depend on batch
// composition (counter-based draws per sample id), EOS ends a sample, pick_token's filters.
#include "dnpo/model/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dnpo/common/error.h"
#include "tiny_model.h"

namespace dnpo::model {
namespace {

using Ids = std::vector<std::int64_t>;
constexpr std::int64_t kPad = 0;
constexpr std::int64_t kNoEos = -1;  // never generated: samples run to max_new_tokens

config::ModelConfig tiny_config() {
  return test::tiny_model_config();
}

const std::vector<Ids>& prompts() {
  static const std::vector<Ids> p{{1, 5, 9, 13}, {1, 22}, {1, 40, 41, 42, 43, 44, 45}, {1, 7, 7}};
  return p;
}

std::vector<GenerationRequest> requests_for(const std::vector<std::size_t>& which) {
  std::vector<GenerationRequest> out;
  out.reserve(which.size());
  for (const auto i : which) {
    out.push_back({prompts()[i], static_cast<std::uint64_t>(100 + i)});
  }
  return out;
}

// Greedy decoding with one full (uncached, unpadded) forward per token.
Generation greedy_reference(const LlamaModel& model, Ids prompt, int max_new, std::int64_t eos) {
  at::NoGradGuard no_grad;
  Generation out;
  for (int step = 0; step < max_new; ++step) {
    const auto n = static_cast<std::int64_t>(prompt.size());
    auto ids = at::tensor(prompt, at::kLong).unsqueeze(0);
    auto hidden = model.forward_hidden(ids, at::ones({1, n}, at::kLong));
    const auto token = model.logits(hidden[0][n - 1]).argmax().item<std::int64_t>();
    if (token == eos) {
      out.finished = true;
      break;
    }
    out.tokens.push_back(token);
    prompt.push_back(token);
  }
  return out;
}

config::SampleConfig greedy_config(int batch_size, int max_new = 8) {
  config::SampleConfig cfg;
  cfg.temperature = 0.0;
  cfg.max_new_tokens = max_new;
  cfg.batch_size = batch_size;
  return cfg;
}

TEST(Sampler, GreedyFollowsTheArgmaxPath) {
  const LlamaModel model(tiny_config(), 3);
  const auto results =
      generate(model, requests_for({0, 1, 2, 3}), greedy_config(4), kNoEos, kPad, {1, 0});
  ASSERT_EQ(results.size(), 4U);
  for (std::size_t i = 0; i < 4; ++i) {
    const auto expected = greedy_reference(model, prompts()[i], 8, kNoEos);
    EXPECT_EQ(results[i].tokens, expected.tokens) << "prompt " << i;
    EXPECT_FALSE(results[i].finished);
    EXPECT_EQ(results[i].tokens.size(), 8U);
  }
}

TEST(Sampler, GreedyIsTheSameInBatchesOfOneAndFour) {
  const LlamaModel model(tiny_config(), 4);
  // EOS = a token that prompt 0's greedy path reaches after a few steps, so rows of one batch
  // finish at different steps.
  const auto path = greedy_reference(model, prompts()[0], 8, kNoEos).tokens;
  const auto seen_before = [&path](std::size_t pos) {
    const auto end = path.begin() + static_cast<std::ptrdiff_t>(pos);
    return std::find(path.begin(), end, path[pos]) != end;
  };
  std::size_t k = 2;
  while (k < path.size() && seen_before(k)) {
    ++k;
  }
  ASSERT_LT(k, path.size()) << "greedy path repeats a token at every position";
  const auto eos = path[k];
  const auto batched = generate(model, requests_for({0, 1, 2, 3}), greedy_config(4), eos, kPad, {});
  const auto single = generate(model, requests_for({0, 1, 2, 3}), greedy_config(1), eos, kPad, {});
  ASSERT_EQ(batched.size(), 4U);
  ASSERT_EQ(single.size(), 4U);
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(batched[i].tokens, single[i].tokens) << "prompt " << i;
    EXPECT_EQ(batched[i].finished, single[i].finished) << "prompt " << i;
    const auto expected = greedy_reference(model, prompts()[i], 8, eos);
    EXPECT_EQ(batched[i].tokens, expected.tokens) << "prompt " << i;
    EXPECT_EQ(batched[i].finished, expected.finished) << "prompt " << i;
  }
  // Prompt 0 stops at EOS after k tokens; EOS itself is not in the tokens.
  EXPECT_TRUE(batched[0].finished);
  EXPECT_EQ(batched[0].tokens, Ids(path.begin(), path.begin() + static_cast<std::ptrdiff_t>(k)));
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

at::Tensor last_logits(const LlamaModel& model, const Ids& prompt) {
  at::NoGradGuard no_grad;
  const auto n = static_cast<std::int64_t>(prompt.size());
  const auto hidden =
      model.forward_hidden(at::tensor(prompt, at::kLong).unsqueeze(0), at::ones({1, n}, at::kLong));
  return model.logits(hidden[0][n - 1]);
}

TEST(Sampler, DecodingLayoutInFp32GivesTheSameTokens) {
  const LlamaModel model(tiny_config(), 5);
  auto decoding = model.clone();
  decoding.prepare_for_decoding(at::kFloat);
  const auto& layer = decoding.weights().layers[0];
  ASSERT_TRUE(layer.qkv_proj.defined());
  ASSERT_TRUE(layer.gate_up_proj.defined());
  // q, k, v and gate, up are row blocks of the stacked matrices, not copies.
  EXPECT_EQ(layer.q_proj.data_ptr(), layer.qkv_proj.data_ptr());
  EXPECT_EQ(layer.up_proj.data_ptr<float>(),
            layer.gate_up_proj.data_ptr<float>() + layer.gate_proj.numel());
  EXPECT_TRUE(at::equal(layer.k_proj, model.weights().layers[0].k_proj));
  EXPECT_LT(max_abs_diff(last_logits(decoding, prompts()[2]), last_logits(model, prompts()[2])),
            1e-5);
  const auto expected =
      generate(model, requests_for({0, 1, 2, 3}), greedy_config(4), kNoEos, kPad, {});
  const auto got =
      generate(decoding, requests_for({0, 1, 2, 3}), greedy_config(4), kNoEos, kPad, {});
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(got[i].tokens, expected[i].tokens) << "prompt " << i;
  }
}

TEST(Sampler, Bf16MatricesKeepTheNumbersCloseAndDecodeConsistently) {
  for (const bool tied : {false, true}) {
    const LlamaModel model(test::tiny_model_config(tied), 6);
    auto decoding = model.clone();
    decoding.prepare_for_decoding(decoding_dtype("bf16"));
    const auto& w = decoding.weights();
    for (const auto& layer : w.layers) {
      for (const auto* m :
           {&layer.qkv_proj, &layer.q_proj, &layer.o_proj, &layer.gate_up_proj, &layer.down_proj}) {
        EXPECT_EQ(m->scalar_type(), at::kBFloat16);
      }
      EXPECT_EQ(layer.input_layernorm.scalar_type(), at::kFloat);
    }
    EXPECT_EQ(w.lm_head.scalar_type(), at::kBFloat16) << "tied " << tied;
    EXPECT_EQ(w.embed_tokens.scalar_type(), at::kFloat) << "tied " << tied;
    // Logits O(1) (init std 0.2): bf16's 8 bits of mantissa move them by about 1e-2, not 0.
    const auto reference = last_logits(model, prompts()[2]);
    const auto got = last_logits(decoding, prompts()[2]);
    EXPECT_EQ(got.scalar_type(), at::kFloat) << "activations stay fp32";
    const auto diff = max_abs_diff(got, reference);
    EXPECT_GT(diff, 0.0);
    EXPECT_LT(diff, 0.05 * reference.abs().max().item<double>()) << "tied " << tied;
    // Decoding on the KV cache in this layout follows the argmax path of its own full forwards.
    const auto tokens =
        generate(decoding, requests_for({0, 1, 2, 3}), greedy_config(4), kNoEos, kPad, {});
    for (std::size_t i = 0; i < 4; ++i) {
      EXPECT_EQ(tokens[i].tokens, greedy_reference(decoding, prompts()[i], 8, kNoEos).tokens)
          << "prompt " << i << ", tied " << tied;
    }
  }
  EXPECT_THROW(decoding_dtype("fp16"), ConfigError);
}

TEST(Sampler, DecodingLayoutWithBf16ComputeCastsTheEmbeddingOnce) {
  LlamaModel model(tiny_config(), 7);
  model.set_compute_dtype(at::kBFloat16);
  auto decoding = model.clone();
  decoding.prepare_for_decoding(at::kBFloat16);
  EXPECT_EQ(decoding.weights().embed_tokens.scalar_type(), at::kBFloat16);
  EXPECT_EQ(decoding.weights().norm.scalar_type(), at::kBFloat16);
  EXPECT_EQ(decoding.weights().layers[1].post_attention_layernorm.scalar_type(), at::kBFloat16);
  EXPECT_EQ(model.weights().embed_tokens.scalar_type(), at::kFloat) << "the source is untouched";
  // The same bf16 forward as the model that casts its fp32 masters on every call.
  EXPECT_LT(max_abs_diff(last_logits(decoding, prompts()[2]), last_logits(model, prompts()[2])),
            1e-6);
}

TEST(Sampler, SamplingDependsOnSeedAndSampleIdNotOnBatch) {
  const LlamaModel model(tiny_config(), 5);
  config::SampleConfig cfg;
  cfg.temperature = 1.0;
  cfg.max_new_tokens = 10;
  cfg.batch_size = 4;
  const SamplingKeys keys{1234, 2};
  const auto all = generate(model, requests_for({0, 1, 2, 3}), cfg, kNoEos, kPad, keys);
  cfg.batch_size = 2;
  const auto reordered = generate(model, requests_for({3, 2}), cfg, kNoEos, kPad, keys);
  cfg.batch_size = 1;
  const auto alone = generate(model, requests_for({2}), cfg, kNoEos, kPad, keys);
  EXPECT_EQ(alone[0].tokens, all[2].tokens);
  EXPECT_EQ(reordered[1].tokens, all[2].tokens);
  EXPECT_EQ(reordered[0].tokens, all[3].tokens);
  EXPECT_EQ(all[2].tokens.size(), 10U);
  // Another seed, iteration or sample id gives another sample.
  const auto other_seed = generate(model, requests_for({2}), cfg, kNoEos, kPad, {1235, 2});
  EXPECT_NE(other_seed[0].tokens, all[2].tokens);
  const auto other_iteration = generate(model, requests_for({2}), cfg, kNoEos, kPad, {1234, 3});
  EXPECT_NE(other_iteration[0].tokens, all[2].tokens);
  auto renamed = requests_for({2});
  renamed[0].sample_id = 7;
  EXPECT_NE(generate(model, renamed, cfg, kNoEos, kPad, keys)[0].tokens, all[2].tokens);
  // The same prompt under two sample ids in one batch gets two different samples.
  auto twins = requests_for({2, 2});
  twins[1].sample_id = 7;
  cfg.batch_size = 2;
  const auto twin_results = generate(model, twins, cfg, kNoEos, kPad, keys);
  EXPECT_EQ(twin_results[0].tokens, all[2].tokens);
  EXPECT_NE(twin_results[1].tokens, all[2].tokens);
}

// A model whose residual stream carries a large constant in dimension 0 that no layer writes to,
// and whose lm_head row for EOS reads that dimension: EOS has by far the largest logit.
LlamaModel eos_loving_model(std::int64_t eos) {
  const LlamaModel base(tiny_config(), 6);
  NamedTensors tensors;
  for (const auto& [name, tensor] : base.named_parameters()) {
    auto t = tensor.detach().clone();
    if (name == "model.embed_tokens.weight") {
      t.select(1, 0).fill_(30.0);
    } else if (name.find("o_proj") != std::string::npos ||
               name.find("down_proj") != std::string::npos) {
      t.select(0, 0).zero_();
    } else if (name == "lm_head.weight") {
      t[eos].zero_();
      t[eos][0] = 20.0;
    }
    tensors.emplace_back(name, t);
  }
  return {tiny_config(), tensors};
}

TEST(Sampler, StopsAtEos) {
  const std::int64_t eos = 2;
  const auto model = eos_loving_model(eos);
  config::SampleConfig cfg;
  cfg.temperature = 1.0;
  cfg.max_new_tokens = 6;
  cfg.batch_size = 4;
  const auto results = generate(model, requests_for({0, 1, 2, 3}), cfg, eos, kPad, {9, 0});
  for (const auto& r : results) {
    EXPECT_TRUE(r.finished);
    EXPECT_TRUE(r.tokens.empty());
  }
  // The same model without that EOS id runs to max_new_tokens, emitting token 2 every time.
  const auto unstopped = generate(model, requests_for({1}), cfg, kNoEos, kPad, {9, 0});
  EXPECT_FALSE(unstopped[0].finished);
  EXPECT_EQ(unstopped[0].tokens, Ids(6, eos));
}

TEST(Sampler, RejectsEmptyPrompt) {
  const LlamaModel model(tiny_config(), 7);
  const std::vector<GenerationRequest> empty_prompt(1);
  EXPECT_ANY_THROW(generate(model, empty_prompt, greedy_config(1), kNoEos, kPad, {}));
}

TEST(PickToken, FiltersReduceToArgmax) {
  const auto logits = at::tensor({0.3, 2.0, -1.0, 1.9, 0.0}, at::kFloat);
  config::SampleConfig cfg;
  cfg.temperature = 0.0;
  EXPECT_EQ(pick_token(logits, cfg, 0.99), 1);
  cfg.temperature = 1.0;
  cfg.top_k = 1;
  for (const double u : {0.0, 0.3, 0.999}) {
    EXPECT_EQ(pick_token(logits, cfg, u), 1) << "top_k=1, u=" << u;
  }
  cfg.top_k = 0;
  cfg.top_p = 1e-6;
  for (const double u : {0.0, 0.3, 0.999}) {
    EXPECT_EQ(pick_token(logits, cfg, u), 1) << "top_p small, u=" << u;
  }
  // Unfiltered, a large u reaches beyond the argmax.
  cfg.top_p = 1.0;
  EXPECT_NE(pick_token(logits, cfg, 0.999), 1);
}

TEST(PickToken, InverseCdfOverSortedProbabilities) {
  // p = (0.25, 0.75): sorted descending [1 (0.75), 0 (0.25)].
  const auto logits = at::tensor({0.0F, static_cast<float>(std::log(3.0))}, at::kFloat);
  config::SampleConfig cfg;
  cfg.temperature = 1.0;
  EXPECT_EQ(pick_token(logits, cfg, 0.0), 1);
  EXPECT_EQ(pick_token(logits, cfg, 0.74), 1);
  EXPECT_EQ(pick_token(logits, cfg, 0.76), 0);
  EXPECT_EQ(pick_token(logits, cfg, 0.999), 0);
  // Temperature 0.5 squares the odds: p = (0.1, 0.9).
  cfg.temperature = 0.5;
  EXPECT_EQ(pick_token(logits, cfg, 0.89), 1);
  EXPECT_EQ(pick_token(logits, cfg, 0.91), 0);
  // top_p = 0.7 keeps only the 0.75 token; top_p = 0.8 keeps both (renormalised).
  cfg.temperature = 1.0;
  cfg.top_p = 0.7;
  EXPECT_EQ(pick_token(logits, cfg, 0.999), 1);
  cfg.top_p = 0.8;
  EXPECT_EQ(pick_token(logits, cfg, 0.999), 0);
}

TEST(PickToken, TopKRenormalisesOverTheKept) {
  // p ∝ (4, 3, 2, 1): top_k = 2 keeps (4, 3) → u < 4/7 picks 0, else 1; never 2 or 3.
  const auto logits = at::log(at::tensor({4.0, 3.0, 2.0, 1.0}, at::kFloat));
  config::SampleConfig cfg;
  cfg.temperature = 1.0;
  cfg.top_k = 2;
  EXPECT_EQ(pick_token(logits, cfg, 0.5), 0);
  EXPECT_EQ(pick_token(logits, cfg, 0.6), 1);
  EXPECT_EQ(pick_token(logits, cfg, 0.999), 1);
  cfg.top_k = 0;
  EXPECT_EQ(pick_token(logits, cfg, 0.999), 3);
}

// Prompts of 1 to 13 tokens (a long one often arrives when the batch's cache is still shorter than
// it) and answer limits that differ per prompt (0 = the config's).
std::vector<GenerationRequest> varied_requests(int count, int max_new) {
  std::vector<GenerationRequest> out;
  for (int i = 0; i < count; ++i) {
    Ids prompt{1};
    const int length = 1 + (i * 7) % 13;
    for (int t = 1; t < length; ++t) {
      prompt.push_back(3 + (i * 11 + t * 5) % 45);
    }
    const int limit = i % 3 == 0 ? 0 : 1 + (i * 5) % max_new;
    out.push_back({prompt, static_cast<std::uint64_t>(500 + i), limit});
  }
  return out;
}

// The token the model's static greedy answers use most: as EOS it ends answers at many lengths.
std::int64_t common_token(const std::vector<Generation>& answers) {
  std::vector<int> counts(64, 0);
  for (const auto& answer : answers) {
    for (const auto token : answer.tokens) {
      ++counts[static_cast<std::size_t>(token)];
    }
  }
  return std::max_element(counts.begin(), counts.end()) - counts.begin();
}

// Rows 3: every step of the last prompts' drain drops the ended rows; rows 8: ended rows idle
// (decoding padding) until they are a quarter of the batch.
TEST(ContinuousBatching, GivesTheAnswersOfStaticBatches) {
  const LlamaModel model(tiny_config(), 11);
  constexpr int kPrompts = 60, kMaxNew = 16;
  const auto requests = varied_requests(kPrompts, kMaxNew);
  auto cfg = greedy_config(3, kMaxNew);
  cfg.batching = "static";
  const auto eos = common_token(generate(model, requests, cfg, kNoEos, kPad, {}));
  for (const int rows : {3, 8}) {
    for (const double temperature : {0.0, 1.0}) {
      SCOPED_TRACE(testing::Message() << rows << " rows, T = " << temperature);
      cfg.batch_size = rows;
      cfg.temperature = temperature;
      cfg.batching = "static";
      const auto batches = generate(model, requests, cfg, eos, kPad, {77, 1});
      cfg.batching = "continuous";
      const auto continuous = generate(model, requests, cfg, eos, kPad, {77, 1});
      ASSERT_EQ(continuous.size(), batches.size());
      int ended_by_eos = 0, ended_short_of_the_cap = 0, picks = 0;
      for (std::size_t i = 0; i < batches.size(); ++i) {
        EXPECT_EQ(continuous[i].tokens, batches[i].tokens) << "prompt " << i;
        EXPECT_EQ(continuous[i].finished, batches[i].finished) << "prompt " << i;
        const auto limit = answer_limit(requests[i], cfg);
        EXPECT_LE(batches[i].tokens.size(), static_cast<std::size_t>(limit));
        ended_by_eos += batches[i].finished ? 1 : 0;
        ended_short_of_the_cap += batches[i].tokens.size() < kMaxNew ? 1 : 0;
        picks += static_cast<int>(batches[i].tokens.size()) + (batches[i].finished ? 1 : 0);
      }
      // Rows must end at different times for any refill to happen, ...
      EXPECT_GT(ended_by_eos, 5);
      EXPECT_GT(ended_short_of_the_cap, kPrompts / 2);
      // ... and with 3 rows the batch decodes more steps than its cache has columns (at most
      // 2 × (13 + 16)), so the columns no row reads were dropped: each step picks at most one
      // token per row, and each prefill one.
      if (rows == 3) {
        EXPECT_GT((picks - kPrompts) / rows, 2 * (13 + kMaxNew));
      }
    }
  }
}

TEST(ContinuousBatching, RefillsInGroupsWithTheSameAnswers) {
  // sample.refill_rows: free rows wait for company before they take prompts; the answers stay
  // static batches' (a group larger than the batch, or than the prompts left, still refills).
  const LlamaModel model(tiny_config(), 11);
  const auto requests = varied_requests(40, 12);
  auto cfg = greedy_config(6, 12);
  cfg.temperature = 1.0;
  cfg.batching = "static";
  const auto eos = common_token(generate(model, requests, cfg, kNoEos, kPad, {}));
  const auto batches = generate(model, requests, cfg, eos, kPad, {5, 2});
  cfg.batching = "continuous";
  for (const int refill : {2, 4, 6, 50}) {
    cfg.refill_rows = refill;
    const auto continuous = generate(model, requests, cfg, eos, kPad, {5, 2});
    ASSERT_EQ(continuous.size(), batches.size());
    for (std::size_t i = 0; i < batches.size(); ++i) {
      EXPECT_EQ(continuous[i].tokens, batches[i].tokens) << "refill " << refill << ", prompt " << i;
    }
  }
}

TEST(ContinuousBatching, FollowsTheArgmaxPathWithMoreRowsThanPrompts) {
  const LlamaModel model(tiny_config(), 3);
  auto cfg = greedy_config(8, 6);
  const auto requests = varied_requests(5, 6);
  const auto results = generate(model, requests, cfg, kNoEos, kPad, {});
  for (std::size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(
        results[i].tokens,
        greedy_reference(model, requests[i].prompt, answer_limit(requests[i], cfg), kNoEos).tokens)
        << "prompt " << i;
  }
}

TEST(ContinuousBatching, RejectsAnAnswerLimitAboveTheConfigs) {
  const LlamaModel model(tiny_config(), 3);
  auto requests = requests_for({0, 1});
  requests[1].max_new_tokens = 9;
  for (const std::string batching : {"static", "continuous"}) {
    auto cfg = greedy_config(2, 8);
    cfg.batching = batching;
    EXPECT_THROW(generate(model, requests, cfg, kNoEos, kPad, {}), Error) << batching;
  }
}

}  // namespace
}  // namespace dnpo::model
