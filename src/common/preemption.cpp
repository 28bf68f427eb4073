// Signal handlers that only store the signal number; see preemption.h.
#include "dnpo/common/preemption.h"

#include <csignal>

namespace dnpo::preemption {
namespace {

volatile std::sig_atomic_t requested = 0;  // written by the handler: async-signal-safe

extern "C" void on_signal(int signal_number) {
  requested = signal_number;
}

}  // namespace

void install_handlers() {
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // blocking calls (MPI, file I/O) go on after the handler
  sigaction(SIGUSR1, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

int requested_signal() {
  return requested;
}

void request(int signal_number) {
  requested = signal_number;
}

void clear() {
  requested = 0;
}

}  // namespace dnpo::preemption
