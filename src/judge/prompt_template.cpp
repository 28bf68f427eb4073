// Template files, rendering and strict score parsing (see prompt_template.h). Pure functions.
#include "dnpo/judge/prompt_template.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "dnpo/common/error.h"

namespace dnpo::judge {
namespace {

constexpr std::string_view kQuestion = "{question}";
constexpr std::string_view kAnswer = "{answer}";
constexpr std::size_t kMaxNumberChars = 12;

std::string_view trim(std::string_view s) {
  const auto is_space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  };
  while (!s.empty() && is_space(s.front())) {
    s.remove_prefix(1);
  }
  while (!s.empty() && is_space(s.back())) {
    s.remove_suffix(1);
  }
  return s;
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

/// A plain decimal number "123" or "12.5" (no sign, exponent, or spaces), at most
/// kMaxNumberChars long; its value, or nullopt.
std::optional<double> parse_plain_number(std::string_view s) {
  if (s.empty() || s.size() > kMaxNumberChars) {
    return std::nullopt;
  }
  std::size_t i = 0;
  while (i < s.size() && is_digit(s[i])) {
    ++i;
  }
  if (i == 0) {
    return std::nullopt;
  }
  if (i < s.size()) {
    if (s[i] != '.' || i + 1 == s.size()) {
      return std::nullopt;
    }
    for (std::size_t j = i + 1; j < s.size(); ++j) {
      if (!is_digit(s[j])) {
        return std::nullopt;
      }
    }
  }
  const std::string text(s);
  return std::strtod(text.c_str(), nullptr);
}

std::optional<double> in_range(const PromptTemplate& tmpl, std::optional<double> v) {
  if (!v || !std::isfinite(*v) || *v < tmpl.score_min || *v > tmpl.score_max) {
    return std::nullopt;
  }
  return v;
}

/// The first "<open>number<close>" in `reply` whose inside is a plain number (FastChat's
/// regex \[\[(\d+\.?\d*)\]\] and \[(\d+\.?\d*)\]).
std::optional<double> find_bracketed(std::string_view reply,
                                     std::string_view open,
                                     std::string_view close) {
  for (std::size_t at = reply.find(open); at != std::string_view::npos;
       at = reply.find(open, at + 1)) {
    const std::size_t start = at + open.size();
    const std::size_t end = reply.find(close, start);
    if (end == std::string_view::npos) {
      return std::nullopt;
    }
    std::string_view inside = reply.substr(start, end - start);
    if (!inside.empty() && inside.back() == '.') {
      inside.remove_suffix(1);  // "[[7.]]" as FastChat accepts it
    }
    if (auto v = parse_plain_number(inside)) {
      return v;
    }
  }
  return std::nullopt;
}

double parse_header_number(const std::string& value, const std::string& where) {
  char* end = nullptr;
  const double v = std::strtod(value.c_str(), &end);
  DNPO_CHECK_WITH(ConfigError,
                  !value.empty() && end != nullptr && *end == '\0' && std::isfinite(v),
                  "{}: expected a number, got \"{}\"",
                  where,
                  value);
  return v;
}

}  // namespace

PromptTemplate parse_template(const std::string& text, const std::string& name) {
  PromptTemplate t;
  t.name = name;
  t.hash = hex64(hash_text(text));
  std::istringstream in(text);
  std::string line;
  int line_no = 0;
  bool body_started = false;
  while (std::getline(in, line)) {
    ++line_no;
    const std::string where = "judge template " + name + ":" + std::to_string(line_no);
    if (trim(line) == "---") {
      body_started = true;
      break;
    }
    const auto stripped = trim(line);
    if (stripped.empty() || stripped.front() == '#') {
      continue;
    }
    const auto eq = stripped.find('=');
    DNPO_CHECK_WITH(ConfigError,
                    eq != std::string_view::npos,
                    "{}: expected \"key = value\" or \"---\", got \"{}\"",
                    where,
                    stripped);
    const std::string key(trim(stripped.substr(0, eq)));
    const std::string value(trim(stripped.substr(eq + 1)));
    if (key == "score_format") {
      DNPO_CHECK_WITH(ConfigError,
                      value == "bare" || value == "brackets",
                      "{}: score_format must be \"bare\" or \"brackets\", got \"{}\"",
                      where,
                      value);
      t.format = value == "bare" ? ScoreFormat::kBare : ScoreFormat::kBrackets;
    } else if (key == "score_min") {
      t.score_min = parse_header_number(value, where);
    } else if (key == "score_max") {
      t.score_max = parse_header_number(value, where);
    } else if (key == "system") {
      t.system = value;
    } else {
      DNPO_FAIL(
          ConfigError,
          "{}: unknown header key \"{}\"; expected score_format, score_min, score_max or system",
          where,
          key);
    }
  }
  DNPO_CHECK_WITH(
      ConfigError, body_started, "judge template {}: no \"---\" line before the prompt", name);
  std::ostringstream body;
  body << in.rdbuf();
  t.body = body.str();
  if (!t.body.empty() && t.body.back() == '\n') {
    t.body.pop_back();
  }
  const auto q = t.body.find(kQuestion);
  const auto a = t.body.find(kAnswer);
  DNPO_CHECK_WITH(
      ConfigError,
      q != std::string::npos && a != std::string::npos && q < a &&
          t.body.find(kQuestion, q + 1) == std::string::npos &&
          t.body.find(kAnswer, a + 1) == std::string::npos,
      "judge template {}: the prompt must contain {{question}} and then {{answer}}, once each",
      name);
  DNPO_CHECK_WITH(ConfigError,
                  t.score_min < t.score_max,
                  "judge template {}: score_min ({}) must be < score_max ({})",
                  name,
                  t.score_min,
                  t.score_max);
  return t;
}

PromptTemplate load_template(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  DNPO_CHECK_WITH(ConfigError,
                  in.good(),
                  "cannot read judge template '{}' (judge.template); hint: paths are relative to "
                  "the working directory, e.g. configs/judge/default_0_100.txt",
                  path);
  std::ostringstream text;
  text << in.rdbuf();
  return parse_template(text.str(), std::filesystem::path(path).stem().string());
}

std::string render(const PromptTemplate& tmpl, std::string_view question, std::string_view answer) {
  const auto q = tmpl.body.find(kQuestion);
  const auto a = tmpl.body.find(kAnswer);
  std::string out;
  out.reserve(tmpl.body.size() + question.size() + answer.size());
  out.append(tmpl.body, 0, q);
  out.append(question);
  out.append(tmpl.body, q + kQuestion.size(), a - q - kQuestion.size());
  out.append(answer);
  out.append(tmpl.body, a + kAnswer.size(), std::string::npos);
  return out;
}

std::optional<std::pair<std::string, std::string>> unrender(const PromptTemplate& tmpl,
                                                            std::string_view message) {
  const std::string_view body = tmpl.body;
  const auto q = body.find(kQuestion);
  const auto a = body.find(kAnswer);
  const auto prefix = body.substr(0, q);
  const auto middle = body.substr(q + kQuestion.size(), a - q - kQuestion.size());
  const auto suffix = body.substr(a + kAnswer.size());
  if (message.size() < prefix.size() + middle.size() + suffix.size() ||
      message.substr(0, prefix.size()) != prefix ||
      message.substr(message.size() - suffix.size()) != suffix) {
    return std::nullopt;
  }
  const auto rest = message.substr(prefix.size(), message.size() - prefix.size() - suffix.size());
  const auto m = rest.find(middle);
  if (m == std::string_view::npos) {
    return std::nullopt;
  }
  return std::make_pair(std::string(rest.substr(0, m)),
                        std::string(rest.substr(m + middle.size())));
}

std::optional<double> parse_score(const PromptTemplate& tmpl, std::string_view reply) {
  if (tmpl.format == ScoreFormat::kBare) {
    return in_range(tmpl, parse_plain_number(trim(reply)));
  }
  if (auto v = find_bracketed(reply, "[[", "]]")) {
    return in_range(tmpl, v);
  }
  return in_range(tmpl, find_bracketed(reply, "[", "]"));
}

std::optional<std::string> chat_reply_text(std::string_view body) {
  const auto j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return std::nullopt;
  }
  const auto choices = j.find("choices");
  if (choices == j.end() || !choices->is_array() || choices->empty() ||
      !(*choices)[0].is_object()) {
    return std::nullopt;
  }
  const auto& choice = (*choices)[0];
  const auto message = choice.find("message");
  if (message == choice.end() || !message->is_object()) {
    return std::nullopt;
  }
  const auto content = message->find("content");
  if (content == message->end() || !content->is_string()) {
    return std::nullopt;
  }
  return content->get<std::string>();
}

double score_0_100(const PromptTemplate& tmpl, double judge_score) {
  // Multiplied before dividing: 29 of 0..100 stays 29, not 28.999999999999996.
  return (judge_score - tmpl.score_min) * 100.0 / (tmpl.score_max - tmpl.score_min);
}

std::string format_reply(const PromptTemplate& tmpl, double score_0_100) {
  const double v = tmpl.score_min + (tmpl.score_max - tmpl.score_min) * score_0_100 / 100.0;
  const long rounded = std::lround(v);
  if (tmpl.format == ScoreFormat::kBare) {
    return std::to_string(rounded);
  }
  return "Rating: [[" + std::to_string(rounded) + "]]";
}

std::uint64_t hash_text(std::string_view text) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (const char c : text) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::string hex64(std::uint64_t value) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(value));
  return buf;
}

}  // namespace dnpo::judge
