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
  /// With judge.backend "http": the judge's mean score over the answers it scored (any prompts,
  /// not only the demo world's), and how many it scored; judged = 0 otherwise.
  double judge_score = 0;
  std::int64_t judged = 0;
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

/// Multiple-choice accuracy by log-likelihood, as lm-eval-harness defines it: each choice is the
/// continuation " " + choice of the question (BOS first when chat.add_bos); the prediction is the
/// choice of highest Σ log p(continuation tokens) (acc), or of highest log-likelihood divided by
/// the choice's length in characters (acc_norm).
struct ChoiceReport {
  std::int64_t questions = 0;
  double acc = 0;
  double acc_norm = 0;
  std::vector<std::vector<double>> loglik;  ///< per question, per choice
  std::vector<int> predicted;               ///< argmax of loglik
  std::vector<int> predicted_norm;          ///< argmax of loglik / characters
};

ChoiceReport score_choices(const config::RunConfig& cfg,
                           const model::LlamaModel& model,
                           const data::Tokenizer& tokenizer,
                           const std::vector<data::ChoiceRecord>& questions);

/// Two models' answers to the same prompts (the same sampling draws), judged by [judge]: how often
/// A's scores above, equal to or below B's (paper Fig. 7), over prompts where both were scored.
struct CompareReport {
  std::int64_t prompts = 0;
  std::int64_t judged = 0;  ///< both answers scored
  std::int64_t win = 0;     ///< A above B
  std::int64_t tie = 0;
  std::int64_t loss = 0;
  double mean_score_a = 0;
  double mean_score_b = 0;
};

CompareReport compare_models(const config::RunConfig& cfg,
                             const model::LlamaModel& a,
                             const model::LlamaModel& b,
                             const data::Tokenizer& tokenizer,
                             const std::vector<data::PromptRecord>& records);

/// "exact 0.83 (add 0.71, reverse 0.95, sort 0.84) | score 91.2"
std::string format_scores(const EvalScores& scores);

}  // namespace dnpo::train
