// spdlog set-up: one stderr sink, pattern with a single-letter level and the rank.
#include "dnpo/common/log.h"

#include <atomic>

#include <spdlog/sinks/stdout_color_sinks.h>

namespace dnpo::log {
namespace {
std::atomic<int> g_rank{0};
}  // namespace

void init(int rank, const std::string& level) {
  g_rank = rank;
  spdlog::drop("dnpo");  // init runs again once the rank is known
  auto logger = spdlog::stderr_color_mt("dnpo");
  logger->set_pattern("%H:%M:%S.%e %L r" + std::to_string(rank) + " %v");
  logger->set_level(spdlog::level::from_str(level));
  spdlog::set_default_logger(logger);
}

int rank() {
  return g_rank;
}

}  // namespace dnpo::log
