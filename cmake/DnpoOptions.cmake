# Build options (docs/develop.md, "Build").
option(DNPO_BUILD_TESTS "dnpo: build the test suite" ON)
option(DNPO_BUILD_BENCHMARKS "dnpo: build the benchmarks" ON)
set(DNPO_WITH_CUDA AUTO CACHE STRING "dnpo: CUDA path: AUTO (on when LibTorch has CUDA), ON, OFF")
option(DNPO_CORE_ONLY
  "dnpo: only common, config, model, the losses and the gpu tests/bench (no MPI, HDF5, SentencePiece)"
  OFF)
option(DNPO_CUDA_KERNELS "dnpo: compile dnpo's CUDA kernel (noise draws) with nvcc in CUDA builds" ON)
option(DNPO_PCH "dnpo: precompile LibTorch headers" ON)
option(DNPO_CCACHE "dnpo: compile through ccache" ON)
option(DNPO_WERROR "dnpo: treat warnings as errors" OFF)
option(DNPO_SANITIZE_ADDRESS "dnpo: AddressSanitizer" OFF)
option(DNPO_SANITIZE_UNDEFINED "dnpo: UndefinedBehaviorSanitizer" OFF)
option(DNPO_SANITIZE_THREAD "dnpo: ThreadSanitizer" OFF)
option(DNPO_FUZZ "dnpo: libFuzzer targets (clang; launch/fuzz): coverage-instrument our code" OFF)
set(DNPO_HEAP AUTO CACHE STRING
  "dnpo: malloc of dnpo's programs: AUTO (tcmalloc, except with sanitizers, fuzzing or CUDA), tcmalloc, glibc")

if(DNPO_CCACHE)
  find_program(DNPO_CCACHE_PROGRAM ccache)
  if(DNPO_CCACHE_PROGRAM)
    set(CMAKE_CXX_COMPILER_LAUNCHER ${DNPO_CCACHE_PROGRAM})
  endif()
endif()

find_program(DNPO_LLD ld.lld)
if(DNPO_LLD)
  add_link_options(-fuse-ld=lld)
endif()
