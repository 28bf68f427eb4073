// The MpiEnv of an MPI test binary (created by mpi_test_main.cpp before the tests run).
#pragma once

#include "dnpo/dist/mpi_env.h"

namespace dnpo::test {
const dist::MpiEnv& mpi();
}  // namespace dnpo::test
