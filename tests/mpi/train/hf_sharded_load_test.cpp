// An HF directory (sharded, with its index) loaded straight into FSDP units: each rank reads only
// its pieces, and the gathered parameters equal the file's tensors bit for bit at any world size.
// A tensor of another shape is refused naming the directory and the tensor.
#include <filesystem>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dnpo/common/error.h"
#include "dnpo/dist/comm.h"
#include "dnpo/model/hf_io.h"
#include "dnpo/model/llama.h"
#include "dnpo/train/sharded_llama.h"
#include "expect_error.h"
#include "mpi_test_main.h"
#include "one_process.h"
#include "tiny_model.h"

namespace dnpo::train {
namespace {

namespace fs = std::filesystem;

// np 1 runs the one-process Comm.
dist::Comm& comm() {
  if (test::mpi().world_size() == 1) {
    return test::one_process();
  }
  static dist::Comm instance(test::mpi(), config::DistConfig{});
  return instance;
}

// Rank 0 writes the directory; everyone waits for it.
std::string written_model(const std::string& name, const model::LlamaModel& model) {
  // one directory per world size: the np tests may run at the same time
  auto dir = (fs::temp_directory_path() /
              ("dnpo_hf_load_" + name + "_np" + std::to_string(test::mpi().world_size())))
                 .string();
  if (test::mpi().rank() == 0) {
    fs::remove_all(dir);
    model::HfWriteOptions options;
    options.max_shard_bytes = 30000;  // several shards: pieces come from different files
    model::save_hf_tensors(dir, model.config(), model.named_parameters(), options);
  }
  comm().barrier().wait();
  return dir;
}

std::unique_ptr<ShardedLlama> empty_units(const config::ModelConfig& cfg) {
  return std::make_unique<ShardedLlama>(
      cfg,
      [&](const std::string& name) { return at::zeros(model::parameter_shape(cfg, name)); },
      comm(),
      dist::UnitPrecision{},
      true,
      true);
}

TEST(HfShardedLoad, GatheredUnitsEqualTheFileAtAnyWorldSize) {
  for (const bool tied : {false, true}) {
    const model::LlamaModel model(test::tiny_model_config(tied), tied ? 21 : 22);
    const auto dir = written_model(tied ? "tied" : "untied", model);
    ASSERT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));
    auto units = empty_units(model.config());
    units->load_hf(model::HfTensorReader(dir));
    const auto gathered = units->gather_parameters(true);
    ASSERT_EQ(gathered.size(), model.named_parameters().size());
    for (std::size_t i = 0; i < gathered.size(); ++i) {
      EXPECT_EQ(gathered[i].first, model.named_parameters()[i].first);
      EXPECT_TRUE(at::equal(gathered[i].second, model.named_parameters()[i].second))
          << gathered[i].first << (tied ? " (tied)" : "");
    }
  }
}

TEST(HfShardedLoad, AnotherShapeIsRefusedNamingTheTensor) {
  auto wider = test::tiny_model_config();
  wider.intermediate_size = 96;
  const model::LlamaModel model(wider, 23);
  const auto dir = written_model("wider", model);
  auto units = empty_units(test::tiny_model_config());
  EXPECT_ERROR(
      DataError, [&] { units->load_hf(model::HfTensorReader(dir)); }, dir, "mlp.gate_proj.weight");
}

}  // namespace
}  // namespace dnpo::train
