// Where a training stage's loop is, and its JSON form (the "loop" blob of every checkpoint).
// Parsing is pure and checked, so a damaged or hand-edited blob is a CheckpointError naming the
// file, never a stray JSON exception or a loop that starts past its end (tests/fuzz covers it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dnpo::train {

/// Where a stage's loop is (replicated on every rank).
struct LoopPosition {
  std::string stage;  ///< "sft" | "spin" | "npo" | the self-play loop's "generate"
  std::uint64_t iteration = 0;
  std::int64_t steps_done = 0;
  std::int64_t total_steps = 0;
  bool finished = false;            ///< the stage's final checkpoint
  std::vector<double> step_losses;  ///< history, for the stage's summary: one per step done
                                    ///< (none in the self-play loop's generation rounds)
  std::vector<double> step_ms;
  std::int64_t total_tokens = 0;
};

/// The "loop" blob's text.
std::string loop_position_text(const LoopPosition& position);
/// Parses loop_position_text's output read from checkpoint `path`. Throws CheckpointError naming
/// `path` on text that is not that JSON, or whose counts do not hold together (a negative count,
/// more steps done than the stage has, a longer history than the steps done).
LoopPosition parse_loop_position(const std::string& text, const std::string& path);

}  // namespace dnpo::train
