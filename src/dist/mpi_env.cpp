// MPI set-up and the few MPI collectives dnpo uses directly (strings, flags); tensors go through
// Comm (c10d). Every MPI call is checked.
#include "dnpo/dist/mpi_env.h"

#include <array>
#include <cstdlib>

#include <mpi.h>

#include "dnpo/common/error.h"
#include "dnpo/common/mpi_check.h"

namespace dnpo::dist {

MpiEnv::MpiEnv(int* argc, char*** argv) {
  int initialized = 0;
  DNPO_MPI_CHECK(MPI_Initialized(&initialized));
  DNPO_CHECK_WITH(DistError, initialized == 0, "MPI is already initialised; create one MpiEnv");
  int provided = 0;
  DNPO_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  // Errors come back as codes (checked above) instead of aborting inside MPI.
  DNPO_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  DNPO_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  DNPO_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size_));
  MPI_Comm node = MPI_COMM_NULL;
  DNPO_MPI_CHECK(
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
  DNPO_MPI_CHECK(MPI_Comm_rank(node, &local_rank_));
  DNPO_MPI_CHECK(MPI_Comm_size(node, &local_world_size_));
  DNPO_MPI_CHECK(MPI_Comm_free(&node));
  set_error_rank(rank_);
}

MpiEnv::~MpiEnv() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized == 0) {
    MPI_Finalize();
  }
}

std::string MpiEnv::broadcast_string(const std::string& value, int root) const {
  auto length = static_cast<long long>(value.size());
  DNPO_MPI_CHECK(MPI_Bcast(&length, 1, MPI_LONG_LONG, root, MPI_COMM_WORLD));
  std::string out = rank_ == root ? value : std::string(static_cast<std::size_t>(length), '\0');
  DNPO_MPI_CHECK(MPI_Bcast(out.data(), static_cast<int>(length), MPI_CHAR, root, MPI_COMM_WORLD));
  return out;
}

bool MpiEnv::any(bool flag) const {
  int local = flag ? 1 : 0;
  int global = 0;
  DNPO_MPI_CHECK(MPI_Allreduce(&local, &global, 1, MPI_INT, MPI_LOR, MPI_COMM_WORLD));
  return global != 0;
}

long long MpiEnv::sum(long long value) const {
  long long global = 0;
  DNPO_MPI_CHECK(MPI_Allreduce(&value, &global, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD));
  return global;
}

void MpiEnv::barrier() const {
  DNPO_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
}

void MpiEnv::abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; keep the compiler and a singleton honest
}

}  // namespace dnpo::dist
