// Checkpoint files in one process (no MPI): round trips with any slicing, the errors a damaged
// or mismatched file gives, and checkpoint directories (atomic commit, latest, retention).
#include "dnpo/ckpt/checkpoint.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <hdf5.h>

#include "ckpt_test_util.h"
#include "dnpo/common/env.h"
#include "dnpo/common/error.h"
#include "expect_error.h"

namespace dnpo::ckpt {
namespace {

namespace fs = std::filesystem;

/// A fresh directory for the running test.
std::string test_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir = fs::path(DNPO_BINARY_DIR) / "tests" / "ckpt_unit" / info->name();
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

std::string saved_demo(const std::string& dir) {
  std::string path = dir + "/demo.h5";
  save(path, test::ckpt_demo_state(0, 1));
  return path;
}

TEST(EvenSlice, SplitsLikeShardedUnits) {
  EXPECT_EQ(even_slice(10, 0, 4).numel, 3);
  EXPECT_EQ(even_slice(10, 3, 4).offset, 9);
  EXPECT_EQ(even_slice(10, 3, 4).numel, 1);
  EXPECT_EQ(even_slice(2, 3, 4).numel, 0);
  EXPECT_EQ(even_slice(2, 3, 4).offset, 2);
  EXPECT_EQ(even_slice(0, 0, 1).numel, 0);
}

TEST(Checkpoint, RoundTripKeepsTensorsAttributesAndBlobs) {
  const std::string path = saved_demo(test_dir());
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  const StateDict got = load(path);
  const StateDict want = test::ckpt_demo_state(0, 1);
  ASSERT_EQ(got.tensors.size(), want.tensors.size());
  for (std::size_t i = 0; i < want.tensors.size(); ++i) {
    EXPECT_EQ(got.tensors[i].name, want.tensors[i].name) << "order kept";
    EXPECT_EQ(got.tensors[i].shape, want.tensors[i].shape) << want.tensors[i].name;
    EXPECT_EQ(got.tensors[i].dtype, want.tensors[i].dtype) << want.tensors[i].name;
    EXPECT_TRUE(at::equal(got.tensors[i].data, want.tensors[i].data)) << want.tensors[i].name;
  }
  EXPECT_EQ(got.strings, want.strings);
  EXPECT_EQ(got.ints, want.ints);
  EXPECT_EQ(got.floats, want.floats);
  EXPECT_EQ(got.blobs, want.blobs);
  EXPECT_EQ(test::ckpt_check_demo_values(got), "");
  verify(path);
}

TEST(Checkpoint, AnySliceReadsBackExactly) {
  const std::string path = saved_demo(test_dir());
  std::mt19937_64 rng(7);
  std::vector<std::function<SliceRange(std::int64_t)>> picks = {
      [](std::int64_t n) {
        return SliceRange{0, n};
      },
      [](std::int64_t n) {
        return SliceRange{n - std::min<std::int64_t>(n, 1), n > 0 ? 1 : 0};
      },
      [](std::int64_t n) {
        return SliceRange{n / 3, n / 3};
      },
      // across the first chunk boundary, and exactly one chunk
      [](std::int64_t n) {
        return n > (1 << 20) + 5 ? SliceRange{(1 << 20) - 5, 10} : SliceRange{0, n};
      },
      [](std::int64_t n) {
        return n >= (1 << 20) ? SliceRange{0, 1 << 20} : SliceRange{0, 0};
      },
  };
  for (int i = 0; i < 6; ++i) {
    picks.emplace_back([&rng](std::int64_t n) {
      if (n == 0) {
        return SliceRange{0, 0};
      }
      const auto a = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(n));
      const auto b = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(n + 1));
      return SliceRange{std::min(a, b), std::max(a, b) - std::min(a, b)};
    });
  }
  for (std::size_t p = 0; p < picks.size(); ++p) {
    StateDict wanted = test::ckpt_demo_requests(picks[p]);
    load_into(path, wanted);
    EXPECT_EQ(test::ckpt_check_demo_values(wanted), "") << "slicing " << p;
    EXPECT_EQ(wanted.ints.at("step"), 120);
  }
}

TEST(Checkpoint, InspectListsNamesShapesDtypesAndAttributes) {
  const std::string text = inspect(saved_demo(test_dir()));
  for (const char* part : {"model.layers.3.q_proj.weight",
                           "[64, 64]",
                           "fp32",
                           "int64",
                           "16384 bytes",
                           "format_version: 1",
                           "step (int) = 120",
                           "phase (string, 5 bytes) = train",
                           "prompts.json"}) {
    EXPECT_NE(text.find(part), std::string::npos) << "missing '" << part << "' in\n" << text;
  }
}

TEST(Checkpoint, ShapeMismatchNamesTensorFileAndBothShapes) {
  const std::string path = saved_demo(test_dir());
  StateDict wanted;
  wanted.add_request("model.layers.3.q_proj.weight", {32, 64}, 0, 10);
  EXPECT_ERROR(
      CheckpointError,
      [&] { load_into(path, wanted); },
      path,
      "model.layers.3.q_proj.weight: shape mismatch: file has [64, 64], expected [32, 64]");
}

TEST(Checkpoint, MissingTensorAndWrongDtypeAreNamed) {
  const std::string path = saved_demo(test_dir());
  StateDict missing;
  missing.add_request("model.layers.4.q_proj.weight", {64, 64}, 0, 10);
  EXPECT_ERROR(
      CheckpointError,
      [&] { load_into(path, missing); },
      "tensor model.layers.4.q_proj.weight: missing");
  StateDict dtype;
  dtype.add_request("noise.w", {7, 5, 3}, 0, 10, at::kLong);
  EXPECT_ERROR(
      CheckpointError,
      [&] { load_into(path, dtype); },
      "noise.w: dtype mismatch: file has fp32, expected int64");
}

TEST(Checkpoint, FlippedByteGivesChecksumErrorNamingTensorChunkAndFile) {
  const std::string path = saved_demo(test_dir());
  const std::string name = "model.embed_tokens.weight";
  test::ckpt_flip_byte(path, "/tensors/" + name, (1 << 20) + 5);  // in chunk 1
  for (const auto& msg : {test::error_of<CheckpointError>([&] { (void)load(path); }),
                          test::error_of<CheckpointError>([&] { verify(path); })}) {
    EXPECT_CONTAINS(msg, path);
    EXPECT_CONTAINS(
        msg, "tensor " + name + ": checksum mismatch in chunk 1 (elements [1048576, 2097152))");
  }
  // A slice that merely shares the damaged chunk fails too (the whole chunk is checked) ...
  StateDict near;
  near.add_request(name, {3, 700001}, (1 << 20) + 100, 10);
  EXPECT_ERROR(
      CheckpointError, [&] { load_into(path, near); }, "chunk 1");
  // ... while the other chunks and tensors still load.
  StateDict far;
  far.add_request(name, {3, 700001}, 0, 1 << 20);
  far.add_request("noise.w", {7, 5, 3}, 0, 105);
  EXPECT_NO_THROW(load_into(path, far));
}

TEST(Checkpoint, FlippedByteInBlobIsDetected) {
  const std::string path = saved_demo(test_dir());
  test::ckpt_flip_byte(path, "/blobs/prompts.json", 3);
  EXPECT_ERROR(
      CheckpointError, [&] { verify(path); }, "blob prompts.json: checksum mismatch");
}

TEST(Checkpoint, TruncatedOrForeignFileErrorNamesFile) {
  const std::string dir = test_dir();
  const std::string path = saved_demo(dir);
  fs::resize_file(path, fs::file_size(path) / 2);
  for (const auto& msg : {test::error_of<CheckpointError>([&] { (void)load(path); }),
                          test::error_of<CheckpointError>([&] { verify(path); }),
                          test::error_of<CheckpointError>([&] { (void)inspect(path); })}) {
    EXPECT_CONTAINS(msg, "checkpoint " + path + ": cannot open");
    EXPECT_CONTAINS(msg, "truncated file");
  }
  const std::string text = dir + "/notes.h5";
  std::ofstream(text) << "not hdf5";
  EXPECT_ERROR(
      CheckpointError, [&] { verify(text); }, "checkpoint " + text + ": cannot open");
  EXPECT_ERROR(
      CheckpointError, [&] { verify(dir + "/absent.h5"); }, dir + "/absent.h5");
}

TEST(Checkpoint, UnknownFormatVersionIsRefused) {
  const std::string path = saved_demo(test_dir());
  test::ckpt_set_format_version(path, 99);
  EXPECT_ERROR(
      CheckpointError,
      [&] { (void)load(path); },
      path + ": unknown format version 99; this build of dnpo reads version 1");
}

// Adds to an existing checkpoint a chunked dataset `group`/`name` declaring `dims` elements of
// `type` with no storage (as a damaged or hostile header could), with a crc32 attribute.
void add_declared_only_dataset(const std::string& path,
                               const char* group,
                               const char* name,
                               hid_t type,
                               const std::vector<hsize_t>& dims) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  const std::vector<hsize_t> chunk(dims.size(), 1);
  H5Pset_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data());
  const hid_t loc = H5Gopen2(file, group, H5P_DEFAULT);
  const hid_t data = H5Dcreate2(loc, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  ASSERT_GE(data, 0);
  const hid_t scalar = H5Screate(H5S_SCALAR);
  const hid_t attr = H5Acreate2(data, "crc32", H5T_STD_I64LE, scalar, H5P_DEFAULT, H5P_DEFAULT);
  const std::int64_t zero = 0;
  H5Awrite(attr, H5T_NATIVE_INT64, &zero);
  for (const hid_t id : {attr, scalar, data, loc, dcpl, space}) {
    H5Idec_ref(id);
  }
  H5Fclose(file);
}

TEST(Checkpoint, ExtentsLargerThanTheFileAreDamageNotAllocations) {
  // A blob of 2^40 bytes (every load reads blobs) and a tensor of 2^62 elements (verify and
  // inspect open every tensor) in a file of a few MB: reading them would try to allocate that
  // much, and a bad_alloc is not an error resume skips past.
  const std::string dir = test_dir();
  const std::string blob = saved_demo(dir);
  add_declared_only_dataset(blob, "blobs", "huge", H5T_NATIVE_UINT8, {hsize_t{1} << 40});
  const std::string tensor = dir + "/tensor.h5";
  save(tensor, test::ckpt_demo_state(0, 1));
  add_declared_only_dataset(
      tensor, "tensors", "huge", H5T_IEEE_F32LE, {hsize_t{1} << 31, hsize_t{1} << 31});
  EXPECT_ERROR(
      CheckpointError, [&] { (void)load(blob); }, "checkpoint " + blob, "do not fit in the file's");
  EXPECT_ERROR(
      CheckpointError, [&] { verify(tensor); }, "checkpoint " + tensor, "do not fit in the file's");
  EXPECT_ERROR(
      CheckpointError,
      [&] { (void)inspect(tensor); },
      "checkpoint " + tensor,
      "do not fit in the file's");
}

TEST(Checkpoint, BadStatesAreRefusedBeforeWriting) {
  const std::string dir = test_dir();
  const std::string path = dir + "/bad.h5";
  StateDict partial;
  partial.add("w", {10}, 0, at::zeros({5}));
  EXPECT_ERROR(
      CheckpointError, [&] { save(path, partial); }, "w: the ranks' slices cover [0, 5)");
  StateDict outside;
  outside.add("w", {10}, 8, at::zeros({5}));
  EXPECT_ERROR(
      CheckpointError, [&] { save(path, outside); }, "lies outside");
  StateDict strided;
  strided.add("w", {10}, 0, at::zeros({10, 2}).select(1, 0));
  EXPECT_ERROR(
      CheckpointError, [&] { save(path, strided); }, "contiguous 1-D CPU");
  StateDict slash;
  slash.add("a/b", {1}, 0, at::zeros({1}));
  EXPECT_ERROR(
      CheckpointError, [&] { save(path, slash); }, "invalid tensor name 'a/b'");
  StateDict huge;
  huge.strings["metrics"] = std::string(70000, 'x');
  EXPECT_ERROR(
      CheckpointError, [&] { save(path, huge); }, "hint: store large values in");
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

// --- directories ---

TEST(CheckpointDir, CommitPointsLatestAndKeepsLastKPlusKept) {
  const std::string dir = test_dir() + "/run";
  for (int i = 1; i <= 5; ++i) {
    StateDict state;
    state.add("x", {1}, 0, at::full({1}, static_cast<float>(i)));
    CommitOptions options;
    options.keep = i == 2;
    options.keep_last = 2;
    commit_checkpoint(dir, checkpoint_name(i), state, options);
    EXPECT_EQ(read_latest(dir), checkpoint_name(i));
  }
  EXPECT_EQ(list_checkpoints(dir),
            (std::vector<std::string>{checkpoint_name(2), checkpoint_name(4), checkpoint_name(5)}));
  const auto point = find_latest_valid(dir);
  ASSERT_TRUE(point.has_value());
  EXPECT_EQ(point->name, "ckpt-000000005");
  EXPECT_TRUE(point->damaged.empty());
}

TEST(CheckpointDir, CrashBeforeRenameLeavesPreviousCheckpointAndLatest) {
  const std::string dir = test_dir();
  const auto state = test::ckpt_demo_state(0, 1);
  commit_checkpoint(dir, checkpoint_name(1), state);
  ::setenv(env::kTestCkptFail, "before_rename", 1);
  EXPECT_ERROR(
      CheckpointError,
      [&] { commit_checkpoint(dir, checkpoint_name(2), state); },
      "simulated crash");
  ::unsetenv(env::kTestCkptFail);
  EXPECT_TRUE(fs::exists(checkpoint_path(dir, checkpoint_name(2)) + ".tmp"));
  EXPECT_FALSE(fs::exists(checkpoint_path(dir, checkpoint_name(2))));
  EXPECT_EQ(read_latest(dir), checkpoint_name(1));
  const auto point = find_latest_valid(dir);
  ASSERT_TRUE(point.has_value());
  EXPECT_EQ(point->name, checkpoint_name(1));
  EXPECT_EQ(test::ckpt_check_demo_values(load(point->path)), "");
  // The next commit succeeds and its pruning clears the leftover.
  commit_checkpoint(dir, checkpoint_name(2), state);
  EXPECT_FALSE(fs::exists(checkpoint_path(dir, checkpoint_name(2)) + ".tmp"));
  EXPECT_EQ(read_latest(dir), checkpoint_name(2));
}

TEST(CheckpointDir, FindLatestValidFallsBackPastMissingLatestAndDamage) {
  const std::string dir = test_dir();
  EXPECT_FALSE(find_latest_valid(dir).has_value());
  const auto state = test::ckpt_demo_state(0, 1);
  for (int i = 1; i <= 3; ++i) {
    commit_checkpoint(dir, checkpoint_name(i), state);
  }
  fs::remove(fs::path(dir) / "latest");
  auto point = find_latest_valid(dir);
  ASSERT_TRUE(point.has_value());
  EXPECT_EQ(point->name, checkpoint_name(3));
  // latest names the newest, which is damaged: the one before is used, the damaged one reported.
  write_latest(dir, checkpoint_name(3));
  const std::string damaged = checkpoint_path(dir, checkpoint_name(3));
  test::ckpt_flip_byte(damaged, "/tensors/noise.w", 4);
  point = find_latest_valid(dir);
  ASSERT_TRUE(point.has_value());
  EXPECT_EQ(point->name, checkpoint_name(2));
  ASSERT_EQ(point->damaged.size(), 1U);
  EXPECT_NE(point->damaged[0].find(damaged + ": "), std::string::npos) << point->damaged[0];
  EXPECT_NE(point->damaged[0].find("noise.w: checksum mismatch"), std::string::npos);
  // latest names an older one: it is used as is.
  write_latest(dir, checkpoint_name(1));
  EXPECT_EQ(find_latest_valid(dir)->name, checkpoint_name(1));
}

}  // namespace
}  // namespace dnpo::ckpt
