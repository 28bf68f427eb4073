// Shared by the libFuzzer targets (tests/fuzz): an input is fine when the code under test returns
// or throws one of dnpo's own errors (a clear message for bad input); any other exception, a
// crash, a sanitizer report or a broken round-trip property is a finding.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "dnpo/common/error.h"

namespace dnpo::fuzz {

/// Runs f; dnpo::Error is the expected rejection, anything else aborts (libFuzzer saves the input).
template <typename F>
void expect_clean(F&& f) {
  try {
    f();
  } catch (const dnpo::Error&) {
    // bad input, reported as it should be
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: escaped exception: %s\n", e.what());
    std::abort();
  }
}

/// A property the code promises; aborts with `what` when it does not hold.
inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz: property broken: %s\n", what);
    std::abort();
  }
}

}  // namespace dnpo::fuzz
