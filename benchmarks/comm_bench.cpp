// Collective benchmark under mpirun: reduce-scatter by each of Gloo's emulations (all-reduce +
// slice, per-owner reduce, MPI_Ireduce_scatter_block) and the flat all-gather, for several
// buffer sizes. Rank 0 prints one JSON line per result (median of repeated calls).
#include <algorithm>
#include <iostream>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include "dnpo/common/log.h"
#include "dnpo/common/main.h"
#include "dnpo/common/timer.h"
#include "dnpo/dist/comm.h"

namespace {

template <typename Fn>
double median_ms(const dnpo::dist::MpiEnv& mpi, int reps, Fn&& fn) {
  std::vector<double> times;
  for (int i = 0; i < reps + 2; ++i) {
    mpi.barrier();
    dnpo::Timer timer;
    fn();
    if (i >= 2) {  // two warm-up calls
      times.push_back(timer.millis());
    }
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

namespace {

int run_bench(int argc, char** argv) {
  dnpo::dist::MpiEnv mpi(&argc, &argv);
  dnpo::log::init(mpi.rank(), "warn");
  at::set_num_threads(1);
  const int world = mpi.world_size();
  for (const std::int64_t shard_elems :
       {std::int64_t{1} << 16, std::int64_t{1} << 20, std::int64_t{1} << 22}) {
    const nlohmann::json config = {
        {"world", world}, {"shard_elems", shard_elems}, {"dtype", "fp32"}};
    auto flat = at::ones({world * shard_elems}, at::kFloat);
    auto shard = at::zeros({shard_elems}, at::kFloat);
    for (const char* method : {"allreduce", "reduce", "mpi", "ring"}) {
      dnpo::config::DistConfig cfg;
      cfg.reduce_scatter = method;
      dnpo::dist::Comm comm(mpi, cfg);
      const double ms = median_ms(mpi, 10, [&] { comm.reduce_scatter_flat(shard, flat).wait(); });
      if (mpi.rank() == 0) {
        std::cout << nlohmann::json{{"name", std::string("comm.reduce_scatter.") + method},
                                    {"config", config},
                                    {"metric", "time_median"},
                                    {"value", ms},
                                    {"unit", "ms"}}
                         .dump()
                  << std::endl;
      }
      if (std::string(method) == "allreduce" || std::string(method) == "ring") {
        // all-gather: Gloo's (with the allreduce instance), the MPI ring (with the ring one)
        dnpo::config::DistConfig gather_cfg;
        gather_cfg.all_gather = std::string(method) == "ring" ? "ring" : "gloo";
        dnpo::dist::Comm gather_comm(mpi, gather_cfg);
        const double gather_ms =
            median_ms(mpi, 10, [&] { gather_comm.all_gather_flat(flat, shard).wait(); });
        if (mpi.rank() == 0) {
          std::cout << nlohmann::json{{"name", "comm.all_gather." + gather_cfg.all_gather},
                                      {"config", config},
                                      {"metric", "time_median"},
                                      {"value", gather_ms},
                                      {"unit", "ms"}}
                           .dump()
                    << std::endl;
        }
      }
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return dnpo::guarded_main(
      "dnpo_comm_bench", argc, argv, run_bench, [] { dnpo::dist::MpiEnv::abort(1); });
}
