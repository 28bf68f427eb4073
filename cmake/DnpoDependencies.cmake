# Every third-party dependency, found once (all Debian packages; see launch/install-deps).
find_package(Torch REQUIRED)
find_package(Threads REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(spdlog REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(TOMLPP REQUIRED IMPORTED_TARGET tomlplusplus)
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)
# Parallel HDF5 (Open MPI build) for checkpoints; zlib (its dependency) for their CRC-32s.
pkg_check_modules(HDF5 REQUIRED IMPORTED_TARGET hdf5-openmpi)
find_package(ZLIB REQUIRED)

# LibTorch's exported flags are global-ish; wrap them in one interface target with SYSTEM includes.
add_library(dnpo_torch INTERFACE)
target_link_libraries(dnpo_torch INTERFACE ${TORCH_LIBRARIES})
target_include_directories(dnpo_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})

find_package(MPI REQUIRED COMPONENTS C)
