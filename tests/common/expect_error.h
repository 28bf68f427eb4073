// The tests' one way to check an error: that a call throws a given dnpo error type, and what its
// message says. Test-only.
//
//   EXPECT_ERROR(ConfigError, [&] { load_config(path); }, "train.lrr", "did you mean");
//   const std::string msg = test::error_of<DataError>([&] { read_prompts_jsonl(path); });
//   EXPECT_CONTAINS(msg, path);
//
// Wrap fn in parentheses when it holds a comma outside parentheses (a capture list [&a, &b],
// braces {1, 2}, template arguments): the preprocessor splits macro arguments there.
#pragma once

#include <cstdlib>
#include <exception>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <typeinfo>
#include <utility>

#include <cxxabi.h>
#include <gtest/gtest.h>

namespace dnpo::test {
namespace detail {

inline std::string type_name(const std::type_info& type) {
  int status = 0;
  const std::unique_ptr<char, void (*)(void*)> name(
      abi::__cxa_demangle(type.name(), nullptr, nullptr, &status), std::free);
  return status == 0 && name != nullptr ? std::string(name.get()) : std::string(type.name());
}

/// The message of the E that fn() throws; none, and a (non-fatal) test failure at file:line, when
/// fn throws nothing or an exception that is not an E.
template <typename E, typename F>
std::optional<std::string> caught(F&& fn, const char* file, int line) {
  const std::string expected = type_name(typeid(E));
  try {
    try {
      std::forward<F>(fn)();
    } catch (const E& e) {
      return std::string(e.what());
    }
  } catch (const std::exception& e) {
    ADD_FAILURE_AT(file, line) << "expected a " << expected << "; it threw a "
                               << type_name(typeid(e)) << ": " << e.what();
    return std::nullopt;
  } catch (...) {
    ADD_FAILURE_AT(file, line) << "expected a " << expected
                               << "; it threw something not derived from std::exception";
    return std::nullopt;
  }
  ADD_FAILURE_AT(file, line) << "expected a " << expected << "; nothing was thrown";
  return std::nullopt;
}

}  // namespace detail

/// The message of the E that fn() throws. When fn throws nothing, or an exception that is not an
/// E, "" and a (non-fatal) test failure at the caller's file and line: file and line default to
/// the call site (__builtin_FILE / __builtin_LINE, GCC and Clang), so leave them out.
template <typename E, typename F>
std::string error_of(F&& fn, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return detail::caught<E>(std::forward<F>(fn), file, line).value_or("");
}

/// EXPECT_CONTAINS's check: `text` contains `part`.
inline ::testing::AssertionResult contains(const char* text_expr,
                                           const char* part_expr,
                                           const std::string& text,
                                           const std::string& part) {
  if (text.find(part) != std::string::npos) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << text_expr << " does not contain " << part_expr
                                       << "\n  missing: " << part << "\n  in: " << text;
}

/// EXPECT_ERROR's check of one part: the error's message contains it.
inline ::testing::AssertionResult message_contains(const char* /*message_expr*/,
                                                   const char* /*part_expr*/,
                                                   const std::string& message,
                                                   const std::string& part) {
  return contains("the error's message", "an expected part", message, part);
}

}  // namespace dnpo::test

/// `text` (a std::string or C string) contains `part`; each evaluated once.
#define EXPECT_CONTAINS(text, part) EXPECT_PRED_FORMAT2(::dnpo::test::contains, text, part)

/// fn() throws an E whose message contains each of the parts (one or more strings). It fails
/// when fn throws nothing, throws another type (one failure; the parts are not checked then), or
/// a part is missing from the message (a failure per missing part).
#define EXPECT_ERROR(E, fn, ...)                                                                   \
  do {                                                                                             \
    const auto dnpo_error_message = ::dnpo::test::detail::caught<E>(fn, __FILE__, __LINE__);       \
    if (dnpo_error_message) {                                                                      \
      for (const std::string& dnpo_error_part : std::initializer_list<std::string>{__VA_ARGS__}) { \
        EXPECT_PRED_FORMAT2(::dnpo::test::message_contains, *dnpo_error_message, dnpo_error_part); \
      }                                                                                            \
    }                                                                                              \
  } while (false)
