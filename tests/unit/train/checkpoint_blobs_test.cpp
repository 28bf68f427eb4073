// The training loop's blob in a checkpoint ("loop") read back from damaged or hand-edited text:
// accepted text round-trips exactly; anything else is a CheckpointError naming the file, never a
// stray JSON exception or undefined behaviour (tests/fuzz/fuzz_checkpoint.cpp fuzzes it; the
// self-play loop's blob is tested in tests/unit/selfplay/selfplay_state_test.cpp).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dnpo/common/error.h"
#include "dnpo/train/loop_position.h"
#include "expect_error.h"

namespace dnpo::train {
namespace {

using ::testing::HasSubstr;

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
    const auto message =
        test::error_of<CheckpointError>([&] { parse_loop_position(text, "run/ckpt-7.h5"); });
    EXPECT_THAT(message, HasSubstr("checkpoint run/ckpt-7.h5: " + expected)) << text;
  }
}

}  // namespace
}  // namespace dnpo::train
