# Every third-party dependency, found once (all Debian packages; see launch/install-deps).
# DNPO_CORE_ONLY (the GPU machine's build, launch/device-check) needs only LibTorch, spdlog,
# nlohmann-json, toml++, CLI11 and GoogleTest.
find_package(Torch REQUIRED)
# LibTorch 2.x bundles fmt 12 in its include folder, which would shadow the fmt 9 that Debian's
# spdlog is built against; a folder named here (the GPU machine's unpacked Debian packages) is
# searched before LibTorch's (as -I, ahead of every -isystem). c10d's headers accept fmt 9.
set(DNPO_FIRST_INCLUDE_DIR "" CACHE PATH "dnpo: include folder searched before LibTorch's")
if(DNPO_FIRST_INCLUDE_DIR)
  include_directories(BEFORE "${DNPO_FIRST_INCLUDE_DIR}")
endif()
find_package(Threads REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(spdlog REQUIRED)
find_package(tomlplusplus 3 REQUIRED)
find_package(CLI11 REQUIRED)
if(NOT DNPO_CORE_ONLY)
  find_package(PkgConfig REQUIRED)
  pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)
  find_package(MPI REQUIRED COMPONENTS C)
  # Parallel HDF5 (Open MPI build) for checkpoints; zlib (its dependency) for their CRC-32s.
  pkg_check_modules(HDF5 REQUIRED IMPORTED_TARGET hdf5-openmpi)
  find_package(ZLIB REQUIRED)
  # The judge's HTTP client and server (Asio + Beast, header-only; Debian libboost-dev).
  find_package(Boost 1.74 REQUIRED)
  # HTTPS for the judge (Asio's SSL streams over OpenSSL; Debian libssl-dev).
  find_package(OpenSSL 3 REQUIRED)
endif()

# LibTorch's exported flags are global-ish; wrap them in one interface target with SYSTEM includes.
add_library(dnpo_torch INTERFACE)
target_link_libraries(dnpo_torch INTERFACE ${TORCH_LIBRARIES})
target_include_directories(dnpo_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})

# LibTorch 1.13 (Debian, CPU) and 2.x (pip, CUDA) are both supported; code branches on these.
if(Torch_VERSION VERSION_GREATER_EQUAL 2.0)
  # c10d's process groups became Backends (ProcessGroupGloo/NCCL derive from c10d::Backend).
  target_compile_definitions(dnpo_torch INTERFACE DNPO_TORCH2=1)
endif()
if(Torch_VERSION VERSION_GREATER_EQUAL 2.5)
  # at::scaled_dot_product_attention with enable_gqa (fused flash / memory-efficient kernels)
  target_compile_definitions(dnpo_torch INTERFACE DNPO_HAS_SDPA_GQA=1)
endif()
set(dnpo_torch_has_cuda OFF)
if(TARGET torch_cuda OR TORCH_CUDA_LIBRARIES)
  set(dnpo_torch_has_cuda ON)
endif()
if(DNPO_WITH_CUDA STREQUAL "AUTO")
  set(DNPO_CUDA_ENABLED ${dnpo_torch_has_cuda})
elseif(DNPO_WITH_CUDA)
  if(NOT dnpo_torch_has_cuda)
    message(FATAL_ERROR "DNPO_WITH_CUDA=ON but LibTorch at ${Torch_DIR} has no CUDA")
  endif()
  set(DNPO_CUDA_ENABLED ON)
else()
  set(DNPO_CUDA_ENABLED OFF)
endif()
if(DNPO_CUDA_ENABLED)
  target_compile_definitions(dnpo_torch INTERFACE DNPO_WITH_CUDA=1)
endif()
# CBLAS (Debian libblas-dev's cblas.h; libblas.so.3 is OpenBLAS at run time): attention's small
# batched GEMMs on CPU call it directly, because LibTorch 1.13's bmm dispatches once per matrix
# (src/model/batched_matmul.cpp). Optional: without it (the GPU machine's build) at::matmul runs.
add_library(dnpo_cblas INTERFACE)
find_package(BLAS QUIET)
include(CheckIncludeFileCXX)
check_include_file_cxx(cblas.h DNPO_HAVE_CBLAS_H)
if(BLAS_FOUND AND DNPO_HAVE_CBLAS_H)
  target_link_libraries(dnpo_cblas INTERFACE ${BLAS_LIBRARIES})
  set(DNPO_CBLAS_FOUND ON)
  set(dnpo_cblas_status "CBLAS ${BLAS_LIBRARIES}")
else()
  set(dnpo_cblas_status "no CBLAS (attention uses at::matmul)")
endif()

# c10d backends. Gloo needs its own headers (Debian libgloo-dev; pip's LibTorch ships none, so the
# GPU machine's build has NCCL only). NCCL comes with a CUDA LibTorch; its nccl.h must be the one
# LibTorch was built with (pip's nvidia/nccl, DNPO_NCCL_INCLUDE_DIR), not an older system copy.
check_include_file_cxx(gloo/config.h DNPO_HAVE_GLOO_H)
set(dnpo_c10d_status "c10d:")
if(DNPO_HAVE_GLOO_H)
  string(APPEND dnpo_c10d_status " gloo")
endif()
set(DNPO_NCCL_INCLUDE_DIR "" CACHE PATH "dnpo: folder of the nccl.h matching LibTorch's NCCL")
if(DNPO_CUDA_ENABLED)
  string(APPEND dnpo_c10d_status " nccl")
  if(DNPO_NCCL_INCLUDE_DIR)
    find_library(DNPO_NCCL_LIBRARY NAMES nccl libnccl.so.2 HINTS "${DNPO_NCCL_INCLUDE_DIR}/../lib")
    string(APPEND dnpo_c10d_status " (${DNPO_NCCL_INCLUDE_DIR}, ${DNPO_NCCL_LIBRARY})")
  endif()
endif()

# The programs' malloc (dnpo_heap, linked by dnpo_dist and the benchmarks). A training step frees
# and reallocates the same large blocks every step; glibc serves blocks over its mmap threshold
# with fresh pages, so each step page-faults them in again (benchmarks/RESULTS.md, "The heap").
# tcmalloc (Debian libgoogle-perftools-dev) keeps freed spans for reuse
# and still holds the np 4 FSDP memory bound. Sanitizers and libFuzzer bring their own malloc;
# CUDA builds keep glibc until a GPU run has checked tcmalloc beside CUDA's libraries.
add_library(dnpo_heap INTERFACE)
set(dnpo_heap_choice "${DNPO_HEAP}")
if(dnpo_heap_choice STREQUAL "AUTO")
  set(dnpo_heap_choice tcmalloc)
  if(DNPO_SANITIZE_ADDRESS OR DNPO_SANITIZE_UNDEFINED OR DNPO_SANITIZE_THREAD OR DNPO_FUZZ
     OR DNPO_CUDA_ENABLED)
    set(dnpo_heap_choice glibc)
  endif()
endif()
if(dnpo_heap_choice STREQUAL "tcmalloc")
  find_library(DNPO_TCMALLOC_LIBRARY NAMES tcmalloc_minimal libtcmalloc_minimal.so.4)
  if(NOT DNPO_TCMALLOC_LIBRARY)
    message(FATAL_ERROR "DNPO_HEAP=${DNPO_HEAP} needs tcmalloc: apt-get install "
                        "libgoogle-perftools-dev (launch/install-deps), or set -DDNPO_HEAP=glibc")
  endif()
  # Linked, not preloaded: it is loaded before anything allocates, and nothing frees across heaps.
  target_link_libraries(dnpo_heap INTERFACE ${DNPO_TCMALLOC_LIBRARY})
elseif(NOT dnpo_heap_choice STREQUAL "glibc")
  message(FATAL_ERROR "DNPO_HEAP=${DNPO_HEAP}: expected AUTO, tcmalloc or glibc")
endif()
set(DNPO_HEAP_USED ${dnpo_heap_choice})

message(STATUS "dnpo: heap ${DNPO_HEAP_USED}")
message(STATUS "dnpo: LibTorch ${Torch_VERSION} at ${Torch_DIR}; CUDA ${DNPO_CUDA_ENABLED}; ${dnpo_cblas_status}; ${dnpo_c10d_status}")
