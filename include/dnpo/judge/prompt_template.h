// Judge prompt templates (files under configs/judge/) and strict score parsing per template.
// No networking here: rendering a request's text and reading a reply's score are pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dnpo::judge {

/// How a template's reply carries the score.
enum class ScoreFormat {
  kBare,      ///< the whole reply (surrounding whitespace aside) is one number
  kBrackets,  ///< the first "[[x]]" in the reply, else the first "[x]" (MT-Bench single-v1)
};

/// One template file: header lines "key = value" ('#' lines are comments) up to a line "---",
/// then the user message with {question} and {answer} (each exactly once, question first).
/// Header keys: score_format ("bare" | "brackets"), score_min, score_max, system (optional
/// system message).
struct PromptTemplate {
  std::string name;  ///< the file's stem, e.g. "default_0_100"
  std::string system;
  std::string body;
  ScoreFormat format = ScoreFormat::kBare;
  double score_min = 0;
  double score_max = 100;
  std::string hash;  ///< 16 hex digits of the whole file text (cache key part)
};

/// Parses template text; `name` names it in errors. Throws ConfigError naming the line.
PromptTemplate parse_template(const std::string& text, const std::string& name);
/// Reads and parses a template file. Throws ConfigError naming the path.
PromptTemplate load_template(const std::string& path);

/// The user message for one (question, answer): placeholders replaced once each; text inserted
/// is never scanned again, so an answer containing "{question}" stays as it is.
std::string render(const PromptTemplate& tmpl, std::string_view question, std::string_view answer);

/// The inverse of render(): (question, answer) when `message` has the template's shape,
/// nullopt otherwise (the rule judge behind HTTP reads its question this way).
std::optional<std::pair<std::string, std::string>> unrender(const PromptTemplate& tmpl,
                                                            std::string_view message);

/// The score in a judge reply, or nullopt when the reply does not follow the template strictly
/// (no number, a sign, NaN/inf, exponent, more than 12 characters of number, extra text for
/// kBare, a value outside [score_min, score_max]). Never throws; any bytes are accepted.
std::optional<double> parse_score(const PromptTemplate& tmpl, std::string_view reply);

/// The text of an OpenAI-style chat completion body: choices[0].message.content when that is a
/// string; nullopt for anything else (not JSON, another shape, a non-string content).
std::optional<std::string> chat_reply_text(std::string_view body);

/// A score on the template's range mapped onto 0..100; a whole number on a 0..100 template stays
/// exactly that number.
double score_0_100(const PromptTemplate& tmpl, double judge_score);

/// Maps a 0..100 score onto the template's range and formats the reply a judge would give:
/// kBare "73", kBrackets "Rating: [[7]]" (rounded to the nearest integer).
std::string format_reply(const PromptTemplate& tmpl, double score_0_100);

/// FNV-1a 64 of `text`: stable across machines and runs (body hashes, cache keys).
std::uint64_t hash_text(std::string_view text);
/// 16 lower-case hex digits.
std::string hex64(std::uint64_t value);

}  // namespace dnpo::judge
