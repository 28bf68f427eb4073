// The decoder wired as FSDP units; see sharded_llama.h.
#include "dnpo/train/sharded_llama.h"

#include <map>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "dnpo/common/error.h"

namespace dnpo::train {
namespace {

dist::TensorSpec spec_of(const std::string& name, const at::Tensor& t) {
  return {name, t.sizes().vec()};
}

// A unit over the named tensors `names`, loaded with their values from `source`.
std::unique_ptr<dist::ShardedUnit> make_unit(const std::string& unit_name,
                                             const std::vector<std::string>& names,
                                             const TensorSource& source,
                                             dist::Comm& comm,
                                             dist::UnitPrecision precision,
                                             bool trainable) {
  std::vector<dist::TensorSpec> specs;
  std::vector<at::Tensor> values;
  for (const auto& name : names) {
    auto value = source(name);
    specs.push_back(spec_of(name, value));
    values.push_back(std::move(value));
  }
  auto unit =
      std::make_unique<dist::ShardedUnit>(unit_name, std::move(specs), comm, precision, trainable);
  unit->load_full(values);
  return unit;
}

const std::vector<std::string> kBlockTensors = {"input_layernorm.weight",
                                                "self_attn.q_proj.weight",
                                                "self_attn.k_proj.weight",
                                                "self_attn.v_proj.weight",
                                                "self_attn.o_proj.weight",
                                                "post_attention_layernorm.weight",
                                                "mlp.gate_proj.weight",
                                                "mlp.up_proj.weight",
                                                "mlp.down_proj.weight"};

}  // namespace

ShardedLlama::ShardedLlama(const model::LlamaModel& model,
                           dist::Comm& comm,
                           dist::UnitPrecision precision,
                           bool trainable,
                           bool recompute)
    : ShardedLlama(
          model.config(),
          [&model](const std::string& name) {
            for (const auto& [n, t] : model.named_parameters()) {
              if (n == name) {
                return t.detach();
              }
            }
            DNPO_CHECK(false, "the model has no parameter '{}'", name);
            return at::Tensor();
          },
          comm,
          precision,
          trainable,
          recompute) {}

ShardedLlama::ShardedLlama(config::ModelConfig cfg,
                           const TensorSource& source,
                           dist::Comm& comm,
                           dist::UnitPrecision precision,
                           bool trainable,
                           bool recompute)
    : cfg_(std::move(cfg)),
      compute_dtype_(precision.compute),
      trainable_(trainable),
      recompute_(recompute),
      comm_(comm),
      precision_(precision) {
  const bool tied = cfg_.tie_word_embeddings;
  // --- embedding unit (with the final norm when the lm_head is the embedding) ---
  std::vector<std::string> embed_names{"model.embed_tokens.weight"};
  if (tied) {
    embed_names.emplace_back("model.norm.weight");
  }
  units_.push_back(make_unit("embed", embed_names, source, comm, precision, trainable));
  embed_ = units_.back().get();
  // --- one unit per block ---
  for (int i = 0; i < cfg_.num_hidden_layers; ++i) {
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    std::vector<std::string> names;
    names.reserve(kBlockTensors.size());
    for (const auto& t : kBlockTensors) {
      names.push_back(prefix + t);
    }
    units_.push_back(
        make_unit("layer" + std::to_string(i), names, source, comm, precision, trainable));
    blocks_.push_back(units_.back().get());
  }
  // --- final norm + lm_head ---
  if (tied) {
    head_ = embed_;
  } else {
    units_.push_back(make_unit(
        "head", {"model.norm.weight", "lm_head.weight"}, source, comm, precision, trainable));
    head_ = units_.back().get();
  }
}

std::unique_ptr<ShardedLlama> ShardedLlama::frozen_copy() const {
  // Built with zero values (one unit of zeros at a time), then the shards are copied.
  auto copy = std::make_unique<ShardedLlama>(
      cfg_,
      [this](const std::string& name) {
        for (const auto& unit : units_) {
          for (const auto& spec : unit->specs()) {
            if (spec.name == name) {
              return at::zeros(spec.shape, at::TensorOptions().device(precision_.device));
            }
          }
        }
        DNPO_CHECK(false, "no parameter '{}'", name);
        return at::Tensor();
      },
      comm_,
      precision_,
      false,
      recompute_);
  copy->prefetch_ = prefetch_;
  copy->keep_gathered_ = keep_gathered_;
  for (std::size_t i = 0; i < units_.size(); ++i) {
    copy->units_[i]->load_shard_of(*units_[i]);
  }
  return copy;
}

std::int64_t ShardedLlama::num_parameters() const {
  std::int64_t n = 0;
  for (const auto& unit : units_) {
    n += unit->numel();
  }
  return n;
}

ShardedLlama::Output ShardedLlama::forward(const at::Tensor& input_ids,
                                           const at::Tensor& attention_mask,
                                           std::optional<bool> right_padded) {
  DNPO_CHECK(input_ids.dim() == 2 && attention_mask.sizes() == input_ids.sizes(),
             "forward: input_ids and attention_mask must both be (B,T); got {} and {}",
             input_ids.sizes(),
             attention_mask.sizes());
  if (!keep_gathered_) {
    release();
  }
  const bool recompute = recompute_ && !keep_gathered_;
  auto* first_block = !prefetch_ ? nullptr : blocks_.empty() ? head_ : blocks_.front();
  // On a GPU index_select, not embedding: its backward is an index_add, where CUDA's embedding
  // backward reads a segment count to the host once it sees more than 3072 tokens. On the CPU
  // embedding, whose gradient sums in its own order (results stay as they were).
  const auto embed_fn = [](const std::vector<at::Tensor>& p, const std::vector<at::Tensor>& in) {
    const auto& ids = in[0];
    if (!p[0].is_cuda()) {
      return std::vector<at::Tensor>{at::embedding(p[0], ids)};
    }
    return std::vector<at::Tensor>{
        p[0].index_select(0, ids.reshape({-1})).view({ids.size(0), ids.size(1), p[0].size(1)})};
  };
  auto x = dist::apply_unit(*embed_, embed_fn, {input_ids}, {first_block, nullptr}, recompute)[0];

  const auto ctx =
      model::make_attention_context(cfg_, attention_mask, 0, compute_dtype_, right_padded);
  const auto cfg = cfg_;
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    const auto block_fn = [cfg, causal_only = ctx.causal_only, sequences = ctx.sequences](
                              const std::vector<at::Tensor>& p, const std::vector<at::Tensor>& in) {
      const model::BlockWeights w{p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], {}, {}};
      const model::AttentionContext c{in[1], in[2], in[3], causal_only, sequences};
      return std::vector<at::Tensor>{model::block_forward(cfg, w, in[0], c, nullptr, 0)};
    };
    dist::Prefetch next{i + 1 < blocks_.size() ? blocks_[i + 1] : head_,
                        i > 0 ? blocks_[i - 1] : embed_};
    if (!prefetch_) {
      next = {};
    }
    x = dist::apply_unit(
        *blocks_[i], block_fn, {x, ctx.cos, ctx.sin, ctx.bias}, next, recompute)[0];
  }
  // The head stays gathered through the loss; in backward it hands over to the last block and,
  // once its gradients are in, drops its buffer (a tied embedding is gathered again for its
  // own backward) unless units are kept gathered for the step.
  const auto head = dist::gather_params(
      *head_, blocks_.empty() || !prefetch_ ? nullptr : blocks_.back(), !keep_gathered_);
  const bool tied = head_ == embed_;
  Output out{model::rms_norm(x, tied ? head[1] : head[0], cfg_.rms_norm_eps),
             tied ? head[0] : head[1]};
  if (!trainable_ && !keep_gathered_) {
    release();
  }
  return out;
}

ShardedLlama::Output ShardedLlama::forward_cached(const at::Tensor& input_ids,
                                                  const at::Tensor& attention_mask,
                                                  model::KVCache* cache) {
  const at::NoGradGuard no_grad;
  const std::int64_t past = cache != nullptr ? cache->length : 0;
  const auto prefetch = [this](dist::ShardedUnit* unit) {
    if (prefetch_ && unit != nullptr) {
      unit->prefetch();
    }
  };
  const bool tied = head_ == embed_;
  auto embed = embed_->gathered();
  prefetch(blocks_.empty() ? head_ : blocks_.front());
  auto x = at::embedding(embed[0], input_ids);
  embed.clear();
  if (!tied) {
    embed_->release();
  }
  const auto ctx = model::make_attention_context(cfg_, attention_mask, past, compute_dtype_);
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    auto p = blocks_[i]->gathered();
    prefetch(i + 1 < blocks_.size() ? blocks_[i + 1] : head_);
    const model::BlockWeights w{p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], {}, {}};
    x = model::block_forward(cfg_, w, x, ctx, cache, i);
    blocks_[i]->release();
  }
  if (cache != nullptr) {
    cache->length += input_ids.size(1);
  }
  const auto head = head_->gathered();
  return {model::rms_norm(x, tied ? head[1] : head[0], cfg_.rms_norm_eps),
          tied ? head[0] : head[1]};
}

model::KVCache ShardedLlama::make_cache(std::int64_t batch, std::int64_t capacity) const {
  model::KVCache cache;
  cache.capacity = capacity;
  const auto head_dim = cfg_.hidden_size / cfg_.num_attention_heads;
  const auto options = at::TensorOptions().dtype(compute_dtype_).device(precision_.device);
  for (int i = 0; i < cfg_.num_hidden_layers; ++i) {
    cache.keys.push_back(at::zeros({batch, cfg_.num_key_value_heads, capacity, head_dim}, options));
    cache.values.push_back(
        at::zeros({batch, cfg_.num_key_value_heads, capacity, head_dim}, options));
  }
  return cache;
}

at::Tensor ShardedDecoder::forward_hidden(const at::Tensor& input_ids,
                                          const at::Tensor& attention_mask,
                                          model::KVCache* cache) {
  auto out = model_.forward_cached(input_ids, attention_mask, cache);
  lm_head_ = out.lm_head;
  return out.hidden;
}

at::Tensor ShardedDecoder::logits(const at::Tensor& hidden) {
  DNPO_CHECK(lm_head_.defined(), "ShardedDecoder: logits() before forward_hidden()");
  const at::NoGradGuard no_grad;
  auto out = at::linear(hidden, lm_head_);
  lm_head_ = at::Tensor();
  model_.release();
  return out;
}

void ShardedLlama::set_keep_gathered(bool keep) {
  keep_gathered_ = keep;
  for (auto& unit : units_) {
    unit->set_defer_reduction(keep);
  }
}

void ShardedLlama::flush_grads() {
  for (auto& unit : units_) {
    unit->flush_grads();
  }
}

void ShardedLlama::release() {
  for (auto& unit : units_) {
    unit->release();
  }
}

void ShardedLlama::end_micro_batch() {
  if (!keep_gathered_) {
    release();
  }
}

void ShardedLlama::end_step() {
  if (trainable_) {
    flush_grads();
    release();
  } else if (!keep_gathered_) {
    release();
  }
}

std::vector<dist::ShardedUnit*> ShardedLlama::units() {
  std::vector<dist::ShardedUnit*> out;
  out.reserve(units_.size());
  for (auto& unit : units_) {
    out.push_back(unit.get());
  }
  return out;
}

std::vector<at::Tensor> ShardedLlama::shards() const {
  std::vector<at::Tensor> out;
  out.reserve(units_.size());
  for (const auto& unit : units_) {
    out.push_back(unit->shard());
  }
  return out;
}

void ShardedLlama::load_hf(const model::HfTensorReader& reader) {
  at::NoGradGuard no_grad;
  for (auto& unit : units_) {
    const auto shard = unit->shard().detach();
    for (const auto& piece : unit->shard_pieces()) {
      const auto& spec = unit->specs()[piece.spec];
      DNPO_CHECK_WITH(DataError,
                      reader.shape(spec.name) == spec.shape,
                      "{}: tensor '{}' has shape {}; the model config needs {}",
                      reader.dir(),
                      spec.name,
                      at::IntArrayRef(reader.shape(spec.name)),
                      at::IntArrayRef(spec.shape));
      if (piece.numel > 0) {
        shard.narrow(0, piece.shard_offset, piece.numel)
            .copy_(reader.read(spec.name, piece.tensor_offset, piece.numel));
      }
    }
  }
}

model::NamedTensors ShardedLlama::gather_parameters(bool keep) {
  model::NamedTensors out;
  at::NoGradGuard no_grad;
  for (auto& unit : units_) {
    auto full = unit->gather_full();
    if (!keep) {
      continue;
    }
    for (std::size_t i = 0; i < full.size(); ++i) {
      out.emplace_back(unit->specs()[i].name, std::move(full[i]));
    }
  }
  // HF order (embed, layers, norm, lm_head), whatever the units' grouping
  std::map<std::string, at::Tensor> by_name(out.begin(), out.end());
  model::NamedTensors ordered;
  for (const auto& name : model::parameter_names(cfg_)) {
    if (const auto it = by_name.find(name); it != by_name.end()) {
      ordered.emplace_back(name, it->second);
    }
  }
  return ordered;
}

void ShardedLlama::copy_to(model::LlamaModel& model) {
  std::map<std::string, at::Tensor> by_name(model.named_parameters().begin(),
                                            model.named_parameters().end());
  at::NoGradGuard no_grad;
  for (auto& unit : units_) {
    const auto full = unit->gather_full();
    for (std::size_t i = 0; i < full.size(); ++i) {
      by_name.at(unit->specs()[i].name).copy_(full[i]);
    }
  }
}

ShardedNoiseHead::ShardedNoiseHead(const config::NpoConfig& npo,
                                   std::int64_t hidden,
                                   std::int64_t vocab,
                                   std::uint64_t seed,
                                   dist::Comm& comm,
                                   dist::UnitPrecision precision)
    : ShardedNoiseHead(model::NoiseHead(npo, hidden, vocab, seed), comm, precision) {}

ShardedNoiseHead::ShardedNoiseHead(const model::NoiseHead& head,
                                   dist::Comm& comm,
                                   dist::UnitPrecision precision) {
  std::vector<dist::TensorSpec> specs;
  std::vector<at::Tensor> values;
  for (const auto& [name, tensor] : head.named_parameters()) {
    specs.push_back(spec_of(name, tensor));
    values.push_back(tensor.detach());
  }
  // Gathered in the policy's compute dtype (a bf16 d × V product: half the bytes, tensor cores);
  // NoiseHead::sigma_of exponentiates in fp32, so s and the noisy log-softmax are fp32.
  unit_ =
      std::make_unique<dist::ShardedUnit>("noise_head", std::move(specs), comm, precision, true);
  unit_->load_full(values);
}

std::vector<at::Tensor> ShardedNoiseHead::parameters() {
  return dist::gather_params(*unit_, nullptr, !keep_gathered_);
}

void ShardedNoiseHead::end_micro_batch() {
  if (!keep_gathered_) {
    release();
  }
}

void ShardedNoiseHead::end_step() {
  flush_grads();
  release();
}

void ShardedNoiseHead::set_keep_gathered(bool keep) {
  keep_gathered_ = keep;
  unit_->set_defer_reduction(keep);
}

void ShardedNoiseHead::copy_to(model::NoiseHead& head) {
  const auto full = unit_->gather_full();
  at::NoGradGuard no_grad;
  for (std::size_t i = 0; i < full.size(); ++i) {
    head.named_parameters()[i].second.copy_(full[i]);
  }
}

}  // namespace dnpo::train
