// The Comm a test hands to code that runs on any number of ranks when it runs as one process.
#pragma once

#include <memory>

#include "dnpo/dist/comm.h"

namespace dnpo::test {

/// A world of one on the CPU, shared by the tests of one binary.
inline dist::Comm& one_process() {
  static const std::unique_ptr<dist::Comm> comm = dist::Comm::one_process();
  return *comm;
}

}  // namespace dnpo::test
