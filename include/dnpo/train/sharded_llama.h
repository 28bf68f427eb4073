// The decoder as FSDP units: one unit per transformer block, an embedding unit and a
// final-norm/lm_head unit; a tied embedding and lm_head share the embedding unit (which then also
// holds the final norm). The same forward as model::LlamaModel, computed unit by unit with the
// gather of the next unit prefetched; see dist/sharded_unit.h for the mechanics.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dnpo/dist/sharded_unit.h"
#include "dnpo/model/hf_io.h"
#include "dnpo/model/llama.h"
#include "dnpo/model/noise_head.h"
#include "dnpo/model/sampler.h"

namespace dnpo::train {

/// A sharded model as the stage loop sees it: told where micro-batches and steps end, it decides
/// what to release and when to reduce its gradients (no loop calls release() or flush_grads()).
class ShardedModule {
 public:
  virtual ~ShardedModule() = default;
  /// After a micro-batch's backward: units not kept gathered are released.
  virtual void end_micro_batch() = 0;
  /// collective: after the step's last backward, before clipping. A trained model reduces the
  /// gradients it deferred and releases everything (kept units are stale once the optimizer
  /// steps); a frozen one kept gathered stays gathered for the whole stage.
  virtual void end_step() = 0;
};

/// The full value of a parameter by HF name; asked for one unit at a time, so a rank holds at
/// most one unit's full tensors while the model is built (random init, or slices of a file).
using TensorSource = std::function<at::Tensor(const std::string& name)>;

class ShardedLlama : public ShardedModule {
 public:
  ShardedLlama(config::ModelConfig cfg,
               const TensorSource& source,
               dist::Comm& comm,
               dist::UnitPrecision precision,
               bool trainable,
               bool recompute);
  /// Shards the parameters of `model` (every rank passes the same values). trainable = false gives
  /// a frozen copy (params only, no gradients). recompute: each block unit is released after
  /// forward and recomputed in backward (FSDP); false keeps units and activations through backward
  /// (for one process, where it saves the recompute).
  ShardedLlama(const model::LlamaModel& model,
               dist::Comm& comm,
               dist::UnitPrecision precision,
               bool trainable,
               bool recompute);

  /// Fills this rank's shards from an HF directory, reading only this rank's piece of each tensor
  /// (no rank reads or holds the whole model). Throws DataError naming the directory and tensor
  /// on a missing tensor or another shape.
  void load_hf(const model::HfTensorReader& reader);
  /// collective: the full parameters under their HF names, unit by unit; kept only where
  /// `keep` (e.g. on the rank that writes them), dropped elsewhere after each unit.
  model::NamedTensors gather_parameters(bool keep);

  /// The same parameters as a frozen model (params only), copied shard by shard.
  std::unique_ptr<ShardedLlama> frozen_copy() const;

  const config::ModelConfig& config() const {
    return cfg_;
  }
  /// Parameters in all units (unpadded).
  std::int64_t num_parameters() const;

  /// The final hidden state (B,T,C) after the last norm, as LlamaModel::forward_hidden, and the
  /// gathered lm_head (V,C) in the compute dtype, differentiable. The policy keeps no reference
  /// to the lm_head: its buffer goes once the caller's graph is done with it.
  struct Output {
    at::Tensor hidden;
    at::Tensor lm_head;
  };
  /// right_padded: model::is_right_padded of the mask's host copy, if the caller has one (saves
  /// a host sync on a GPU; fused attention then runs its causal kernel without a mask).
  Output forward(const at::Tensor& input_ids,
                 const at::Tensor& attention_mask,
                 std::optional<bool> right_padded = std::nullopt);
  /// Drops every gathered buffer. A frozen model not kept gathered does this at the end of each
  /// forward itself: it has no backward to wait for (the returned tensors keep what they use).
  void release();
  void end_micro_batch() override;
  void end_step() override;
  /// collective: with units kept gathered, reduce-scatters the gradients the step's micro-batches
  /// summed locally (one reduction per unit per step); call after the last backward.
  void flush_grads();
  /// collective, no gradients: the forward over a KV cache, for generation. Each unit is
  /// gathered as it computes (the next one prefetched) and released after, so a rank holds at
  /// most two blocks; the head unit stays gathered (Output::lm_head) until release().
  Output forward_cached(const at::Tensor& input_ids,
                        const at::Tensor& attention_mask,
                        model::KVCache* cache);
  /// An empty KV cache for forward_cached, in the compute dtype.
  model::KVCache make_cache(std::int64_t batch, std::int64_t capacity) const;
  /// Whether the next unit's all-gather starts while the current one computes (default on).
  void set_prefetch(bool on) {
    prefetch_ = on;
  }
  /// keep = true (dist.reshard_after_forward = false): units gathered by forward stay gathered,
  /// with their activations, until release(), so later micro-batches of the step reuse them and
  /// backward neither gathers again nor recomputes; trainable units also sum their gradients
  /// locally until flush_grads(). false (default): as constructed.
  void set_keep_gathered(bool keep);
  bool keep_gathered() const {
    return keep_gathered_;
  }

  /// The units (embedding first, blocks, then the head unit when untied).
  std::vector<dist::ShardedUnit*> units();
  /// The fp32 shards the optimizer steps.
  std::vector<at::Tensor> shards() const;
  /// collective: writes the full parameters back into a model of the same config.
  void copy_to(model::LlamaModel& model);

 private:
  config::ModelConfig cfg_;
  at::ScalarType compute_dtype_;
  bool trainable_;
  bool recompute_;  // as constructed; keep_gathered_ overrides it
  bool prefetch_ = true;
  bool keep_gathered_ = false;
  std::vector<std::unique_ptr<dist::ShardedUnit>> units_;
  dist::Comm& comm_;
  dist::UnitPrecision precision_;
  dist::ShardedUnit* embed_ = nullptr;
  std::vector<dist::ShardedUnit*> blocks_;
  dist::ShardedUnit* head_ = nullptr;  // == embed_ when tied
};

/// The sharded policy as a model::Decoder: generation with the layers gathered one at a time.
/// Every rank must decode in lockstep (model::generate with fixed_steps, the same number of
/// batches), since every forward is collective.
class ShardedDecoder : public model::Decoder {
 public:
  explicit ShardedDecoder(ShardedLlama& model) : model_(model) {}
  model::KVCache make_cache(std::int64_t batch, std::int64_t capacity) override {
    return model_.make_cache(batch, capacity);
  }
  at::Tensor forward_hidden(const at::Tensor& input_ids,
                            const at::Tensor& attention_mask,
                            model::KVCache* cache) override;
  /// Logits from the head gathered by the last forward; releases it.
  at::Tensor logits(const at::Tensor& hidden) override;
  at::Device device() const override {
    return at::kCPU;
  }

 private:
  ShardedLlama& model_;
  at::Tensor lm_head_;
};

/// The noise head as one unit (d × V, like the lm_head) over fp32 masters, gathered like the
/// policy (precision: the policy's compute dtype and device); σ itself is made in fp32.
class ShardedNoiseHead : public ShardedModule {
 public:
  ShardedNoiseHead(const model::NoiseHead& head,
                   dist::Comm& comm,
                   dist::UnitPrecision precision = {});
  /// A fresh head, NoiseHead(npo, hidden, vocab, seed), sharded.
  ShardedNoiseHead(const config::NpoConfig& npo,
                   std::int64_t hidden,
                   std::int64_t vocab,
                   std::uint64_t seed,
                   dist::Comm& comm,
                   dist::UnitPrecision precision = {});
  /// The head's parameters gathered and differentiable (NoiseHead::named_parameters order).
  std::vector<at::Tensor> parameters();
  void release() {
    unit_->release();
  }
  void end_micro_batch() override;
  void end_step() override;
  /// As ShardedLlama::set_keep_gathered: gathered once per step, gradients summed locally and
  /// reduce-scattered by flush_grads().
  void set_keep_gathered(bool keep);
  bool keep_gathered() const {
    return keep_gathered_;
  }
  /// collective when kept gathered: see dist::ShardedUnit::flush_grads.
  void flush_grads() {
    unit_->flush_grads();
  }
  dist::ShardedUnit* unit() {
    return unit_.get();
  }
  const dist::ShardedUnit* unit() const {
    return unit_.get();
  }
  /// collective: writes the full parameters back into `head`.
  void copy_to(model::NoiseHead& head);

 private:
  std::unique_ptr<dist::ShardedUnit> unit_;
  bool keep_gathered_ = false;
};

}  // namespace dnpo::train
