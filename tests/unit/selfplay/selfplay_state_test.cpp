// The self-play loop's blob in a checkpoint ("selfplay") read back from damaged or hand-edited
// text: accepted text round-trips exactly; anything else is a CheckpointError naming the file,
// never a stray JSON exception or undefined behaviour (tests/fuzz/fuzz_checkpoint.cpp fuzzes it).
#include "selfplay_state.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dnpo/common/error.h"
#include "dnpo/data/tokenizer.h"
#include "expect_error.h"

namespace dnpo::selfplay {
namespace {

using ::testing::HasSubstr;

const std::vector<std::string> kPrompts = {"1+1=", "rev ab", "sort 31"};

// A self-play state of three prompts: a byte-level answer that is not valid UTF-8, verdicts of
// every kind, known answers by exact bytes.
std::string three_prompt_state() {
  detail::LoopState state(kPrompts);
  state.start_iteration(2);
  state.samples[0].generated = true;
  state.samples[0].tokens = {104, 255, 105};
  state.samples[0].finished = true;
  state.samples[0].generated_verdict = Verdict{judge::Outcome::kScored, 7.5};
  state.human[1] = Verdict{judge::Outcome::kSpinFallback, 0.0};
  state.verdicts.insert(state.key(2, std::string("\xff\x00", 2)), 1.0);
  state.reports = nlohmann::json::array({{{"stage", "model_0"}}});
  return detail::state_json(state).dump();
}

TEST(SelfplayStateBlob, RoundTripsExactBytes) {
  const data::ByteTokenizer tokenizer;
  const auto text = three_prompt_state();
  detail::LoopState state(kPrompts);
  detail::restore_state(text, "a.h5", tokenizer, state);
  EXPECT_EQ(state.iteration, 2U);
  // the tokens come back exactly; their text is valid UTF-8 (ByteTokenizer::decode: U+FFFD)
  EXPECT_EQ(state.samples[0].tokens, (std::vector<std::int64_t>{'h', 0xff, 'i'}));
  EXPECT_EQ(state.samples[0].answer, std::string("h\xEF\xBF\xBDi"));
  EXPECT_EQ(state.verdicts.find(state.key(2, std::string("\xff\x00", 2))), 1.0);
  EXPECT_EQ(state.verdicts.size(), 1U);
  EXPECT_EQ(detail::state_json(state).dump(), text);
}

// The blob three_prompt_state() makes, as the builds before the verdict book wrote it: checkpoints
// written then resume, and checkpoints written now read the same.
TEST(SelfplayStateBlob, KeepsTheFormOfEarlierCheckpoints) {
  const std::string earlier =
      R"({"human":[null,["spin_fallback",0.0],null],"iteration":2,)"
      R"("known":[[],[],[[[255,0],["scored",1.0]]]],"reports":[{"stage":"model_0"}],)"
      R"("samples":[{"f":true,"g":true,"i":0,"t":[104,255,105],"v":["scored",7.5]},)"
      R"({"f":false,"g":false,"i":1,"t":[],"v":null},{"f":false,"g":false,"i":2,"t":[],"v":null}],)"
      R"("version":1})";
  EXPECT_EQ(three_prompt_state(), earlier);
  const data::ByteTokenizer tokenizer;
  detail::LoopState state(kPrompts);
  detail::restore_state(earlier, "old.h5", tokenizer, state);
  EXPECT_EQ(state.verdicts.find(state.key(2, std::string("\xff\x00", 2))), 1.0);
  EXPECT_FALSE(state.verdicts.find(state.key(1, std::string("\xff\x00", 2))));
}

TEST(SelfplayStateBlob, DamageIsACheckpointErrorNamingTheFile) {
  const data::ByteTokenizer tokenizer;
  const auto good = nlohmann::json::parse(three_prompt_state());
  const auto edited = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto j = good;
    edit(j);
    return j.dump();
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{", "unreadable self-play state"},
      {edited([](auto& j) { j["version"] = 2; }), "self-play state version 2"},
      {edited([](auto& j) { j["human"].erase(0); }),
       "a run of 2 prompts; this configuration has 3"},
      // these two were undefined behaviour: an index past the end, a missing verdict dereferenced
      {edited([](auto& j) { j["known"].erase(0); }), "known verdicts for 2 prompts"},
      {edited([](auto& j) { j["known"][2][0][1] = nullptr; }), "a known answer without a verdict"},
      {edited([](auto& j) { j["known"][2][0][1][0] = "dropped"; }),
       "a known answer with outcome 'dropped'"},
      {edited([](auto& j) { j["samples"][0]["i"] = 3; }), "prompt index 3 is outside the 3"},
      {edited([](auto& j) { j["samples"][0]["t"][0] = -1; }), "negative token id -1"},
      {edited([](auto& j) { j["samples"][0]["t"][0] = 1.5e300; }), "token id: expected an integer"},
      {edited([](auto& j) { j["iteration"] = 2.5; }), "iteration: expected an integer >= 0"},
      {edited([](auto& j) { j["human"][1][0] = "great"; }), "unknown judge outcome 'great'"},
  };
  for (const auto& [text, expected] : cases) {
    detail::LoopState state(kPrompts);
    const auto message = test::error_of<CheckpointError>(
        [&] { detail::restore_state(text, "run/ckpt-3.h5", tokenizer, state); });
    EXPECT_THAT(message, HasSubstr("checkpoint run/ckpt-3.h5: ")) << text;
    EXPECT_THAT(message, HasSubstr(expected)) << text;
  }
}

}  // namespace
}  // namespace dnpo::selfplay
