// The loops' blobs in a checkpoint ("loop", "selfplay") read back from damaged or hand-edited
// text: accepted text round-trips exactly; anything else is a CheckpointError naming the file,
// never a stray JSON exception or undefined behaviour (tests/fuzz/fuzz_checkpoint.cpp fuzzes both).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dnpo/common/error.h"
#include "dnpo/data/tokenizer.h"
#include "dnpo/train/loop_position.h"
#include "selfplay_state.h"

namespace dnpo::train {
namespace {

using ::testing::HasSubstr;

// The message of the CheckpointError that f throws ("" if it throws none).
template <typename F>
std::string checkpoint_error(F&& f) {
  try {
    f();
  } catch (const CheckpointError& e) {
    return e.what();
  }
  return "";
}

TEST(LoopPositionBlob, RoundTrips) {
  LoopPosition p;
  p.stage = "npo";
  p.iteration = 3;
  p.steps_done = 2;
  p.total_steps = 9;
  p.step_losses = {0.69, 0.5};
  p.step_ms = {120.5, 118.25};
  p.total_tokens = 4096;
  const auto back = parse_loop_position(loop_position_text(p), "run/ckpt-1.h5");
  EXPECT_EQ(back.stage, "npo");
  EXPECT_EQ(back.iteration, 3U);
  EXPECT_EQ(back.steps_done, 2);
  EXPECT_EQ(back.total_steps, 9);
  EXPECT_EQ(back.step_losses, p.step_losses);
  EXPECT_EQ(back.step_ms, p.step_ms);
  EXPECT_EQ(back.total_tokens, 4096);
  EXPECT_EQ(loop_position_text(back), loop_position_text(p));
}

TEST(LoopPositionBlob, DamageIsACheckpointErrorNamingTheFile) {
  const std::string good =
      R"({"stage":"sft","iteration":0,"steps_done":1,"total_steps":4,"finished":false,)"
      R"("step_losses":[0.5],"step_ms":[10.0],"total_tokens":64})";
  EXPECT_NO_THROW(parse_loop_position(good, "a.h5"));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{\"stage\":", "unreadable training loop state"},
      {"[]", "unreadable training loop state"},
      {R"({"stage":"sft"})", "unreadable training loop state"},
      {std::string(good).replace(good.find("\"steps_done\":1"), 14, "\"steps_done\":\"1\""),
       "damaged training loop state (blob 'loop'): steps_done: expected an integer"},
      {std::string(good).replace(good.find("\"steps_done\":1"), 14, "\"steps_done\":5"),
       "damaged training loop state"},
      {std::string(good).replace(good.find("\"steps_done\":1"), 14, "\"steps_done\":-1"),
       "damaged training loop state"},
      {std::string(good).replace(good.find("[0.5]"), 5, "[0.5,0.4]"),
       "damaged training loop state"},
      // a float where an integer belongs: nlohmann would cast it, undefined behaviour out of range
      // (found by fuzz_checkpoint)
      {std::string(good).replace(good.find("\"steps_done\":1"), 14, "\"steps_done\":5e81"),
       "damaged training loop state (blob 'loop'): steps_done: expected an integer"},
      {std::string(good).replace(good.find("\"iteration\":0"), 13, "\"iteration\":-3"),
       "damaged training loop state (blob 'loop'): iteration: expected an integer >= 0"},
      {std::string(good).replace(good.find("\"sft\""), 5, "\"\""), "damaged training loop state"},
  };
  for (const auto& [text, expected] : cases) {
    const auto message = checkpoint_error([&] { parse_loop_position(text, "run/ckpt-7.h5"); });
    EXPECT_THAT(message, HasSubstr("checkpoint run/ckpt-7.h5: " + expected)) << text;
  }
}

// A self-play state of three prompts: a byte-level answer that is not valid UTF-8, verdicts of
// every kind, known answers by exact bytes.
std::string three_prompt_state() {
  detail::LoopState state(3);
  state.start_iteration(2);
  state.samples[0].generated = true;
  state.samples[0].tokens = {104, 255, 105};
  state.samples[0].finished = true;
  state.samples[0].generated_verdict = Verdict{judge::Outcome::kScored, 7.5};
  state.human[1] = Verdict{judge::Outcome::kSpinFallback, 0.0};
  state.known[2][std::string("\xff\x00", 2)] = Verdict{judge::Outcome::kScored, 1.0};
  state.reports = nlohmann::json::array({{{"stage", "model_0"}}});
  return detail::state_json(state).dump();
}

TEST(SelfplayStateBlob, RoundTripsExactBytes) {
  const data::ByteTokenizer tokenizer;
  const auto text = three_prompt_state();
  detail::LoopState state(3);
  detail::restore_state(text, "a.h5", tokenizer, state);
  EXPECT_EQ(state.iteration, 2U);
  // the tokens come back exactly; their text is valid UTF-8 (ByteTokenizer::decode: U+FFFD)
  EXPECT_EQ(state.samples[0].tokens, (std::vector<std::int64_t>{'h', 0xff, 'i'}));
  EXPECT_EQ(state.samples[0].answer, std::string("h\xEF\xBF\xBDi"));
  EXPECT_EQ(state.known[2].count(std::string("\xff\x00", 2)), 1U);
  EXPECT_EQ(detail::state_json(state).dump(), text);
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
      {edited([](auto& j) { j["samples"][0]["i"] = 3; }), "prompt index 3 is outside the 3"},
      {edited([](auto& j) { j["samples"][0]["t"][0] = -1; }), "negative token id -1"},
      {edited([](auto& j) { j["samples"][0]["t"][0] = 1.5e300; }), "token id: expected an integer"},
      {edited([](auto& j) { j["iteration"] = 2.5; }), "iteration: expected an integer >= 0"},
      {edited([](auto& j) { j["human"][1][0] = "great"; }), "unknown judge outcome 'great'"},
  };
  for (const auto& [text, expected] : cases) {
    detail::LoopState state(3);
    const auto message =
        checkpoint_error([&] { detail::restore_state(text, "run/ckpt-3.h5", tokenizer, state); });
    EXPECT_THAT(message, HasSubstr("checkpoint run/ckpt-3.h5: ")) << text;
    EXPECT_THAT(message, HasSubstr(expected)) << text;
  }
}

}  // namespace
}  // namespace dnpo::train
