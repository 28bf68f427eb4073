// The MpiEnv of an MPI test binary (created by mpi_test_main.cpp before the tests run).
#pragma once

#include "dnpo/dist/mpi_env.h"

namespace dnpo::test {
const dist::MpiEnv& mpi();

/// The exit code of an MPI test binary whose every test that ran was skipped (no rank passed or
/// failed one); CTest's SKIP_RETURN_CODE for the mpi tests.
inline constexpr int kSkippedExitCode = 77;
}  // namespace dnpo::test
