// The tiny decoder unit tests share: vocab 50, hidden 32, 2 layers, 4 heads, init std 0.2 so
// logits are O(1). Test-only.
#pragma once

#include "dnpo/config/config.h"

namespace dnpo::test {

inline config::ModelConfig tiny_model_config(bool tied = false, int kv_heads = 2) {
  config::ModelConfig cfg;
  cfg.vocab_size = 50;
  cfg.hidden_size = 32;
  cfg.intermediate_size = 64;
  cfg.num_hidden_layers = 2;
  cfg.num_attention_heads = 4;
  cfg.num_key_value_heads = kv_heads;
  cfg.max_position_embeddings = 64;
  cfg.tie_word_embeddings = tied;
  cfg.initializer_range = 0.2;
  return cfg;
}

}  // namespace dnpo::test
