// Held-out evaluation: generate answers for prompts and score them with the demo world's
// verifier (exact accuracy and mean 0..100 score), sampled and greedy; optionally write samples.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "dnpo/config/config.h"
#include "dnpo/data/jsonl.h"
#include "dnpo/data/tokenizer.h"
#include "dnpo/model/llama.h"

namespace dnpo::train {

struct EvalScores {
  double exact = 0;       ///< share of answers equal to the truth
  double mean_score = 0;  ///< mean verifier score 0..100
  std::map<std::string, double> exact_by_task;
};

struct EvalReport {
  std::int64_t prompts = 0;
  std::int64_t scorable = 0;  ///< prompts the verifier understands
  EvalScores sampled;         ///< at sample.temperature
  EvalScores greedy;          ///< temperature 0 (when eval.greedy_too)
  bool has_greedy = false;
};

/// Generates an answer per record (sampled, and greedy when cfg.eval.greedy_too) and scores them.
/// samples_out (JSONL, "" = none): {"id","prompt","answer" (the record's human answer),
/// "generated","score_generated","score_human","task"} per record (sampled answers).
EvalReport evaluate(const config::RunConfig& cfg,
                    const model::LlamaModel& model,
                    const data::Tokenizer& tokenizer,
                    const std::vector<data::PromptRecord>& records,
                    const std::string& samples_out = "");

/// "exact 0.83 (add 0.71, reverse 0.95, sort 0.84) | score 91.2"
std::string format_scores(const EvalScores& scores);

}  // namespace dnpo::train
