// Environment lookups (only through env.h's declared names or launcher variables).
#include "dnpo/common/env.h"

#include <cstdlib>

namespace dnpo::env {

std::optional<std::string> get(const char* name) {
  const char* value = std::getenv(name);  // NOLINT(concurrency-mt-unsafe): read-only at start-up
  if (value == nullptr || *value == '\0') {
    return std::nullopt;
  }
  return std::string(value);
}

}  // namespace dnpo::env
