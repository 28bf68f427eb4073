// HF config.json and model.safetensors read/write for LlamaModel.
#include "dnpo/model/hf_io.h"

#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "dnpo/common/error.h"
#include "dnpo/model/safetensors.h"

namespace dnpo::model {
namespace {

template <typename T>
void read_field(
    const nlohmann::json& j, const std::string& path, const char* key, T& out, bool required) {
  if (!j.contains(key)) {
    DNPO_CHECK_WITH(DataError, !required, path, ": missing field '", key, "'");
    return;
  }
  try {
    out = j.at(key).get<T>();
  } catch (const nlohmann::json::exception& e) {
    DNPO_FAIL(DataError, path, ": field '", key, "' has the wrong type: ", e.what());
  }
}

}  // namespace

config::ModelConfig read_hf_config(const std::string& dir, const config::ModelConfig& base) {
  const std::string path = dir + "/config.json";
  std::ifstream in(path);
  DNPO_CHECK_WITH(DataError, in.good(), "cannot open HF config '", path, "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    DNPO_FAIL(DataError, path, ": not valid JSON: ", e.what());
  }
  config::ModelConfig cfg = base;
  read_field(j, path, "vocab_size", cfg.vocab_size, true);
  read_field(j, path, "hidden_size", cfg.hidden_size, true);
  read_field(j, path, "intermediate_size", cfg.intermediate_size, true);
  read_field(j, path, "num_hidden_layers", cfg.num_hidden_layers, true);
  read_field(j, path, "num_attention_heads", cfg.num_attention_heads, true);
  cfg.num_key_value_heads = cfg.num_attention_heads;  // HF default when absent
  read_field(j, path, "num_key_value_heads", cfg.num_key_value_heads, false);
  read_field(j, path, "rms_norm_eps", cfg.rms_norm_eps, false);
  read_field(j, path, "rope_theta", cfg.rope_theta, false);
  read_field(j, path, "max_position_embeddings", cfg.max_position_embeddings, false);
  cfg.tie_word_embeddings = false;  // HF's LlamaConfig default
  read_field(j, path, "tie_word_embeddings", cfg.tie_word_embeddings, false);
  read_field(j, path, "initializer_range", cfg.initializer_range, false);
  if (j.contains("hidden_act")) {
    const auto act = j.at("hidden_act").get<std::string>();
    DNPO_CHECK_WITH(DataError,
                    act == "silu",
                    path,
                    ": hidden_act '",
                    act,
                    "' is not supported; expected 'silu'");
  }
  return cfg;
}

void write_hf_config(const std::string& dir, const config::ModelConfig& cfg) {
  std::filesystem::create_directories(dir);
  nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}},
                      {"model_type", "llama"},
                      {"hidden_act", "silu"},
                      {"vocab_size", cfg.vocab_size},
                      {"hidden_size", cfg.hidden_size},
                      {"intermediate_size", cfg.intermediate_size},
                      {"num_hidden_layers", cfg.num_hidden_layers},
                      {"num_attention_heads", cfg.num_attention_heads},
                      {"num_key_value_heads", cfg.num_key_value_heads},
                      {"rms_norm_eps", cfg.rms_norm_eps},
                      {"rope_theta", cfg.rope_theta},
                      {"max_position_embeddings", cfg.max_position_embeddings},
                      {"tie_word_embeddings", cfg.tie_word_embeddings},
                      {"initializer_range", cfg.initializer_range},
                      {"torch_dtype", "float32"}};
  std::ofstream out(dir + "/config.json");
  DNPO_CHECK_WITH(DataError, out.good(), "cannot write '", dir, "/config.json'");
  out << j.dump(2) << "\n";
}

LlamaModel load_hf_model(const std::string& dir, const config::ModelConfig& base) {
  const auto cfg = read_hf_config(dir, base);
  return {cfg, read_safetensors(dir + "/model.safetensors")};
}

void save_hf_model(const std::string& dir, const LlamaModel& model, bool bf16) {
  write_hf_config(dir, model.config());
  NamedTensors tensors;
  for (const auto& [name, tensor] : model.named_parameters()) {
    tensors.emplace_back(name, bf16 ? tensor.detach().to(at::kBFloat16) : tensor.detach());
  }
  write_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
}

}  // namespace dnpo::model
