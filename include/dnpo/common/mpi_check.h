// DNPO_MPI_CHECK: the one check of an MPI call's return code, for the .cpp files that call MPI
// (dist/, ckpt/). They include <mpi.h> before this header; common/ itself neither includes nor
// links MPI, since the macro names MPI only where it is expanded.
#pragma once

#include <array>
#include <string>

#include "dnpo/common/error.h"

/// Throws DistError "<call> failed: <MPI's error string> (file:line) [rank r]" unless the call
/// returns MPI_SUCCESS (the world's error handler is MPI_ERRORS_RETURN: MpiEnv sets it).
#define DNPO_MPI_CHECK(call)                                             \
  do {                                                                   \
    const int dnpo_mpi_rc = (call);                                      \
    if (dnpo_mpi_rc != MPI_SUCCESS) {                                    \
      std::array<char, MPI_MAX_ERROR_STRING> dnpo_mpi_msg{};             \
      int dnpo_mpi_len = 0;                                              \
      MPI_Error_string(dnpo_mpi_rc, dnpo_mpi_msg.data(), &dnpo_mpi_len); \
      DNPO_FAIL(::dnpo::DistError,                                       \
                "{} failed: {}",                                         \
                #call,                                                   \
                std::string(dnpo_mpi_msg.data(), dnpo_mpi_len));         \
    }                                                                    \
  } while (false)
