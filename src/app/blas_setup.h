// Makes sure LibTorch's BLAS runs fast kernels: OpenBLAS inside VMs often fails to detect the CPU
// and falls back to its generic "Prescott" kernels (SSE3 only). Before anything else runs,
// dnpo re-executes itself once with OPENBLAS_CORETYPE set from the CPU's flags.
#pragma once

#include <string>

namespace dnpo::app {

/// Call first in main(). May not return (re-exec). Returns a one-line description of the BLAS.
std::string ensure_fast_blas(int argc, char** argv);

}  // namespace dnpo::app
