// Logging through spdlog with the project's pattern "12:03:04.512 I r3 message".
// info_rank0() prints once per job; warnings and errors print on every rank.
#pragma once

#include <string>

#include <spdlog/spdlog.h>

namespace dnpo::log {

/// Installs the stderr logger with the rank in the prefix. Call again after dist init.
void init(int rank = 0, const std::string& level = "info");
int rank();

template <typename... Args>
void info(spdlog::format_string_t<Args...> fmt, Args&&... args) {
  spdlog::info(fmt, std::forward<Args>(args)...);
}
template <typename... Args>
void info_rank0(spdlog::format_string_t<Args...> fmt, Args&&... args) {
  if (rank() == 0) {
    spdlog::info(fmt, std::forward<Args>(args)...);
  }
}
template <typename... Args>
void warn(spdlog::format_string_t<Args...> fmt, Args&&... args) {
  spdlog::warn(fmt, std::forward<Args>(args)...);
}
template <typename... Args>
void error(spdlog::format_string_t<Args...> fmt, Args&&... args) {
  spdlog::error(fmt, std::forward<Args>(args)...);
}
template <typename... Args>
void debug(spdlog::format_string_t<Args...> fmt, Args&&... args) {
  spdlog::debug(fmt, std::forward<Args>(args)...);
}

}  // namespace dnpo::log
