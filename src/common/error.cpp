// Error decoration: file:line and the registered rank.
#include "dnpo/common/error.h"

#include <atomic>

namespace dnpo {
namespace {
std::atomic<int> g_error_rank{-1};
}  // namespace

void set_error_rank(int rank) {
  g_error_rank = rank;
}
int error_rank() {
  return g_error_rank;
}

namespace detail {
std::string substitute(const char* format, const std::vector<std::string>& args) {
  std::string out;
  std::size_t next = 0;
  for (const char* p = format; *p != '\0'; ++p) {
    if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
      out += *p++;
    } else if (p[0] == '{' && p[1] == '}' && next < args.size()) {
      out += args[next++];
      ++p;
    } else {
      out += *p;
    }
  }
  for (; next < args.size(); ++next) {
    out += args[next];
  }
  return out;
}

std::string decorate_error(const std::string& msg, const char* file, int line) {
  std::string where = file;
  const auto pos = where.rfind("/src/");
  if (pos != std::string::npos) {
    where = where.substr(pos + 1);
  }
  std::ostringstream out;
  out << msg << " (" << where << ":" << line << ")";
  if (error_rank() >= 0) {
    out << " [rank " << error_rank() << "]";
  }
  return out.str();
}
}  // namespace detail
}  // namespace dnpo
