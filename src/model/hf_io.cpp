// HF config.json and model.safetensors read/write for LlamaModel.
#include "dnpo/model/hf_io.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

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
    DNPO_CHECK_WITH(DataError, !required, "{}: missing field '{}'", path, key);
    return;
  }
  try {
    out = j.at(key).get<T>();
  } catch (const nlohmann::json::exception& e) {
    DNPO_FAIL(DataError, "{}: field '{}' has the wrong type: {}", path, key, e.what());
  }
}

}  // namespace

config::ModelConfig read_hf_config(const std::string& dir, const config::ModelConfig& base) {
  const std::string path = dir + "/config.json";
  std::ifstream in(path);
  DNPO_CHECK_WITH(DataError, in.good(), "cannot open HF config '{}'", path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    DNPO_FAIL(DataError, "{}: not valid JSON: {}", path, e.what());
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
                    "{}: hidden_act '{}' is not supported; expected 'silu'",
                    path,
                    act);
  }
  return cfg;
}

void write_hf_config(const std::string& dir,
                     const config::ModelConfig& cfg,
                     const std::string& torch_dtype) {
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
                      {"torch_dtype", torch_dtype}};
  std::ofstream out(dir + "/config.json");
  DNPO_CHECK_WITH(DataError, out.good(), "cannot write '{}/config.json'", dir);
  out << j.dump(2) << "\n";
}

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";

// Weight files of an earlier export (single or sharded) and its index.
void remove_old_weights(const std::filesystem::path& dir) {
  if (!std::filesystem::exists(dir)) {
    return;
  }
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const auto name = entry.path().filename().string();
    const bool weights = name.rfind("model", 0) == 0 &&
                         (name.size() > 12 && name.substr(name.size() - 12) == ".safetensors");
    if (weights || name == kIndexName) {
      std::filesystem::remove(entry.path());
    }
  }
}

std::string shard_file_name(std::size_t index, std::size_t count) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return buf;
}

// The weight files of an HF directory: model.safetensors, or the shards its index names (each
// checked to exist), in first-mention order, with the index's tensor → file map.
struct WeightFiles {
  std::vector<std::string> files;
  std::map<std::string, std::string> file_of;  // empty without an index
  std::string index_path;                      // "" without an index
};

WeightFiles weight_files(const std::string& dir) {
  WeightFiles out;
  const std::string index_path = dir + "/" + kIndexName;
  if (!std::filesystem::exists(index_path)) {
    out.files = {"model.safetensors"};
    return out;
  }
  out.index_path = index_path;
  try {
    std::ifstream in(index_path);
    const auto index = nlohmann::json::parse(in);
    DNPO_CHECK_WITH(DataError,
                    index.contains("weight_map") && index["weight_map"].is_object(),
                    "{}: no \"weight_map\" object",
                    index_path);
    for (const auto& [name, file] : index["weight_map"].items()) {
      const auto f = file.get<std::string>();
      out.file_of[name] = f;
      if (std::find(out.files.begin(), out.files.end(), f) == out.files.end()) {
        out.files.push_back(f);
      }
    }
  } catch (const nlohmann::json::exception& e) {
    DNPO_FAIL(DataError, "{}: not a valid index: {}", index_path, e.what());
  }
  for (const auto& file : out.files) {
    DNPO_CHECK_WITH(DataError,
                    std::filesystem::exists(dir + "/" + file),
                    "{} names shard '{}', which does not exist",
                    index_path,
                    file);
  }
  return out;
}

// Every tensor the index maps must be in the files read.
void check_index_complete(const WeightFiles& weights, const std::set<std::string>& found) {
  for (const auto& [name, file] : weights.file_of) {
    DNPO_CHECK_WITH(DataError,
                    found.count(name) == 1,
                    "{}: tensor '{}' should be in {} but is not",
                    weights.index_path,
                    name,
                    file);
  }
}

}  // namespace

void save_hf_tensors(const std::string& dir,
                     const config::ModelConfig& cfg,
                     const NamedTensors& tensors,
                     const HfWriteOptions& options) {
  write_hf_config(dir, cfg, options.bf16 ? "bfloat16" : "float32");
  NamedTensors converted;
  std::int64_t total = 0;
  for (const auto& [name, tensor] : tensors) {
    auto t = tensor.detach().to(at::kCPU, options.bf16 ? at::kBFloat16 : at::kFloat).contiguous();
    total += static_cast<std::int64_t>(t.nbytes());
    converted.emplace_back(name, std::move(t));
  }
  // Greedy split in parameter order (HF's way): a shard closes before it would pass the limit.
  std::vector<NamedTensors> shards(1);
  std::int64_t in_shard = 0;
  for (auto& named : converted) {
    const auto bytes = static_cast<std::int64_t>(named.second.nbytes());
    if (!shards.back().empty() && in_shard + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    in_shard += bytes;
    shards.back().push_back(std::move(named));
  }
  remove_old_weights(dir);
  const std::map<std::string, std::string> metadata{{"format", "pt"}};
  if (shards.size() == 1) {
    write_safetensors(dir + "/model.safetensors", shards[0], metadata);
    return;
  }
  nlohmann::json weight_map = nlohmann::json::object();
  for (std::size_t i = 0; i < shards.size(); ++i) {
    const auto file = shard_file_name(i, shards.size());
    write_safetensors(dir + "/" + file, shards[i], metadata);
    for (const auto& [name, tensor] : shards[i]) {
      weight_map[name] = file;
    }
  }
  const nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  const std::string path = dir + "/" + kIndexName;
  std::ofstream out(path + ".tmp");
  out << index.dump(2) << "\n";
  out.close();
  DNPO_CHECK_WITH(DataError, out.good(), "cannot write '{}'", path);
  std::filesystem::rename(path + ".tmp", path);  // the index last: it names complete shards
}

NamedTensors read_hf_tensors(const std::string& dir) {
  const auto weights = weight_files(dir);
  std::set<std::string> found;
  NamedTensors out;
  for (const auto& file : weights.files) {
    for (auto& named : read_safetensors(dir + "/" + file)) {
      found.insert(named.first);
      out.push_back(std::move(named));
    }
  }
  check_index_complete(weights, found);
  return out;
}

HfTensorReader::HfTensorReader(std::string dir) : dir_(std::move(dir)) {
  const auto weights = weight_files(dir_);
  std::set<std::string> found;
  for (const auto& file : weights.files) {
    const auto path = dir_ + "/" + file;
    for (auto& entry : read_safetensors_header(path)) {
      found.insert(entry.name);
      auto name = entry.name;
      entries_[name] = {path, std::move(entry)};
    }
  }
  check_index_complete(weights, found);
}

const HfTensorReader::Located& HfTensorReader::at(const std::string& name) const {
  const auto it = entries_.find(name);
  DNPO_CHECK_WITH(DataError, it != entries_.end(), "{}: no tensor '{}'", dir_, name);
  return it->second;
}

const std::vector<std::int64_t>& HfTensorReader::shape(const std::string& name) const {
  return at(name).entry.shape;
}

at::Tensor HfTensorReader::read(const std::string& name,
                                std::int64_t offset,
                                std::int64_t numel) const {
  const auto& located = at(name);
  return read_safetensors_range(located.path, located.entry, offset, numel).to(at::kFloat);
}

LlamaModel load_hf_model(const std::string& dir, const config::ModelConfig& base) {
  const auto cfg = read_hf_config(dir, base);
  return {cfg, read_hf_tensors(dir)};
}

void save_hf_model(const std::string& dir, const LlamaModel& model, bool bf16) {
  HfWriteOptions options;
  options.bf16 = bf16;
  save_hf_tensors(dir, model.config(), model.named_parameters(), options);
}

}  // namespace dnpo::model
