// JSONL datasets (formats: README, "Configuration"): prompt/SFT records and preference pairs, read
// with line-exact errors and written one object a line. No tokenization here.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dnpo::data {

/// A prompt with its "human" answer. `task` and `truth` are set only on the demo world.
struct PromptRecord {
  std::string id;
  std::string prompt;
  std::string answer;
  std::string task;
  std::string truth;
};

/// A preference pair; the scores are present when the file carries them.
struct PairRecord {
  std::string id;
  std::string prompt;
  std::string chosen;
  std::string rejected;
  std::optional<double> score_chosen;
  std::optional<double> score_rejected;
};

/// Reads one record per non-blank line. Accepted objects:
///   {"id": str|int, "prompt": str, "answer": str[, "task": str, "truth": str]}
///   {"prompt_id": str|int, "messages": [{"role": "user"|"assistant"|..., "content": str}, ...]}
///     (first user turn = prompt, first assistant turn = answer)
/// "id"/"prompt_id" may be absent: the id is then the 1-based line number.
/// Throws DataError "<path>:<line>: <what>; expected <schema>" for bad JSON, a missing field, a
/// wrong type or an empty prompt, and a DataError naming the path when it cannot be read.
std::vector<PromptRecord> read_prompts_jsonl(const std::string& path);

/// Reads {"id": str|int, "prompt": str, "chosen": X, "rejected": X[, "score_chosen": num,
/// "score_rejected": num]} lines, where X is a string or an HF message list (its first assistant
/// turn is the text). "prompt_id" is accepted for "id"; a missing id is the line number.
/// Errors as read_prompts_jsonl.
std::vector<PairRecord> read_pairs_jsonl(const std::string& path);

/// A multiple-choice question (ARC-, HellaSwag-style), scored by log-likelihood.
struct ChoiceRecord {
  std::string id;
  std::string question;
  std::vector<std::string> choices;
  int label = 0;  ///< index of the correct choice
};

/// Reads {"id": str|int, "question": str, "choices": [str, ...], "label"|"answer": X} lines, where
/// X is the correct choice's index, its text, or its letter ("A" = 0, ...). At least two choices.
/// Errors as read_prompts_jsonl.
std::vector<ChoiceRecord> read_choices_jsonl(const std::string& path);

/// The readers above over JSONL text in memory (`name` stands for the path in errors).
std::vector<PromptRecord> parse_prompts_jsonl(std::string_view text, const std::string& name);
std::vector<PairRecord> parse_pairs_jsonl(std::string_view text, const std::string& name);
std::vector<ChoiceRecord> parse_choices_jsonl(std::string_view text, const std::string& name);

/// Writes {"id","prompt","answer"[,"task","truth"]} lines ("task"/"truth" only when non-empty).
/// Overwrites `path`; its directory must exist. Throws DataError naming the path (or the record
/// id, for text that is not valid UTF-8).
void write_prompts_jsonl(const std::string& path, const std::vector<PromptRecord>& records);

/// Writes {"id","prompt","chosen","rejected"[,"score_chosen","score_rejected"]} lines.
void write_pairs_jsonl(const std::string& path, const std::vector<PairRecord>& records);

}  // namespace dnpo::data
