// The self-play loop's state and its JSON form (the "selfplay" blob of every checkpoint):
// this iteration's answers as token ids (exact bytes) with their verdicts, the human answers'
// verdicts, every verdict by (prompt, answer), and the reports so far. Private to src/selfplay/.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dnpo/data/tokenizer.h"
#include "dnpo/judge/judge.h"
#include "dnpo/judge/verdict_book.h"
#include "dnpo/selfplay/labeling.h"

namespace dnpo::selfplay::detail {

using Json = nlohmann::json;

/// JSON text for people and files: invalid UTF-8 (a byte-level model's answer) becomes U+FFFD.
std::string dump(const Json& j);

/// What the loop carries from phase to phase (and in every checkpoint, as JSON).
struct LoopState {
  /// A state for a run over these prompts (their texts, by index): one empty sample and human
  /// verdict each, no verdicts known.
  explicit LoopState(std::vector<std::string> prompts = {});

  std::uint64_t iteration = 0;
  std::vector<std::string> questions;         // the prompts' texts, by index
  std::vector<SelfplaySample> samples;        // this iteration's, one per prompt, by index
  std::vector<std::optional<Verdict>> human;  // human answers' verdicts, reused every iteration
  /// Every answer judged so far, scoped by prompt (key()): never asked twice in a run.
  judge::VerdictBook verdicts;
  Json reports = Json::array();  // model_0's and every finished iteration's

  /// Empties every sample for iteration t (the verdicts and reports stay).
  void start_iteration(std::uint64_t t);
  /// The verdict book's key of `answer` to prompt `prompt`.
  judge::VerdictKey key(std::size_t prompt, const std::string& answer) const;
  /// Prompt `prompt`'s verdicts known, in the checkpoint's form.
  Json known_json(std::size_t prompt) const;
  /// Replaces prompt `prompt`'s verdicts known by those of known_json()'s form.
  void restore_known(std::size_t prompt, const Json& j);
};

Json sample_json(const SelfplaySample& s);
/// Restores one sample from sample_json (its text re-decoded from the tokens). Throws
/// CheckpointError for an index outside the run's prompts.
void restore_sample(const Json& j, const data::Tokenizer& tokenizer, LoopState& state);

Json state_json(const LoopState& state);
/// Restores `state` (made for the run's prompts) from state_json's text. Throws
/// CheckpointError naming `path` on another number of prompts or unreadable JSON.
void restore_state(const std::string& text,
                   const std::string& path,
                   const data::Tokenizer& tokenizer,
                   LoopState& state);

}  // namespace dnpo::selfplay::detail
