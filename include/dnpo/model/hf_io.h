// HF model directories: config.json + model.safetensors (+ tokenizer.model, copied by callers).
// The checkpoint issue adds sharded safetensors with an index; this reads and writes one file.
#pragma once

#include <string>

#include "dnpo/config/config.h"
#include "dnpo/model/llama.h"

namespace dnpo::model {

/// Reads HF config.json fields into a ModelConfig (other ModelConfig fields keep `base`'s values).
config::ModelConfig read_hf_config(const std::string& dir, const config::ModelConfig& base = {});
void write_hf_config(const std::string& dir, const config::ModelConfig& cfg);

/// Loads dir/config.json and dir/model.safetensors.
LlamaModel load_hf_model(const std::string& dir, const config::ModelConfig& base = {});
/// Writes config.json and model.safetensors (fp32 or bf16), creating dir.
void save_hf_model(const std::string& dir, const LlamaModel& model, bool bf16 = false);

}  // namespace dnpo::model
