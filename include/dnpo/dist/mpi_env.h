// Every dnpo process is an MPI process: mpirun, srun with Slurm's MPI support, or a plain start
// (an MPI singleton of world size 1). MpiEnv owns MPI_Init/Finalize and knows rank, world size and
// the rank within the node. Headers stay free of mpi.h (only src/dist, src/ckpt use it).
#pragma once

#include <string>
#include <vector>

namespace dnpo::dist {

class MpiEnv {
 public:
  /// MPI_Init_thread (funneled); registers the rank for error messages. One per process.
  MpiEnv(int* argc, char*** argv);
  ~MpiEnv();
  MpiEnv(const MpiEnv&) = delete;
  MpiEnv& operator=(const MpiEnv&) = delete;
  MpiEnv(MpiEnv&&) = delete;
  MpiEnv& operator=(MpiEnv&&) = delete;

  int rank() const {
    return rank_;
  }
  int world_size() const {
    return world_size_;
  }
  int local_rank() const {
    return local_rank_;
  }
  int local_world_size() const {
    return local_world_size_;
  }

  // collective: every rank, same order.
  /// Rank `root`'s string, on every rank.
  std::string broadcast_string(const std::string& value, int root) const;
  /// Logical OR of a flag over all ranks (job-wide events at step boundaries).
  bool any(bool flag) const;
  /// Sum of an integer over all ranks.
  long long sum(long long value) const;
  void barrier() const;

  /// Ends every rank of the job (MPI_Abort); for fatal errors, so no rank hangs.
  [[noreturn]] static void abort(int code);

 private:
  int rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
  int local_world_size_ = 1;
};

}  // namespace dnpo::dist
