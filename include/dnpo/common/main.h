// main() for dnpo's programs and benchmarks: the body runs, and whatever escapes it becomes one
// line on stderr and exit code 1 instead of std::terminate.
#pragma once

#include <functional>

namespace dnpo {

/// Returns body(argc, argv); on an escaped exception prints "<program>: fatal: <what>" (the first
/// error's message, as thrown) to stderr, runs `on_fatal` (an MPI program ends the other ranks
/// there: they may be waiting in a collective for this one) and returns 1.
int guarded_main(const char* program,
                 int argc,
                 char** argv,
                 const std::function<int(int, char**)>& body,
                 const std::function<void()>& on_fatal = {});

}  // namespace dnpo
