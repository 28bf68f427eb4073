// Loads libdnpo_spm_shim.so (see spm_shim.cpp) once per process and hands out its functions.
// Private to data/.
#pragma once

#include <cstddef>

namespace dnpo::data::detail {

struct SpmLibrary {
  void* (*open)(const char*, char*, std::size_t) = nullptr;
  void (*close)(void*) = nullptr;
  void (*info)(void*, int*, int*, int*, int*) = nullptr;
  int (*is_control)(void*, int) = nullptr;
  long (*encode)(void*, const char*, std::size_t, int*, std::size_t, char*, std::size_t) = nullptr;
  long (*decode)(void*, const int*, std::size_t, char*, std::size_t, char*, std::size_t) = nullptr;
};

/// The loaded shim; throws DataError naming every path tried when it cannot be loaded.
/// Thread-safe (loaded once).
const SpmLibrary& spm_library();

}  // namespace dnpo::data::detail
