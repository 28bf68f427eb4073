// safetensors round trips (dtypes, metadata, header alignment, damage → DataError naming the
// path) and HF model directories (config.json + model.safetensors, tied and untied).
#include "dnpo/model/safetensors.h"

#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "dnpo/common/error.h"
#include "dnpo/model/hf_io.h"
#include "dnpo/model/llama.h"
#include "expect_error.h"
#include "tiny_model.h"

namespace dnpo::model {
namespace {

namespace fs = std::filesystem;

class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) / ("dnpo_st_" + std::to_string(getpid()) + "_" +
                                             info->test_suite_name() + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    fs::remove_all(dir_);
  }
  fs::path dir_;
};

using Safetensors = TempDirTest;
using HfIo = TempDirTest;

std::string header_of(const std::string& path, std::uint64_t* length) {
  std::ifstream in(path, std::ios::binary);
  std::array<unsigned char, 8> bytes{};
  in.read(reinterpret_cast<char*>(bytes.data()), 8);
  std::uint64_t len = 0;
  for (auto it = bytes.rbegin(); it != bytes.rend(); ++it) {  // little-endian u64
    len = (len << 8U) | *it;
  }
  *length = len;
  std::string header(len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(len));
  return header;
}

TEST_F(Safetensors, RoundTripKeepsDtypesValuesOrderAndMetadata) {
  const auto path = (dir_ / "t.safetensors").string();
  auto f32 = at::arange(6, at::kFloat).reshape({2, 3}) * 0.37 - 1.0;
  auto bf16 = at::tensor({1.5, -2.25, 3.0e5, 0.0078125}, at::kFloat).to(at::kBFloat16);
  auto i64 = at::tensor({std::int64_t{-3}, std::int64_t{1} << 40, std::int64_t{7}}, at::kLong);
  auto transposed = at::arange(12, at::kFloat).reshape({3, 4}).t();  // non-contiguous
  // Names out of alphabetical order: the file keeps the written order.
  write_safetensors(path,
                    {{"zeta.f32", f32}, {"alpha.bf16", bf16}, {"mid.i64", i64}, {"t", transposed}},
                    {{"format", "pt"}, {"note", "unit test"}});
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  const auto back = read_safetensors(path);
  ASSERT_EQ(back.size(), 4U);
  EXPECT_EQ(back[0].first, "zeta.f32");
  EXPECT_EQ(back[1].first, "alpha.bf16");
  EXPECT_EQ(back[2].first, "mid.i64");
  EXPECT_EQ(back[3].first, "t");
  EXPECT_EQ(back[0].second.scalar_type(), at::kFloat);
  EXPECT_EQ(back[1].second.scalar_type(), at::kBFloat16);
  EXPECT_EQ(back[2].second.scalar_type(), at::kLong);
  EXPECT_TRUE(at::equal(back[0].second, f32));
  EXPECT_TRUE(at::equal(back[1].second, bf16));
  EXPECT_TRUE(at::equal(back[2].second, i64));
  EXPECT_TRUE(at::equal(back[3].second, transposed));
  EXPECT_EQ(back[3].second.sizes(), at::IntArrayRef({4, 3}));

  std::uint64_t length = 0;
  const auto header = header_of(path, &length);
  EXPECT_EQ(length % 8, 0U) << "header length " << length;
  const auto json = nlohmann::json::parse(header);
  EXPECT_EQ(json.at("__metadata__").at("format"), "pt");
  EXPECT_EQ(json.at("__metadata__").at("note"), "unit test");
  EXPECT_EQ(json.at("alpha.bf16").at("dtype"), "BF16");
  EXPECT_EQ(json.at("mid.i64").at("dtype"), "I64");
  EXPECT_EQ(json.at("zeta.f32").at("dtype"), "F32");
  EXPECT_EQ(json.at("zeta.f32").at("data_offsets"), nlohmann::json({0, 24}));
  EXPECT_EQ(json.at("alpha.bf16").at("data_offsets"), nlohmann::json({24, 32}));
  // Data section: 24 + 8 + 24 + 48 bytes after the header.
  EXPECT_EQ(fs::file_size(path), 8 + length + 104);
}

TEST_F(Safetensors, EmptyTensorListAndNoMetadata) {
  const auto path = (dir_ / "empty.safetensors").string();
  write_safetensors(path, {});
  EXPECT_TRUE(read_safetensors(path).empty());
  std::uint64_t length = 0;
  header_of(path, &length);
  EXPECT_EQ(length % 8, 0U);
}

TEST_F(Safetensors, TruncatedFileGivesDataErrorNamingThePath) {
  const auto path = (dir_ / "cut.safetensors").string();
  write_safetensors(path, {{"a", at::ones({16, 16})}, {"b", at::zeros({8}, at::kLong)}});
  const auto full = fs::file_size(path);
  for (const std::uintmax_t size :
       {full - 1, full - 100, std::uintmax_t{40}, std::uintmax_t{5}, std::uintmax_t{0}}) {
    fs::copy_file(path, path + ".cut", fs::copy_options::overwrite_existing);
    fs::resize_file(path + ".cut", size);
    SCOPED_TRACE("truncated to " + std::to_string(size) + " bytes");
    EXPECT_ERROR(
        DataError, [&] { read_safetensors(path + ".cut"); }, path + ".cut");
  }
}

TEST_F(Safetensors, MissingFileAndBadHeaderGiveDataError) {
  const auto missing = (dir_ / "nope.safetensors").string();
  EXPECT_ERROR(
      DataError, [&] { read_safetensors(missing); }, missing);

  const auto bad = (dir_ / "bad.safetensors").string();
  {
    std::ofstream out(bad, std::ios::binary);
    const std::string header = "{not json}      ";
    const std::array<unsigned char, 8> len{
        static_cast<unsigned char>(header.size()), 0, 0, 0, 0, 0, 0, 0};
    out.write(reinterpret_cast<const char*>(len.data()), 8);
    out << header;
  }
  EXPECT_ERROR(
      DataError, [&] { read_safetensors(bad); }, bad);
}

TEST_F(Safetensors, ShapeAndOffsetsMismatchNamesTheTensor) {
  const auto path = (dir_ / "lie.safetensors").string();
  {
    const std::string header = R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})";
    std::string padded = header;
    while (padded.size() % 8 != 0) {
      padded.push_back(' ');
    }
    std::ofstream out(path, std::ios::binary);
    const std::array<unsigned char, 8> len{
        static_cast<unsigned char>(padded.size()), 0, 0, 0, 0, 0, 0, 0};
    out.write(reinterpret_cast<const char*>(len.data()), 8);
    out << padded << std::string(8, '\0');
  }
  EXPECT_ERROR(
      DataError, [&] { read_safetensors(path); }, "'w'", path);
}

// Found by fuzzing: shapes whose element or byte count overflows 64 bits. The byte count wrapped
// to the 0 bytes of data_offsets [0, 0] and the header was accepted (then read past the end of
// the file); the element count was a signed overflow. Both are a DataError naming the tensor.
TEST_F(Safetensors, ShapesThatOverflowAreRejected) {
  for (const std::string shape : {"[4294967296,4294967296,2]", "[4611686018427387904]"}) {
    const auto path = (dir_ / "huge.safetensors").string();
    {
      const std::string header =
          R"({"w":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,0]}})";
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      const std::array<unsigned char, 8> len{
          static_cast<unsigned char>(header.size()), 0, 0, 0, 0, 0, 0, 0};
      out.write(reinterpret_cast<const char*>(len.data()), 8);
      out << header;
    }
    SCOPED_TRACE(shape);
    EXPECT_ERROR(
        DataError, [&] { read_safetensors(path); }, "'w' has a shape too large");
  }
}

/// The shared tiny model with rope_theta and rms_norm_eps off their defaults: the HF round trip
/// must carry them.
config::ModelConfig tiny_config(bool tied) {
  auto cfg = test::tiny_model_config(tied);
  cfg.rope_theta = 5000.0;
  cfg.rms_norm_eps = 1e-6;
  return cfg;
}

at::Tensor logits_of(const LlamaModel& model) {
  at::NoGradGuard no_grad;
  const auto ids =
      at::tensor(std::vector<std::int64_t>{1, 5, 9, 33, 2, 49, 17, 0}, at::kLong).reshape({2, 4});
  return model.logits(model.forward_hidden(ids, at::ones({2, 4}, at::kLong)));
}

void expect_hf_round_trip(const fs::path& dir, bool tied) {
  const LlamaModel model(tiny_config(tied), tied ? 3 : 4);
  save_hf_model(dir.string(), model);
  ASSERT_TRUE(fs::exists(dir / "config.json"));
  ASSERT_TRUE(fs::exists(dir / "model.safetensors"));
  const auto loaded = load_hf_model(dir.string());
  const auto& c = loaded.config();
  EXPECT_EQ(c.vocab_size, 50);
  EXPECT_EQ(c.hidden_size, 32);
  EXPECT_EQ(c.intermediate_size, 64);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.max_position_embeddings, 64);
  EXPECT_DOUBLE_EQ(c.rope_theta, 5000.0);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.tie_word_embeddings, tied);
  EXPECT_TRUE(at::equal(logits_of(loaded), logits_of(model)));
  const auto stored = read_safetensors((dir / "model.safetensors").string());
  bool has_lm_head = false;
  for (const auto& [name, tensor] : stored) {
    has_lm_head = has_lm_head || name == "lm_head.weight";
  }
  EXPECT_EQ(has_lm_head, !tied);
  EXPECT_EQ(stored.size(), model.named_parameters().size());
}

TEST_F(HfIo, UntiedRoundTripGivesIdenticalLogits) {
  expect_hf_round_trip(dir_ / "untied", false);
}

TEST_F(HfIo, TiedRoundTripGivesIdenticalLogits) {
  expect_hf_round_trip(dir_ / "tied", true);
}

TEST_F(HfIo, Bf16SaveRoundsTheWeights) {
  const LlamaModel model(tiny_config(false), 8);
  save_hf_model((dir_ / "bf16").string(), model, /*bf16=*/true);
  for (const auto& [name, tensor] :
       read_safetensors((dir_ / "bf16" / "model.safetensors").string())) {
    EXPECT_EQ(tensor.scalar_type(), at::kBFloat16) << name;
  }
  const auto loaded = load_hf_model((dir_ / "bf16").string());
  const auto& original = model.weights().layers[1].down_proj;
  const auto& back = loaded.weights().layers[1].down_proj;
  EXPECT_EQ(back.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(back, original.to(at::kBFloat16).to(at::kFloat)));
  EXPECT_LT((logits_of(loaded) - logits_of(model)).abs().max().item<double>(), 0.1);
}

TEST_F(HfIo, ShardedExportWritesAnIndexAndLoadsBackIdentically) {
  const LlamaModel model(tiny_config(false), 12);
  const auto dir = dir_ / "sharded";
  save_hf_model(dir.string(), model);  // a single file first: the sharded export replaces it
  HfWriteOptions options;
  options.max_shard_bytes = 20000;  // the tiny model is ~60 kB: several shards
  save_hf_tensors(dir.string(), model.config(), model.named_parameters(), options);
  EXPECT_FALSE(fs::exists(dir / "model.safetensors"));
  ASSERT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  std::ifstream in(dir / "model.safetensors.index.json");
  const auto index = nlohmann::json::parse(in);
  std::set<std::string> files;
  std::int64_t bytes = 0;
  for (const auto& [name, file] : index["weight_map"].items()) {
    files.insert(file.get<std::string>());
  }
  for (const auto& [name, tensor] : model.named_parameters()) {
    bytes += static_cast<std::int64_t>(tensor.nbytes());
    EXPECT_TRUE(index["weight_map"].contains(name)) << name;
  }
  EXPECT_GE(files.size(), 3U);
  EXPECT_EQ(index["metadata"]["total_size"].get<std::int64_t>(), bytes);
  for (const auto& file : files) {
    EXPECT_TRUE(fs::exists(dir / file)) << file;
    EXPECT_LE(fs::file_size(dir / file), 20000U + 4096U) << file;  // + header
  }
  const auto loaded = load_hf_model(dir.string());
  ASSERT_EQ(loaded.named_parameters().size(), model.named_parameters().size());
  for (std::size_t i = 0; i < model.named_parameters().size(); ++i) {
    EXPECT_EQ(loaded.named_parameters()[i].first, model.named_parameters()[i].first);
    EXPECT_TRUE(at::equal(loaded.named_parameters()[i].second, model.named_parameters()[i].second));
  }
  // Back to one file: the shards and the index go.
  save_hf_model(dir.string(), model);
  EXPECT_TRUE(fs::exists(dir / "model.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir / *files.begin()));
}

TEST_F(HfIo, ShardedLoadNamesAMissingShard) {
  const LlamaModel model(tiny_config(false), 13);
  const auto dir = dir_ / "missing_shard";
  HfWriteOptions options;
  options.max_shard_bytes = 20000;
  save_hf_tensors(dir.string(), model.config(), model.named_parameters(), options);
  std::string second;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const auto name = entry.path().filename().string();
    if (name.rfind("model-00002-of-", 0) == 0) {
      second = name;
    }
  }
  ASSERT_FALSE(second.empty());
  fs::remove(dir / second);
  EXPECT_ERROR(
      DataError, [&] { (void)load_hf_model(dir.string()); }, second, "does not exist");
}

TEST_F(HfIo, ConfigDefaultsFollowHf) {
  {
    std::ofstream out(dir_ / "config.json");
    out << R"({"vocab_size": 50, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_act": "silu"})";
  }
  config::ModelConfig base;
  base.tie_word_embeddings = true;
  base.init_from = "kept";
  const auto cfg = read_hf_config(dir_.string(), base);
  EXPECT_EQ(cfg.num_key_value_heads, 4);  // absent → heads
  EXPECT_FALSE(cfg.tie_word_embeddings);  // absent → HF's false, not base's
  EXPECT_EQ(cfg.init_from, "kept");       // fields outside config.json keep base's values
  EXPECT_DOUBLE_EQ(cfg.rope_theta, base.rope_theta);
}

TEST_F(HfIo, ConfigErrorsNameTheFileAndField) {
  {
    std::ofstream out(dir_ / "config.json");
    out << R"({"vocab_size": 50, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_act": "gelu"})";
  }
  EXPECT_ERROR(
      DataError, [&] { read_hf_config(dir_.string()); }, "hidden_act");
  {
    std::ofstream out(dir_ / "config.json");
    out << R"({"vocab_size": 50, "hidden_size": 32})";
  }
  EXPECT_ERROR(
      DataError, [&] { read_hf_config(dir_.string()); }, "intermediate_size", "config.json");
  EXPECT_THROW(load_hf_model((dir_ / "absent").string()), DataError);
}

}  // namespace
}  // namespace dnpo::model
