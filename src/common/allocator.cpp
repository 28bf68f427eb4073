// See allocator.h.
#include "dnpo/common/allocator.h"

#include <dlfcn.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace dnpo {

namespace {

// gperftools' tc_version(major, minor, patch-string), found only when tcmalloc is in the process.
using TcVersionFn = const char* (*)(int*, int*, const char**);

TcVersionFn find_tc_version() {
  return reinterpret_cast<TcVersionFn>(dlsym(RTLD_DEFAULT, "tc_version"));
}

}  // namespace

std::string heap_name() {
  if (const auto tc_version = find_tc_version()) {
    int major = 0, minor = 0;
    const char* patch = "";
    tc_version(&major, &minor, &patch);
    return "tcmalloc " + std::to_string(major) + "." + std::to_string(minor) + patch;
  }
  return "glibc";
}

std::string configure_heap() {
  const auto name = heap_name();
  if (name != "glibc") {
    return "heap: " + name + " (freed blocks are reused without page faults)";
  }
  use_fixed_mmap_threshold();
  return "heap: glibc malloc, mmap threshold fixed at 4 MiB (build with DNPO_HEAP=tcmalloc for "
         "faster CPU steps)";
}

void use_fixed_mmap_threshold(std::size_t bytes) {
#if defined(__GLIBC__)
  // Setting M_MMAP_THRESHOLD also turns off glibc's dynamic adjustment of it.
  mallopt(M_MMAP_THRESHOLD, static_cast<int>(bytes));
#else
  (void)bytes;
#endif
}

}  // namespace dnpo
