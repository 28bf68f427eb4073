// Checkpoint I/O benchmark under mpirun: save, load (after dropping the page cache when allowed)
// and verify of a >= 100M-parameter fp32 state, each rank holding its even slice of every tensor.
// Rank 0 prints one JSON line per result (seconds, bytes, MB/s).
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include <ATen/ATen.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "dnpo/ckpt/checkpoint.h"
#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "dnpo/common/main.h"
#include "dnpo/common/timer.h"
#include "dnpo/dist/mpi_env.h"

namespace {

/// Writes back and drops the page cache (root only); false when not allowed.
bool drop_page_cache() {
  ::sync();
  std::ofstream out("/proc/sys/vm/drop_caches");
  out << "3\n";
  out.flush();
  return static_cast<bool>(out);
}

}  // namespace

namespace {

int run_bench(int argc, char** argv) {
  dnpo::dist::MpiEnv mpi(&argc, &argv);
  dnpo::log::init(mpi.rank(), "warn");
  CLI::App app("dnpo checkpoint I/O benchmark");
  std::string dir = "checkpoints/bench";
  int tensors = 26;
  std::int64_t rows = 4096;
  std::int64_t cols = 1000;
  bool drop_caches = true;
  app.add_option("--dir", dir, "directory for the checkpoint file (removed afterwards)");
  app.add_option("--tensors", tensors, "number of tensors");
  app.add_option("--rows", rows, "rows of each tensor");
  app.add_option("--cols", cols, "columns of each tensor");
  app.add_option("--drop-caches", drop_caches, "drop the page cache before loading (root)");
  CLI11_PARSE(app, argc, argv);
  const int rank = mpi.rank();
  const int world = mpi.world_size();

  // --- the state: tensors x (rows, cols) fp32, this rank's even slice of each ---
  dnpo::ckpt::StateDict state;
  at::manual_seed(0);
  std::int64_t params = 0;
  for (int i = 0; i < tensors; ++i) {
    const std::int64_t n = rows * cols;
    const auto range = dnpo::ckpt::even_slice(n, rank, world);
    state.add("layers." + std::to_string(i) + ".weight",
              {rows, cols},
              range.offset,
              at::rand({range.numel}, at::kFloat));
    params += n;
  }
  const std::int64_t bytes = params * 4;
  const std::string path = dir + "/bench-np" + std::to_string(world) + ".h5";
  if (rank == 0) {
    std::filesystem::create_directories(dir);
  }
  const nlohmann::json config = {
      {"world", world}, {"params", params}, {"tensors", tensors}, {"bytes", bytes}};
  auto report = [&](const std::string& name, double seconds, const nlohmann::json& extra) {
    if (rank != 0) {
      return;
    }
    nlohmann::json line = {{"name", name},
                           {"config", config},
                           {"metric", "time"},
                           {"value", seconds},
                           {"unit", "s"},
                           {"mb_per_s", static_cast<double>(bytes) / 1e6 / seconds}};
    line.update(extra);
    std::cout << line.dump() << std::endl;
  };

  // --- save (includes the fsync and the rename) ---
  mpi.barrier();
  dnpo::Timer timer;
  dnpo::ckpt::save(path, state);
  mpi.barrier();
  report("ckpt.save", timer.seconds(), {{"file_bytes", std::filesystem::file_size(path)}});

  // --- load the same slicing into fresh buffers, cold when the cache can be dropped ---
  dnpo::ckpt::StateDict wanted;
  for (const auto& t : state.tensors) {
    wanted.add_request(t.name, t.shape, t.offset, t.numel());
  }
  const bool cold = drop_caches && mpi.any(rank == 0 && drop_page_cache());
  mpi.barrier();
  timer.reset();
  dnpo::ckpt::load_into(path, wanted);
  mpi.barrier();
  report("ckpt.load", timer.seconds(), {{"cold_cache", cold}});
  for (std::size_t i = 0; i < state.tensors.size(); ++i) {
    DNPO_CHECK(at::equal(state.tensors[i].data, wanted.tensors[i].data),
               "loaded tensor differs: {}",
               state.tensors[i].name);
  }

  // --- verify every chunk (the file is in the page cache now) ---
  mpi.barrier();
  timer.reset();
  dnpo::ckpt::verify(path);
  mpi.barrier();
  report("ckpt.verify", timer.seconds(), {{"cold_cache", false}});
  if (rank == 0) {
    std::filesystem::remove(path);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return dnpo::guarded_main(
      "dnpo_ckpt_bench", argc, argv, run_bench, [] { dnpo::dist::MpiEnv::abort(1); });
}
