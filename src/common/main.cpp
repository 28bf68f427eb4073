// guarded_main: the one last-resort catch of every program.
#include "dnpo/common/main.h"

#include <cstdio>
#include <exception>

namespace dnpo {

int guarded_main(const char* program,
                 int argc,
                 char** argv,
                 const std::function<int(int, char**)>& body,
                 const std::function<void()>& on_fatal) {
  try {
    return body(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: fatal: %s\n", program, e.what());
  } catch (...) {
    std::fprintf(stderr, "%s: fatal: unknown error\n", program);
  }
  std::fflush(stderr);
  if (on_fatal) {
    on_fatal();
  }
  return 1;
}

}  // namespace dnpo
