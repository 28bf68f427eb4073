// LlamaModel: KV-cache decoding equals the full forward (with left padding), GQA equals repeated
// K/V heads, clone() is deep, weights from tensors are checked by name and shape, and the
// counter-based init and normal rows are chunk invariant.
#include "dnpo/model/llama.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dnpo/common/counter_rng.h"
#include "dnpo/common/error.h"
#include "dnpo/model/random.h"
#include "expect_error.h"
#include "tiny_model.h"

namespace dnpo::model {
namespace {

config::ModelConfig tiny_config(bool tied = false, int kv_heads = 2) {
  return test::tiny_model_config(tied, kv_heads);
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

at::Tensor full_logits(const LlamaModel& model, const at::Tensor& ids, const at::Tensor& mask) {
  at::NoGradGuard no_grad;
  return model.logits(model.forward_hidden(ids, mask));
}

// Row 0: 10 real tokens; row 1: 7 real tokens left-padded with 3 pads (id 0, mask 0).
struct PaddedBatch {
  at::Tensor ids, mask;
};
PaddedBatch left_padded_batch() {
  const std::vector<std::int64_t> row0{3, 17, 5, 42, 8, 8, 1, 30, 11, 2};
  const std::vector<std::int64_t> row1{0, 0, 0, 9, 23, 4, 47, 15, 6, 33};
  auto ids = at::empty({2, 10}, at::kLong);
  for (int t = 0; t < 10; ++t) {
    ids[0][t] = row0[t];
    ids[1][t] = row1[t];
  }
  auto mask = at::ones({2, 10}, at::kLong);
  mask[1].narrow(0, 0, 3).zero_();
  return {ids, mask};
}

TEST(Llama, KvCacheMatchesFullForwardWithLeftPadding) {
  const LlamaModel model(tiny_config(), 11);
  const auto [ids, mask] = left_padded_batch();
  const auto reference = full_logits(model, ids, mask);  // (2, 10, V)

  at::NoGradGuard no_grad;
  auto cache = model.make_cache(2, 10);
  const std::int64_t prefix = 4;
  std::vector<at::Tensor> pieces;
  pieces.push_back(model.logits(
      model.forward_hidden(ids.narrow(1, 0, prefix), mask.narrow(1, 0, prefix), &cache)));
  EXPECT_EQ(cache.length, prefix);
  for (std::int64_t t = prefix; t < 10; ++t) {
    pieces.push_back(
        model.logits(model.forward_hidden(ids.narrow(1, t, 1), mask.narrow(1, 0, t + 1), &cache)));
  }
  EXPECT_EQ(cache.length, 10);
  const auto cached = at::cat(pieces, 1);
  ASSERT_EQ(cached.sizes(), reference.sizes());
  // Row 0 everywhere; row 1 at its real positions (pad queries attend to nothing real).
  EXPECT_LT(max_abs_diff(cached[0], reference[0]), 1e-5);
  EXPECT_LT(max_abs_diff(cached[1].narrow(0, 3, 7), reference[1].narrow(0, 3, 7)), 1e-5);
  // The logits are not trivially small: a 1e-5 tolerance is meaningful.
  EXPECT_GT(reference.abs().max().item<double>(), 0.5);
}

TEST(Llama, RightPaddedMeansOnesThenZerosInEveryRow) {
  const auto mask = [](const std::vector<std::int64_t>& v, std::int64_t rows) {
    return at::tensor(v, at::kLong).reshape({rows, -1});
  };
  EXPECT_TRUE(model::is_right_padded(mask({1, 1, 1, 0, 1, 1, 1, 1}, 2)));
  EXPECT_TRUE(model::is_right_padded(mask({1, 0, 0, 0}, 1)));
  EXPECT_TRUE(model::is_right_padded(mask({1}, 1)));
  EXPECT_FALSE(model::is_right_padded(mask({1, 1, 1, 1, 0, 1, 1, 1}, 2)));  // left padding
  EXPECT_FALSE(model::is_right_padded(mask({1, 0, 1, 0}, 1)));              // a hole
}

TEST(Llama, LeftPaddingDoesNotChangeRealTokensLogits) {
  const LlamaModel model(tiny_config(), 12);
  const auto [ids, mask] = left_padded_batch();
  const auto batched = full_logits(model, ids, mask);
  // Row 1 alone, without padding: positions restart at 0 exactly as with the mask.
  const auto alone_ids = ids[1].narrow(0, 3, 7).unsqueeze(0);
  const auto alone = full_logits(model, alone_ids, at::ones({1, 7}, at::kLong));
  EXPECT_LT(max_abs_diff(batched[1].narrow(0, 3, 7), alone[0]), 1e-5);
  // Without the mask the pads are real tokens and the logits change: the mask matters.
  const auto unmasked = full_logits(model, ids, at::ones({2, 10}, at::kLong));
  EXPECT_GT(max_abs_diff(unmasked[1].narrow(0, 3, 7), alone[0]), 1e-3);
}

// A packed row numbers its sequences 1, 2, … (0 = padding): each attends only to itself with
// positions from 0, so its logits are those of the sequence in a row of its own.
TEST(Llama, PackedSequencesEqualTheirOwnRows) {
  const LlamaModel model(tiny_config(), 14);
  const std::vector<std::int64_t> a{3, 17, 5, 42, 8, 8};
  const std::vector<std::int64_t> b{9, 23, 4, 47};
  auto ids = at::zeros({1, 12}, at::kLong);
  auto mask = at::zeros({1, 12}, at::kLong);
  for (std::size_t t = 0; t < a.size(); ++t) {
    ids[0][static_cast<std::int64_t>(t)] = a[t];
    mask[0][static_cast<std::int64_t>(t)] = 1;
  }
  for (std::size_t t = 0; t < b.size(); ++t) {
    ids[0][static_cast<std::int64_t>(6 + t)] = b[t];
    mask[0][static_cast<std::int64_t>(6 + t)] = 2;
  }
  EXPECT_FALSE(model::is_right_padded(mask));
  const auto packed = full_logits(model, ids, mask);
  const auto alone = [&](const std::vector<std::int64_t>& seq) {
    const auto n = static_cast<std::int64_t>(seq.size());
    return full_logits(
        model, at::tensor(seq, at::kLong).unsqueeze(0), at::ones({1, n}, at::kLong))[0];
  };
  EXPECT_LT(max_abs_diff(packed[0].narrow(0, 0, 6), alone(a)), 1e-5);
  EXPECT_LT(max_abs_diff(packed[0].narrow(0, 6, 4), alone(b)), 1e-5);
  // numbered as one sequence, the second sees the first: its logits change
  auto one = mask.clone();
  one.narrow(1, 6, 4).fill_(1);
  EXPECT_GT(max_abs_diff(full_logits(model, ids, one)[0].narrow(0, 6, 4), alone(b)), 1e-3);
}

TEST(Llama, EarlierTokensChangeLaterLogits) {
  const LlamaModel model(tiny_config(), 13);
  const auto [ids, mask] = left_padded_batch();
  auto changed = ids.clone();
  changed[0][0] = 49;
  const auto a = full_logits(model, ids, mask);
  const auto b = full_logits(model, changed, mask);
  // Causal: the change reaches every later position of row 0 and nothing of row 1.
  EXPECT_GT(max_abs_diff(a[0][9], b[0][9]), 1e-3);
  EXPECT_EQ(max_abs_diff(a[1], b[1]), 0.0);
  // Changing the last token leaves every earlier position unchanged.
  auto last = ids.clone();
  last[0][9] = 49;
  const auto c = full_logits(model, last, mask);
  EXPECT_LT(max_abs_diff(a[0].narrow(0, 0, 9), c[0].narrow(0, 0, 9)), 1e-6);
}

TEST(Llama, GroupedQueryAttentionEqualsRepeatedKvHeads) {
  const auto gqa_cfg = tiny_config(false, 2);
  const LlamaModel gqa(gqa_cfg, 21);
  const auto mha_cfg = tiny_config(false, 4);
  const std::int64_t hd = gqa_cfg.hidden_size / gqa_cfg.num_attention_heads;
  const std::int64_t group = gqa_cfg.num_attention_heads / gqa_cfg.num_key_value_heads;
  NamedTensors tensors;
  for (const auto& [name, tensor] : gqa.named_parameters()) {
    auto t = tensor.detach();
    if (name.find("k_proj") != std::string::npos || name.find("v_proj") != std::string::npos) {
      // (KV·hd, C) → (H·hd, C): query head h uses KV head h / group (HF repeat_kv).
      t = t.view({gqa_cfg.num_key_value_heads, hd, gqa_cfg.hidden_size})
              .repeat_interleave(group, 0)
              .reshape({mha_cfg.num_attention_heads * hd, gqa_cfg.hidden_size});
    }
    tensors.emplace_back(name, t);
  }
  const LlamaModel mha(mha_cfg, tensors);
  const auto [ids, mask] = left_padded_batch();
  const auto a = full_logits(gqa, ids, mask);
  const auto b = full_logits(mha, ids, mask);
  EXPECT_LT(max_abs_diff(a[0], b[0]), 1e-5);
  EXPECT_LT(max_abs_diff(a[1].narrow(0, 3, 7), b[1].narrow(0, 3, 7)), 1e-5);
}

TEST(Llama, RandomInitIsDeterministicPerSeed) {
  const LlamaModel a(tiny_config(), 5);
  const LlamaModel b(tiny_config(), 5);
  const LlamaModel c(tiny_config(), 6);
  ASSERT_EQ(a.named_parameters().size(), b.named_parameters().size());
  for (std::size_t i = 0; i < a.named_parameters().size(); ++i) {
    EXPECT_TRUE(at::equal(a.named_parameters()[i].second, b.named_parameters()[i].second))
        << a.named_parameters()[i].first;
  }
  EXPECT_FALSE(at::equal(a.weights().embed_tokens, c.weights().embed_tokens));
  // Norms start at one, matrices have std ≈ initializer_range.
  EXPECT_TRUE(at::equal(a.weights().norm, at::ones({32}, at::kFloat)));
  EXPECT_NEAR(a.weights().layers[0].q_proj.std().item<double>(), 0.2, 0.02);
}

TEST(Llama, NamedParametersFollowHfNamesAndTying) {
  const LlamaModel untied(tiny_config(false), 1);
  const LlamaModel tied(tiny_config(true), 1);
  const auto names = parameter_names(tiny_config(false));
  ASSERT_EQ(untied.named_parameters().size(), names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(untied.named_parameters()[i].first, names[i]);
  }
  EXPECT_EQ(names.front(), "model.embed_tokens.weight");
  EXPECT_EQ(names.back(), "lm_head.weight");
  EXPECT_EQ(names.size(), 1U + 2U * 9U + 1U + 1U);
  EXPECT_EQ(tied.named_parameters().size(), names.size() - 1);
  EXPECT_EQ(tied.named_parameters().back().first, "model.norm.weight");
  // Tied: lm_head is the embedding's storage, not a copy.
  EXPECT_TRUE(tied.weights().lm_head.is_same(tied.weights().embed_tokens));
  EXPECT_EQ(tied.num_parameters() + std::int64_t{50} * 32, untied.num_parameters());
}

TEST(Llama, CloneIsDeep) {
  LlamaModel original(tiny_config(), 31);
  const auto [ids, mask] = left_padded_batch();
  const auto before = full_logits(original, ids, mask);
  LlamaModel copy = original.clone();
  EXPECT_LT(max_abs_diff(full_logits(copy, ids, mask), before), 1e-6);
  {
    at::NoGradGuard no_grad;
    for (auto& p : copy.parameters()) {
      p.add_(1.0);
    }
  }
  for (std::size_t i = 0; i < original.parameters().size(); ++i) {
    EXPECT_FALSE(original.parameters()[i].is_same(copy.parameters()[i]));
  }
  EXPECT_EQ(max_abs_diff(full_logits(original, ids, mask), before), 0.0);
  EXPECT_GT(max_abs_diff(full_logits(copy, ids, mask), before), 1e-3);
  // copy_from brings the values back without new storage.
  const auto storage = copy.weights().embed_tokens.data_ptr();
  copy.copy_from(original);
  EXPECT_EQ(copy.weights().embed_tokens.data_ptr(), storage);
  EXPECT_EQ(max_abs_diff(full_logits(copy, ids, mask), before), 0.0);
}

TEST(Llama, CloneOfTiedModelStaysTied) {
  LlamaModel original(tiny_config(true), 32);
  LlamaModel copy = original.clone();
  EXPECT_TRUE(copy.weights().lm_head.is_same(copy.weights().embed_tokens));
  EXPECT_FALSE(copy.weights().embed_tokens.is_same(original.weights().embed_tokens));
}

NamedTensors detached(const LlamaModel& model) {
  NamedTensors out;
  for (const auto& [name, tensor] : model.named_parameters()) {
    out.emplace_back(name, tensor.detach().clone());
  }
  return out;
}

TEST(Llama, ConstructorRejectsMissingTensor) {
  const LlamaModel model(tiny_config(), 41);
  auto tensors = detached(model);
  const std::string missing = "model.layers.1.mlp.up_proj.weight";
  tensors.erase(
      std::remove_if(
          tensors.begin(), tensors.end(), [&](const auto& nt) { return nt.first == missing; }),
      tensors.end());
  EXPECT_ERROR(
      DataError, [&] { LlamaModel unused(tiny_config(), tensors); }, missing);
}

TEST(Llama, ConstructorRejectsWrongShape) {
  const LlamaModel model(tiny_config(), 42);
  auto tensors = detached(model);
  for (auto& [name, tensor] : tensors) {
    if (name == "model.layers.0.self_attn.k_proj.weight") {
      tensor = at::zeros({32, 32});  // MHA shape for a GQA config
    }
  }
  EXPECT_ERROR(
      DataError,
      [&] { LlamaModel unused(tiny_config(), tensors); },
      "model.layers.0.self_attn.k_proj.weight");
}

TEST(Llama, ConstructorRejectsUnexpectedTensorButAcceptsTiedLmHead) {
  const LlamaModel model(tiny_config(), 43);
  auto tensors = detached(model);
  tensors.emplace_back("model.layers.2.mlp.up_proj.weight", at::zeros({64, 32}));
  EXPECT_ERROR(
      DataError,
      [&] { LlamaModel unused(tiny_config(), tensors); },
      "model.layers.2.mlp.up_proj.weight");
  // A tied config takes an untied checkpoint's lm_head.weight without complaint.
  const LlamaModel tied(tiny_config(true), detached(model));
  EXPECT_TRUE(at::equal(tied.weights().lm_head, model.weights().embed_tokens));
}

TEST(Llama, ConstructorRejectsBadHeadConfig) {
  auto cfg = tiny_config();
  cfg.num_key_value_heads = 3;
  EXPECT_THROW(LlamaModel(cfg, 1), ConfigError);
}

TEST(CounterNormalRows, RowDependsOnlyOnItsKey) {
  std::vector<std::uint64_t> keys;
  for (std::uint64_t i = 0; i < 5; ++i) {
    keys.push_back(draw_key(99, 1, 2, i, 7, RandomStream::kNoiseEps1));
  }
  const auto all = counter_normal_rows(keys, 37);
  ASSERT_EQ(all.sizes(), at::IntArrayRef({5, 37}));
  // Any sub-selection / reordering of the keys (a chunk of rows) gives the same rows.
  const auto one = counter_normal_rows({keys[2]}, 37);
  EXPECT_TRUE(at::equal(one[0], all[2]));
  const auto swapped = counter_normal_rows({keys[4], keys[2], keys[0]}, 37);
  EXPECT_TRUE(at::equal(swapped[0], all[4]));
  EXPECT_TRUE(at::equal(swapped[1], all[2]));
  EXPECT_TRUE(at::equal(swapped[2], all[0]));
  // Column j is draw j of the key.
  EXPECT_FLOAT_EQ(all[3][10].item<float>(), static_cast<float>(standard_normal(keys[3], 10)));
  EXPECT_FALSE(at::equal(all[0], all[1]));
}

TEST(CounterNormalRows, TensorOpsPathEqualsTheLoopBitForBit) {
  // The path GPUs take (integer tensor ops) against the CPU loop: same uniforms, same floats.
  std::vector<std::uint64_t> keys;
  for (std::uint64_t i = 0; i < 7; ++i) {
    keys.push_back(draw_key(0xFFFFFFFFFFFFFFFFULL - i, 3, 1, i, 2 * i, RandomStream::kNoiseEps2));
  }
  for (const std::int64_t cols : {1, 2, 37, 1000}) {
    const auto loop = counter_normal_rows(keys, cols);
    const auto ops = counter_normal_rows_by_tensor_ops(keys, cols, at::kCPU);
    ASSERT_EQ(ops.sizes(), loop.sizes());
    EXPECT_TRUE(at::equal(ops, loop)) << "cols " << cols;
  }
  // Sanity of the draws themselves: roughly standard normal.
  const auto many = counter_normal_rows_by_tensor_ops(keys, 20000, at::kCPU);
  EXPECT_NEAR(many.mean().item<double>(), 0.0, 0.01);
  EXPECT_NEAR(many.std().item<double>(), 1.0, 0.01);
}

TEST(CounterNormalRows, CounterNormalScalesByStd) {
  const auto key = draw_key(3, 0, 0, 0, 0, RandomStream::kInit);
  const auto a = counter_normal({4, 5}, 2.0, key);
  ASSERT_EQ(a.sizes(), at::IntArrayRef({4, 5}));
  EXPECT_FLOAT_EQ(a[1][2].item<float>(), static_cast<float>(2.0 * standard_normal(key, 7)));
  EXPECT_TRUE(at::equal(a, counter_normal({4, 5}, 2.0, key)));
}

}  // namespace
}  // namespace dnpo::model
