// See allocator.h.
#include "dnpo/common/allocator.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace dnpo {

void use_fixed_mmap_threshold(std::size_t bytes) {
#if defined(__GLIBC__)
  // Setting M_MMAP_THRESHOLD also turns off glibc's dynamic adjustment of it.
  mallopt(M_MMAP_THRESHOLD, static_cast<int>(bytes));
#else
  (void)bytes;
#endif
}

}  // namespace dnpo
