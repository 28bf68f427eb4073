// The synthetic task world of the embedded default: short checkable tasks whose "human" answers
// are deliberately wrong some of the time, and the verifier the rule judge scores answers with.
// Data is a pure function of [demo] (own PRNG helpers, no std::*_distribution), so every machine
// and standard library produces the same files.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "dnpo/config/config.h"
#include "dnpo/data/jsonl.h"

namespace dnpo::data {

/// Tasks and their prompts (exact text; the verifier parses these forms):
///   "add"     "<a>+<b>="   a, b uniform in [0, 10^add_digits), decimal without leading zeros;
///                          truth = a+b in decimal, e.g. "123+456=" -> "579"
///   "reverse" "rev <s>"    s = exactly string_length letters a-z; truth = s reversed,
///                          e.g. "rev abcdef" -> "fedcba"
///   "sort"    "sort <d>"   d = 2..string_length digits 0-9 (1 when string_length is 1);
///                          truth = d sorted ascending, e.g. "sort 52813" -> "12358"
/// Record i of a split has task tasks[i % tasks.size()] (round-robin).
/// "Human" answers: with probability noise_rate the truth is corrupted once, either by swapping two
/// adjacent different characters or by moving one digit/letter one step up or down (staying in
/// 0-9 / a-z, never creating a leading zero); a corrupted answer never equals the truth.
class DemoWorld {
 public:
  /// Throws ConfigError naming the demo.* key for unknown tasks or out-of-range sizes/rates.
  explicit DemoWorld(config::DemoConfig cfg);

  /// The first `n` records of split `split`; a pure function of (demo config, split, n) and
  /// prefix-stable (make_split(s, k) is the first k records of make_split(s, n) for k <= n).
  /// Ids are "<split>-000123". "eval" prompts are unique; every other split draws from its own
  /// stream and skips the prompts of the first demo.eval_size eval records. Every record carries
  /// a (possibly noisy) human answer, its task and its truth. Throws ConfigError when the prompt
  /// space is too small to find a new prompt (hint: raise demo.add_digits / demo.string_length).
  std::vector<PromptRecord> make_split(const std::string& split, int n) const;

 private:
  config::DemoConfig cfg_;
};

/// Writes dir/train.jsonl (demo.train_size records, human answers) and dir/eval.jsonl
/// (demo.eval_size records, answer = truth), creating `dir`. Throws DataError naming the path.
void write_demo_data(const config::DemoConfig& cfg, const std::string& dir);

/// The task of a demo-world prompt ("add" | "reverse" | "sort"), or nullopt if it is none of the
/// forms above. Surrounding whitespace of the prompt is ignored.
std::optional<std::string> prompt_task(const std::string& prompt);

/// The correct answer recomputed from the prompt text alone, or nullopt for an unknown prompt.
/// Addition is exact for operands of any length.
std::optional<std::string> solve_prompt(const std::string& prompt);

/// Score of `answer` (surrounding whitespace trimmed) for a demo-world `prompt`, 0..100:
///   100  answer == truth
///   0    empty answer
///   else floor(90 * matches / max(len(truth), len(answer))), where matches counts positions
///        holding the same character, aligned from the right for "add" (digits by place value)
///        and from the left for "reverse"/"sort". So every wrong answer scores <= 89.
/// Pure and thread-safe. Throws DataError for a prompt that is not a demo-world prompt.
int verify_answer(const std::string& prompt, const std::string& answer);

}  // namespace dnpo::data
