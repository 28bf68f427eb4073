// TOML → RunConfig: parse, apply --set overrides to the table, map each table to its struct through
// the schema (types, ranges, unknown keys, with source positions), and RunConfig → TOML text.
// The only code in dnpo that includes toml++. Cross-field rules are in validate.cpp.
#include "dnpo/config/loader.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <toml++/toml.h>

#include "dnpo/common/error.h"
#include "schema.h"

namespace dnpo::config {
namespace {

using schema::Rule;
using schema::type_noun;

/// Overrides are parsed with the source name "--set <text>", so their nodes say where they came
/// from after being merged into the file's table.
constexpr std::string_view kOverridePrefix = "--set ";

// --- where a value came from ---

bool is_override(const toml::source_region& source) {
  return source.path && source.path->rfind(kOverridePrefix, 0) == 0;
}

/// "<file>:<line>:<col>: " for file values, "--set a.b=v: " for overrides, "" when unknown.
std::string location(const toml::source_region& source) {
  if (is_override(source) || (source.path && source.begin.line == 0)) {
    return *source.path + ": ";
  }
  if (source.begin.line == 0) {
    return "";
  }
  return detail::concat(source.path ? *source.path : std::string("<toml>"),
                        ":",
                        source.begin.line,
                        ":",
                        source.begin.column,
                        ": ");
}

/// The key's own position, unless an override replaced its value (then the override).
const toml::source_region& key_source(const toml::key& key, const toml::node& value) {
  return is_override(value.source()) || !key.source().path ? value.source() : key.source();
}

/// A node as messages show it: `-1`, `"abc"`, `["add", 1]`; with its type when `with_type`.
std::string describe_node(const toml::node& node, bool with_type) {
  const auto typed = [with_type](const char* type, const std::string& text) {
    return with_type ? std::string(type) + " " + text : text;
  };
  if (const auto* v = node.as_string()) {
    return typed("string", schema::format_toml(v->get()));
  }
  if (const auto* v = node.as_integer()) {
    return typed("integer", schema::format_toml(v->get()));
  }
  if (const auto* v = node.as_floating_point()) {
    return typed("float", schema::format_toml(v->get()));
  }
  if (const auto* v = node.as_boolean()) {
    return typed("boolean", schema::format_toml(v->get()));
  }
  if (const auto* v = node.as_array()) {
    std::string text = "[";
    for (std::size_t i = 0; i < v->size(); ++i) {
      text += (i == 0 ? "" : ", ") + describe_node(*v->get(i), false);
    }
    return typed("array", text + "]");
  }
  return node.is_table() ? "a table" : "a date/time";
}

/// A shell drops the quotes of `--set run.name="123"`, so "123" arrives as an integer.
std::string quote_hint(const toml::node& node, std::string_view noun) {
  if (!is_override(node.source()) || node.is_string() || noun != type_noun<std::string>()) {
    return "";
  }
  const std::string text = node.source().path->substr(kOverridePrefix.size());
  const auto equals = text.find('=');
  return detail::concat("; hint: quote the string past the shell: --set '",
                        text.substr(0, equals + 1),
                        "\"",
                        text.substr(equals + 1),
                        "\"'");
}

[[noreturn]] void fail_value(const std::string& path,
                             const toml::node& node,
                             std::string_view noun,
                             const Rule& rule,
                             bool wrong_type,
                             std::string_view note = "") {
  DNPO_FAIL(ConfigError,
            "{}config key '{}': expected {}, got {}{}{}",
            location(node.source()),
            path,
            schema::expectation(noun, rule),
            describe_node(node, wrong_type),
            note,
            quote_hint(node, noun));
}

// --- one value per C++ field type ---

/// The node's value as the TOML type `Toml`, or a ConfigError expecting a `Field`.
template <typename Field, typename Toml>
Toml typed_value(const std::string& path, const toml::node& node, const Rule& rule) {
  const auto* v = node.as<Toml>();
  if (v == nullptr) {
    fail_value(path, node, type_noun<Field>(), rule, true);
  }
  return v->get();
}

/// A ConfigError expecting a `Field` where `x` is outside the rule's range or choices.
template <typename Field, typename Value>
void check_admitted(const std::string& path,
                    const toml::node& node,
                    const Rule& rule,
                    const Value& x) {
  if (!schema::admits(rule, x)) {
    fail_value(path, node, type_noun<Field>(), rule, false);
  }
}

void read_value(const std::string& path, const toml::node& node, const Rule& rule, bool& out) {
  out = typed_value<bool, bool>(path, node, rule);
}

void read_value(const std::string& path, const toml::node& node, const Rule& rule, int& out) {
  const auto x = typed_value<int, std::int64_t>(path, node, rule);
  if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max()) {
    fail_value(path, node, type_noun<int>(), rule, false, " (outside the 32-bit range)");
  }
  check_admitted<int>(path, node, rule, static_cast<double>(x));
  out = static_cast<int>(x);
}

void read_value(const std::string& path,
                const toml::node& node,
                const Rule& rule,
                std::uint64_t& out) {
  const auto x = typed_value<std::uint64_t, std::int64_t>(path, node, rule);
  if (x < 0) {
    fail_value(path, node, type_noun<std::uint64_t>(), rule, false);
  }
  check_admitted<std::uint64_t>(path, node, rule, static_cast<double>(x));
  out = static_cast<std::uint64_t>(x);
}

void read_value(const std::string& path, const toml::node& node, const Rule& rule, double& out) {
  double x = 0.0;
  if (const auto* f = node.as_floating_point()) {
    x = f->get();
  } else if (const auto* i = node.as_integer()) {
    x = static_cast<double>(i->get());
  } else {
    fail_value(path, node, type_noun<double>(), rule, true);
  }
  if (!std::isfinite(x)) {
    fail_value(path, node, type_noun<double>(), rule, false, " (must be finite)");
  }
  check_admitted<double>(path, node, rule, x);
  out = x;
}

void read_value(const std::string& path,
                const toml::node& node,
                const Rule& rule,
                std::string& out) {
  // A string key whose choices are "true" and "false" among others (e.g. "auto") also takes a
  // TOML boolean, which it was before it had a third choice.
  if (const auto* b = node.as_boolean(); b != nullptr && schema::admits(rule, "true") &&
                                         schema::admits(rule, "false") && !rule.choices.empty()) {
    out = b->get() ? "true" : "false";
    return;
  }
  std::string x = typed_value<std::string, std::string>(path, node, rule);
  check_admitted<std::string>(path, node, rule, x);
  out = std::move(x);
}

void read_value(const std::string& path,
                const toml::node& node,
                const Rule& rule,
                std::vector<std::string>& out) {
  constexpr std::string_view kNoun = type_noun<std::vector<std::string>>();
  const auto* array = node.as_array();
  if (array == nullptr) {
    fail_value(path, node, kNoun, rule, true);
  }
  if (rule.non_empty && array->empty()) {
    fail_value(path, node, kNoun, rule, false);
  }
  Rule element_rule;
  element_rule.choices = rule.choices;
  std::vector<std::string> values;
  for (std::size_t i = 0; i < array->size(); ++i) {
    std::string value;
    read_value(detail::concat(path, "[", i, "]"), *array->get(i), element_rule, value);
    values.push_back(std::move(value));
  }
  out = std::move(values);
}

// --- unknown keys ---

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) {
    row[j] = j;
  }
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t substitute = diagonal + (a[i - 1] == b[j - 1] ? 0 : 1);
      diagonal = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, substitute});
    }
  }
  return row[b.size()];
}

/// "did you mean 'train.lr'?" for a close key of the same table (or the same key in another
/// table); otherwise the valid keys of the table ("" = the root, whose keys are the tables).
std::string unknown_key_hint(std::string_view table, std::string_view name) {
  std::vector<std::string> scope;      // full paths valid where `name` was found
  std::vector<std::string> elsewhere;  // full paths of keys spelled `name` in other tables
  schema::for_each_in(schema::tables(), [&](const auto& t) {
    if (table.empty()) {
      scope.emplace_back(t.name);
    }
    schema::for_each_in(t.keys, [&](const auto& k) {
      std::string path = detail::concat(t.name, ".", k.name);
      if (t.name == table) {
        scope.push_back(path);
      } else if (k.name == name) {
        elsewhere.push_back(path);
      }
    });
  });
  const std::size_t prefix = table.empty() ? 0 : table.size() + 1;
  const std::string* best = nullptr;
  std::size_t best_distance = std::min<std::size_t>(2, name.size() / 2);
  for (const auto& path : scope) {
    const std::size_t d = edit_distance(name, std::string_view(path).substr(prefix));
    if (d <= best_distance) {
      best = &path;
      best_distance = d;
    }
  }
  if (best != nullptr) {
    return "; hint: did you mean '" + *best + "'?";
  }
  if (!elsewhere.empty()) {
    return "; hint: did you mean '" + elsewhere.front() + "'?";
  }
  std::string list;
  for (const auto& path : scope) {
    list += (list.empty() ? "" : ", ") + path.substr(prefix);
  }
  return table.empty() ? "; hint: the tables are " + list
                       : detail::concat("; hint: the keys of [", table, "] are ", list);
}

[[noreturn]] void fail_unknown(std::string_view table,
                               const toml::key& key,
                               const toml::node& value) {
  const std::string path =
      table.empty() ? std::string(key.str()) : detail::concat(table, ".", key.str());
  DNPO_FAIL(ConfigError,
            "{}unknown config key '{}'{}",
            location(key_source(key, value)),
            path,
            unknown_key_hint(table, key.str()));
}

// --- tables → structs ---

template <typename S, typename... T>
void map_table(const schema::Table<S, T...>& table, const toml::node& node, S& out) {
  const auto* entries = node.as_table();
  if (entries == nullptr) {
    DNPO_FAIL(ConfigError,
              "{}config key '{}': expected a table, got {}",
              location(node.source()),
              table.name,
              describe_node(node, true));
  }
  for (auto&& entry : *entries) {
    const toml::key& key = entry.first;
    const toml::node& value = entry.second;
    bool known = false;
    schema::for_each_in(table.keys, [&](const auto& k) {
      if (k.name == key.str()) {
        known = true;
        read_value(detail::concat(table.name, ".", k.name), value, k.rule, out.*k.member);
      }
    });
    if (!known) {
      fail_unknown(table.name, key, value);
    }
  }
}

RunConfig map_document(const toml::table& document) {
  RunConfig config;
  for (auto&& entry : document) {
    const toml::key& key = entry.first;
    const toml::node& value = entry.second;
    bool known = false;
    schema::for_each_in(schema::tables(), [&](const auto& table) {
      if (table.name == key.str()) {
        known = true;
        map_table(table, value, config.*table.member);
      }
    });
    if (!known) {
      fail_unknown("", key, value);
    }
  }
  return config;
}

// --- overrides ---

std::string trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string_view::npos) {
    return "";
  }
  return std::string(text.substr(first, text.find_last_not_of(" \t") - first + 1));
}

/// "a.b=v" as a one-key TOML document; v is a TOML value, or else a bare string.
toml::table parse_override(const std::string& text) {
  const std::string source = std::string(kOverridePrefix) + text;
  const auto equals = text.find('=');
  DNPO_CHECK_WITH(ConfigError,
                  equals != std::string::npos && !trim(text.substr(0, equals)).empty() &&
                      text.find_first_of("\r\n") == std::string::npos,
                  "{}: expected KEY=VALUE on one line, e.g. --set train.lr=1e-4",
                  source);
  const std::string key = trim(text.substr(0, equals));
  const std::string value = trim(text.substr(equals + 1));
  try {
    return toml::parse(key + " = " + value, std::string_view(source));
  } catch (const toml::parse_error&) {
    // not a TOML value: taken as a bare string below
  }
  try {
    return toml::parse(key + " = " + schema::format_toml(value), std::string_view(source));
  } catch (const toml::parse_error& e) {
    DNPO_FAIL(ConfigError,
              "{}: invalid key '{}': {}; expected a dotted key such as train.lr",
              source,
              key,
              e.description());
  }
}

/// Tables merge key by key; any other value replaces what `into` held.
void merge_into(toml::table& into, toml::table& from) {
  for (auto&& entry : from) {
    toml::node* existing = into.get(entry.first.str());
    if (existing != nullptr && existing->is_table() && entry.second.is_table()) {
      merge_into(*existing->as_table(), *entry.second.as_table());
      continue;
    }
    entry.second.visit([&](auto& node) { into.insert_or_assign(entry.first, std::move(node)); });
  }
}

RunConfig resolve(toml::table document, const std::vector<std::string>& overrides) {
  for (const auto& text : overrides) {
    toml::table override_table = parse_override(text);
    merge_into(document, override_table);
  }
  return map_document(document);
}

[[noreturn]] void fail_parse(const toml::parse_error& error) {
  DNPO_FAIL(ConfigError, "{}invalid TOML: {}", location(error.source()), error.description());
}

// --- struct → TOML text ---

template <typename T>
std::string value_text(std::string_view /*path*/, const T& value) {
  return schema::format_toml(value);
}

std::string value_text(std::string_view path, std::uint64_t value) {
  DNPO_CHECK_WITH(ConfigError,
                  value <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
                  "config key '{}': {} does not fit a TOML integer; expected <= 2^63 - 1",
                  path,
                  value);
  return schema::format_toml(value);
}

}  // namespace

RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  toml::table document;
  if (!path.empty()) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
      const bool exists = std::filesystem::exists(path, ec);
      DNPO_FAIL(ConfigError,
                "cannot read config file '{}': {}{}",
                path,
                exists ? "not a regular file" : "no such file",
                std::filesystem::path(path).is_relative()
                    ? "; hint: relative paths start at the working directory " +
                          std::filesystem::current_path(ec).string()
                    : "");
    }
    try {
      document = toml::parse_file(path);
    } catch (const toml::parse_error& e) {
      fail_parse(e);
    }
  }
  return resolve(std::move(document), overrides);
}

RunConfig parse_config(std::string_view toml_text,
                       const std::string& source_name,
                       const std::vector<std::string>& overrides) {
  toml::table document;
  try {
    document = toml::parse(toml_text, std::string_view(source_name));
  } catch (const toml::parse_error& e) {
    fail_parse(e);
  }
  return resolve(std::move(document), overrides);
}

std::string to_toml(const RunConfig& config) {
  std::string out = "# dnpo resolved config: every table and key, defaults included.\n";
  schema::for_each_in(schema::tables(), [&](const auto& table) {
    out += detail::concat("\n[", table.name, "]\n");
    const auto& section = config.*table.member;
    schema::for_each_in(table.keys, [&](const auto& key) {
      const std::string path = detail::concat(table.name, ".", key.name);
      out += detail::concat(key.name, " = ", value_text(path, section.*key.member), "\n");
    });
  });
  return out;
}

}  // namespace dnpo::config
