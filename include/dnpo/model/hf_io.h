// HF model directories: config.json + model.safetensors, or, when large, model-0000i-of-0000n
// .safetensors + model.safetensors.index.json (HF's sharded layout, which transformers and vLLM
// read); tokenizer.model is copied by callers.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "dnpo/config/config.h"
#include "dnpo/model/llama.h"
#include "dnpo/model/safetensors.h"

namespace dnpo::model {

/// Reads HF config.json fields into a ModelConfig (other ModelConfig fields keep `base`'s values).
config::ModelConfig read_hf_config(const std::string& dir, const config::ModelConfig& base = {});
void write_hf_config(const std::string& dir,
                     const config::ModelConfig& cfg,
                     const std::string& torch_dtype = "float32");

struct HfWriteOptions {
  bool bf16 = false;                             ///< else fp32
  std::int64_t max_shard_bytes = 5'000'000'000;  ///< HF's default max_shard_size ("5GB")
};
/// Writes config.json and the tensors (HF names), in one file or in shards with an index when
/// larger than max_shard_bytes; removes the weight files of an earlier export in dir.
void save_hf_tensors(const std::string& dir,
                     const config::ModelConfig& cfg,
                     const NamedTensors& tensors,
                     const HfWriteOptions& options = {});
/// The tensors of an HF directory, sharded (the index) or not; throws DataError naming the file
/// on a missing shard or a tensor the index names but no shard holds.
NamedTensors read_hf_tensors(const std::string& dir);
/// Reads pieces of an HF directory's tensors (sharded or not) without loading whole files:
/// only the headers on construction, then just the bytes asked for.
class HfTensorReader {
 public:
  explicit HfTensorReader(std::string dir);
  const std::string& dir() const {
    return dir_;
  }
  bool contains(const std::string& name) const {
    return entries_.count(name) == 1;
  }
  /// The stored shape; throws DataError naming the directory when the tensor is absent.
  const std::vector<std::int64_t>& shape(const std::string& name) const;
  /// Elements [offset, offset + numel) of the tensor's flattening, as fp32.
  at::Tensor read(const std::string& name, std::int64_t offset, std::int64_t numel) const;

 private:
  struct Located {
    std::string path;
    SafetensorsEntry entry;
  };
  const Located& at(const std::string& name) const;
  std::string dir_;
  std::map<std::string, Located> entries_;
};

/// Loads dir/config.json and the weights.
LlamaModel load_hf_model(const std::string& dir, const config::ModelConfig& base = {});
/// save_hf_tensors of a model's parameters (fp32 or bf16), creating dir.
void save_hf_model(const std::string& dir, const LlamaModel& model, bool bf16 = false);

}  // namespace dnpo::model
