// Typed exceptions and the DNPO_CHECK family: every error says what failed, where, and on which
// rank. No torch, no MPI here; the rank is registered once by dist init (or stays -1 in
// single-process tools).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace dnpo {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
class ConfigError : public Error {
 public:
  using Error::Error;
};
class DataError : public Error {
 public:
  using Error::Error;
};
class DistError : public Error {
 public:
  using Error::Error;
};
class CheckpointError : public Error {
 public:
  using Error::Error;
};
class JudgeError : public Error {
 public:
  using Error::Error;
};
class InternalError : public Error {
 public:
  using Error::Error;
};

/// The rank printed in error messages and log lines; -1 until dist init sets it.
void set_error_rank(int rank);
int error_rank();

namespace detail {
/// "<msg> (file:line) [rank r]"
std::string decorate_error(const std::string& msg, const char* file, int line);

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

/// `format` with each "{}" replaced by the next of `args`; "{{" and "}}" are literal braces.
/// Placeholders left without an argument stay as they are; arguments left over are appended.
std::string substitute(const char* format, const std::vector<std::string>& args);

/// The check macros' message: "{}" placeholders filled with the arguments as operator<< writes
/// them (so tensor sizes, dtypes and paths print without fmt formatters).
template <typename... Args>
std::string format_message(const char* format, const Args&... args) {
  return substitute(format, {concat(args)...});
}
}  // namespace detail
}  // namespace dnpo

/// User/input/environment errors: DNPO_CHECK_WITH(ConfigError, n > 0, "n is {}; expected > 0", n).
/// The message is built only on failure.
#define DNPO_CHECK_WITH(ErrorType, cond, ...)                                \
  do {                                                                       \
    if (!(cond)) {                                                           \
      throw ErrorType(::dnpo::detail::decorate_error(                        \
          ::dnpo::detail::format_message(__VA_ARGS__), __FILE__, __LINE__)); \
    }                                                                        \
  } while (false)

#define DNPO_CHECK(cond, ...) DNPO_CHECK_WITH(::dnpo::Error, cond, __VA_ARGS__)

/// Throw unconditionally with a typed error.
#define DNPO_FAIL(ErrorType, ...) DNPO_CHECK_WITH(ErrorType, false, __VA_ARGS__)

/// A bug in dnpo itself (the condition is the message).
#define DNPO_INTERNAL_ASSERT(...)        \
  DNPO_CHECK_WITH(::dnpo::InternalError, \
                  (__VA_ARGS__),         \
                  "internal error (please report): assertion failed: " #__VA_ARGS__)
