// BLAS kernel check and one-time re-exec with OPENBLAS_CORETYPE; see blas_setup.h.
#include "blas_setup.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <dlfcn.h>
#include <unistd.h>

namespace dnpo::app {
namespace {

constexpr const char* kReexecGuard = "DNPO_BLAS_REEXEC";  // set on the re-executed process

std::string cpu_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) == 0) {
      return line + " ";
    }
  }
  return "";
}

bool has_flag(const std::string& flags, const std::string& flag) {
  return flags.find(" " + flag + " ") != std::string::npos;
}

}  // namespace

std::string ensure_fast_blas(int argc, char** argv) {
  (void)argc;
  using CoreName = char* (*)();
  auto* corename_fn = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (corename_fn == nullptr) {
    return "BLAS: not OpenBLAS (reference BLAS is ~14x slower; run launch/install-deps)";
  }
  std::string core = corename_fn();
  std::string lower = core;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) {
    return static_cast<char>(std::tolower(c));
  });
  const bool generic = lower == "prescott" || lower == "core2" || lower == "nehalem" ||
                       lower == "unknown" || lower == "katmai";
  if (generic && std::getenv("OPENBLAS_CORETYPE") == nullptr &&
      std::getenv(kReexecGuard) == nullptr) {
    const auto flags = cpu_flags();
    const char* target = nullptr;
    if (has_flag(flags, "avx512f") && has_flag(flags, "avx512bw") && has_flag(flags, "avx512vl")) {
      target = "SkylakeX";
    } else if (has_flag(flags, "avx2") && has_flag(flags, "fma")) {
      target = "Haswell";
    }
    if (target != nullptr) {
      setenv("OPENBLAS_CORETYPE", target, 1);  // NOLINT(concurrency-mt-unsafe): before threads
      setenv(kReexecGuard, "1", 1);            // NOLINT(concurrency-mt-unsafe)
      execv("/proc/self/exe", argv);
      // execv only returns on failure: carry on with the slow kernels.
    }
  }
  std::ostringstream out;
  out << "BLAS: OpenBLAS core " << core;
  if (const char* forced = std::getenv("OPENBLAS_CORETYPE")) {
    out << " (OPENBLAS_CORETYPE=" << forced << ")";
  }
  return out.str();
}

}  // namespace dnpo::app
