// The programs' malloc is the one the build chose (DNPO_HEAP, cmake/DnpoDependencies.cmake).
#include "dnpo/common/allocator.h"

#include <string>

#include <gtest/gtest.h>

namespace {

TEST(Heap, IsTheMallocTheBuildLinked) {
  const std::string expected = DNPO_EXPECTED_HEAP;  // "tcmalloc" or "glibc"
  const auto name = dnpo::heap_name();
  EXPECT_EQ(name.rfind(expected, 0), 0U)
      << "heap_name() = " << name << ", build chose " << expected;
  const auto line = dnpo::configure_heap();
  EXPECT_NE(line.find(expected), std::string::npos) << line;
}

}  // namespace
