// Rule checks and descriptions, and the TOML text of plain values (shared by the loader, to_toml
// and validate). No toml++ here.
#include "schema.h"

#include <array>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <system_error>

#include "dnpo/common/error.h"

namespace dnpo::config::schema {
namespace {

/// Shortest decimal text that reads back to `value` ("0.1", "1e-08", "10000").
std::string shortest(double value) {
  std::array<char, 64> buf{};
  const auto result = std::to_chars(buf.data(), buf.data() + buf.size(), value);
  DNPO_INTERNAL_ASSERT(result.ec == std::errc{});
  return {buf.data(), result.ptr};
}

std::string join_choices(const std::vector<std::string_view>& choices) {
  std::string out;
  for (const auto& choice : choices) {
    out += out.empty() ? "" : ", ";
    out += format_toml(std::string(choice));
  }
  return out;
}

std::string range_text(const Rule& rule) {
  const bool has_min = std::isfinite(rule.min);
  const bool has_max = std::isfinite(rule.max);
  if (has_min && has_max) {
    return std::string("in ") + (rule.min_open ? "(" : "[") + shortest(rule.min) + ", " +
           shortest(rule.max) + (rule.max_open ? ")" : "]");
  }
  if (has_min) {
    return (rule.min_open ? "> " : ">= ") + shortest(rule.min);
  }
  if (has_max) {
    return (rule.max_open ? "< " : "<= ") + shortest(rule.max);
  }
  return "";
}

}  // namespace

Rule at_least(double lo) {
  Rule r;
  r.min = lo;
  return r;
}

Rule positive() {
  Rule r = at_least(0);
  r.min_open = true;
  return r;
}

Rule non_negative() {
  return at_least(0);
}

Rule closed(double lo, double hi) {
  Rule r;
  r.min = lo;
  r.max = hi;
  return r;
}

Rule closed_open(double lo, double hi) {
  Rule r = closed(lo, hi);
  r.max_open = true;
  return r;
}

Rule open_closed(double lo, double hi) {
  Rule r = closed(lo, hi);
  r.min_open = true;
  return r;
}

Rule one_of(std::initializer_list<std::string_view> choices) {
  Rule r = non_empty();
  r.choices = choices;
  return r;
}

Rule non_empty() {
  Rule r;
  r.non_empty = true;
  return r;
}

Rule containing(std::string_view text) {
  Rule r = non_empty();
  r.contains = text;
  return r;
}

bool admits(const Rule& rule, double value) {
  if (std::isnan(value)) {
    return false;
  }
  const bool above_min = rule.min_open ? value > rule.min : value >= rule.min;
  const bool below_max = rule.max_open ? value < rule.max : value <= rule.max;
  return above_min && below_max;
}

bool admits(const Rule& rule, std::string_view value) {
  if (rule.non_empty && value.empty()) {
    return false;
  }
  if (value.find(rule.contains) == std::string_view::npos) {
    return false;
  }
  if (rule.choices.empty()) {
    return true;
  }
  for (const auto& choice : rule.choices) {
    if (choice == value) {
      return true;
    }
  }
  return false;
}

std::string expectation(std::string_view noun, const Rule& rule) {
  if (noun == type_noun<std::string>() && !rule.choices.empty()) {
    return "one of " + join_choices(rule.choices);
  }
  std::string out;
  if (rule.non_empty) {
    out = "a non-empty ";
  } else {
    const bool vowel = noun.find_first_of("aeiou") == 0;
    out = vowel ? "an " : "a ";
  }
  out += noun;
  const std::string range = range_text(rule);
  if (!range.empty()) {
    out += " " + range;
  }
  if (!rule.contains.empty()) {
    out += " containing " + format_toml(std::string(rule.contains));
  }
  if (!rule.choices.empty()) {
    out += ", each one of " + join_choices(rule.choices);
  }
  return out;
}

std::string format_toml(const std::string& value) {
  std::string out = "\"";
  for (const char c : value) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          std::array<char, 8> code{};
          std::snprintf(code.data(), code.size(), "\\u%04x", static_cast<unsigned>(c));
          out += code.data();
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string format_toml(std::int64_t value) {
  return std::to_string(value);
}

std::string format_toml(std::uint64_t value) {
  return std::to_string(value);
}

std::string format_toml(int value) {
  return std::to_string(value);
}

std::string format_toml(double value) {
  std::string out = shortest(value);
  // TOML needs a '.' or an exponent in a float; "inf" and "nan" are already TOML.
  if (out.find_first_of(".eni") == std::string::npos) {
    out += ".0";
  }
  return out;
}

std::string format_toml(bool value) {
  return value ? "true" : "false";
}

std::string format_toml(const std::vector<std::string>& value) {
  std::string out = "[";
  for (std::size_t i = 0; i < value.size(); ++i) {
    out += (i == 0 ? "" : ", ") + format_toml(value[i]);
  }
  return out + "]";
}

}  // namespace dnpo::config::schema
