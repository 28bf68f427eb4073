// The self-play loop's state and its JSON form (the "selfplay" blob of every checkpoint):
// this iteration's answers as token ids (exact bytes) with their verdicts, the human answers'
// verdicts, every verdict by (prompt, answer), and the reports so far. Private to src/selfplay/.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dnpo/data/tokenizer.h"
#include "dnpo/judge/judge.h"
#include "dnpo/selfplay/labeling.h"

namespace dnpo::selfplay::detail {

using Json = nlohmann::json;

/// JSON text for people and files: invalid UTF-8 (a byte-level model's answer) becomes U+FFFD.
std::string dump(const Json& j);

/// Text that may not be valid UTF-8: a JSON string when it is valid, else its bytes as an array,
/// so a checkpoint restores it exactly.
Json text_json(const std::string& text);
std::string text_from(const Json& j);

Json verdict_json(const std::optional<Verdict>& v);
std::optional<Verdict> verdict_from(const Json& j);

/// Verdicts already in for a prompt, by answer text (scored ones only: a failure is asked again).
using KnownVerdicts = std::map<std::string, Verdict>;
Json known_json(const KnownVerdicts& known);
KnownVerdicts known_from(const Json& j);

/// What the loop carries from phase to phase (and in every checkpoint, as JSON).
struct LoopState {
  /// A state for a run of `prompts` prompts: one (empty) sample, human verdict and set of known
  /// verdicts each.
  explicit LoopState(std::size_t prompts = 0) : samples(prompts), human(prompts), known(prompts) {}

  std::uint64_t iteration = 0;
  std::vector<SelfplaySample> samples;        // this iteration's, one per prompt, by index
  std::vector<std::optional<Verdict>> human;  // human answers' verdicts, reused every iteration
  std::vector<KnownVerdicts> known;  // per prompt, every answer judged so far: never asked twice
  Json reports = Json::array();      // model_0's and every finished iteration's

  /// Empties every sample for iteration t (the verdicts and reports stay).
  void start_iteration(std::uint64_t t);
};

Json sample_json(const SelfplaySample& s);
/// Restores one sample from sample_json (its text re-decoded from the tokens). Throws
/// CheckpointError for an index outside the run's prompts.
void restore_sample(const Json& j, const data::Tokenizer& tokenizer, LoopState& state);

Json state_json(const LoopState& state);
/// Restores `state` (already sized to the run's prompts) from state_json's text. Throws
/// CheckpointError naming `path` on another number of prompts or unreadable JSON.
void restore_state(const std::string& text,
                   const std::string& path,
                   const data::Tokenizer& tokenizer,
                   LoopState& state);

}  // namespace dnpo::selfplay::detail
