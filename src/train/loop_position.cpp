// The checkpoint's "loop" blob; see loop_position.h.
#include "dnpo/train/loop_position.h"

#include <nlohmann/json.hpp>

#include "dnpo/common/error.h"
#include "dnpo/train/json_integer.h"

namespace dnpo::train {
namespace {
using Json = nlohmann::json;
}  // namespace

std::string loop_position_text(const LoopPosition& p) {
  const Json j = {{"stage", p.stage},
                  {"iteration", p.iteration},
                  {"steps_done", p.steps_done},
                  {"total_steps", p.total_steps},
                  {"finished", p.finished},
                  {"step_losses", p.step_losses},
                  {"step_ms", p.step_ms},
                  {"total_tokens", p.total_tokens}};
  return j.dump();
}

LoopPosition parse_loop_position(const std::string& text, const std::string& path) {
  LoopPosition p;
  try {
    const auto j = Json::parse(text);
    p.stage = j.at("stage").get<std::string>();
    p.iteration = detail::checked_integer<std::uint64_t>(j.at("iteration"), "iteration");
    p.steps_done = detail::checked_integer<std::int64_t>(j.at("steps_done"), "steps_done");
    p.total_steps = detail::checked_integer<std::int64_t>(j.at("total_steps"), "total_steps");
    p.finished = j.at("finished").get<bool>();
    p.step_losses = j.at("step_losses").get<std::vector<double>>();
    p.step_ms = j.at("step_ms").get<std::vector<double>>();
    p.total_tokens = detail::checked_integer<std::int64_t>(j.at("total_tokens"), "total_tokens");
  } catch (const Json::exception& e) {
    throw CheckpointError("checkpoint " + path +
                          ": unreadable training loop state (blob 'loop'): " + e.what());
  } catch (const CheckpointError& e) {
    throw CheckpointError("checkpoint " + path +
                          ": damaged training loop state (blob 'loop'): " + e.what());
  }
  const auto steps = static_cast<std::uint64_t>(p.steps_done);
  DNPO_CHECK_WITH(CheckpointError,
                  !p.stage.empty() && p.steps_done >= 0 && p.total_steps >= 0 &&
                      p.steps_done <= p.total_steps && p.total_tokens >= 0 &&
                      p.step_losses.size() <= steps && p.step_ms.size() <= steps,
                  "checkpoint {}: damaged training loop state (blob 'loop'): stage '{}', {} of {} "
                  "steps done with {} losses and {} times, {} tokens",
                  path,
                  p.stage,
                  p.steps_done,
                  p.total_steps,
                  p.step_losses.size(),
                  p.step_ms.size(),
                  p.total_tokens);
  return p;
}

}  // namespace dnpo::train
