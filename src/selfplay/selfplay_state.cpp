// The self-play state's JSON form; see selfplay_state.h.
#include "selfplay_state.h"

#include <utility>

#include "dnpo/common/error.h"
#include "dnpo/train/json_integer.h"

namespace dnpo::selfplay::detail {
using judge::verdict_from;
using judge::verdict_json;
using train::detail::checked_integer;
namespace {

// The verdict book's scope of a prompt's answers.
std::string prompt_scope(std::size_t prompt) {
  return std::to_string(prompt);
}

}  // namespace

// Answers are model output: a byte-level model may emit invalid UTF-8. Text written for people
// replaces it; the loop's own state stores token ids, so a resumed run sees the exact bytes.
std::string dump(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

LoopState::LoopState(std::vector<std::string> prompts)
    : questions(std::move(prompts)), samples(questions.size()), human(questions.size()) {}

void LoopState::start_iteration(std::uint64_t t) {
  iteration = t;
  for (std::size_t i = 0; i < samples.size(); ++i) {
    samples[i] = SelfplaySample{};
    samples[i].index = static_cast<std::int64_t>(i);
  }
}

judge::VerdictKey LoopState::key(std::size_t prompt, const std::string& answer) const {
  return {prompt_scope(prompt), questions.at(prompt), answer};
}

Json LoopState::known_json(std::size_t prompt) const {
  return verdicts.scope_json(prompt_scope(prompt));
}

void LoopState::restore_known(std::size_t prompt, const Json& j) {
  verdicts.restore_scope(prompt_scope(prompt), questions.at(prompt), j);
}

Json sample_json(const SelfplaySample& s) {
  return {{"i", s.index},
          {"g", s.generated},
          {"t", s.tokens},
          {"f", s.finished},
          {"v", verdict_json(s.generated_verdict)}};
}

/// Restores a sample from its JSON (text re-decoded from the tokens).
void restore_sample(const Json& j, const data::Tokenizer& tokenizer, LoopState& state) {
  const auto i = checked_integer<std::int64_t>(j.at("i"), "sample index");
  DNPO_CHECK_WITH(CheckpointError,
                  i >= 0 && i < static_cast<std::int64_t>(state.samples.size()),
                  "prompt index {} is outside the {} prompts of this run (selfplay.prompts or "
                  "data.train_file changed?)",
                  i,
                  state.samples.size());
  auto& s = state.samples[static_cast<std::size_t>(i)];
  s.index = i;
  s.generated = j.at("g").get<bool>();
  s.tokens.clear();
  for (const auto& id : j.at("t").get_ref<const Json::array_t&>()) {
    s.tokens.push_back(checked_integer<std::int64_t>(id, "token id"));
  }
  s.answer = s.generated ? tokenizer.decode(s.tokens) : std::string();
  s.finished = j.at("f").get<bool>();
  s.generated_verdict = verdict_from(j.at("v"));
}

Json state_json(const LoopState& state) {
  Json samples = Json::array();
  for (const auto& s : state.samples) {
    samples.push_back(sample_json(s));
  }
  Json human = Json::array();
  for (const auto& v : state.human) {
    human.push_back(verdict_json(v));
  }
  Json known = Json::array();
  for (std::size_t i = 0; i < state.questions.size(); ++i) {
    known.push_back(state.known_json(i));
  }
  return {{"version", 1},
          {"iteration", state.iteration},
          {"samples", samples},
          {"human", human},
          {"known", known},
          {"reports", state.reports}};
}

void restore_state(const std::string& text,
                   const std::string& path,
                   const data::Tokenizer& tokenizer,
                   LoopState& state) {
  try {
    const auto j = Json::parse(text);
    DNPO_CHECK_WITH(CheckpointError,
                    j.at("version") == 1,
                    "self-play state version {}; this build reads version 1",
                    j.at("version").dump());
    const auto& human = j.at("human");
    const auto& known = j.at("known");
    DNPO_CHECK_WITH(CheckpointError,
                    human.is_array() && human.size() == state.human.size(),
                    "a run of {} prompts; this configuration has {} (selfplay.prompts or "
                    "data.train_file differ)",
                    human.size(),
                    state.human.size());
    DNPO_CHECK_WITH(CheckpointError,
                    known.is_array() && known.size() == human.size(),
                    "known verdicts for {} prompts, human verdicts for {}",
                    known.size(),
                    human.size());
    state.iteration = checked_integer<std::uint64_t>(j.at("iteration"), "iteration");
    state.start_iteration(state.iteration);
    for (const auto& s : j.at("samples")) {
      restore_sample(s, tokenizer, state);
    }
    for (std::size_t i = 0; i < state.human.size(); ++i) {
      state.human[i] = verdict_from(human.at(i));
      state.restore_known(i, known.at(i));
    }
    state.reports = j.at("reports");
  } catch (const Json::exception& e) {
    throw CheckpointError("checkpoint " + path + ": unreadable self-play state: " + e.what());
  } catch (const Error& e) {  // a value that does not fit this run: name the file
    throw CheckpointError("checkpoint " + path + ": self-play state: " + e.what());
  }
}

}  // namespace dnpo::selfplay::detail
