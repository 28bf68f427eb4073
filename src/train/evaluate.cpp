// Held-out evaluation with the single-process sampler and the demo world's verifier.
#include "dnpo/train/evaluate.h"

#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "dnpo/data/chat_template.h"
#include "dnpo/data/demo_world.h"
#include "dnpo/model/sampler.h"

namespace dnpo::train {
namespace {

struct Scored {
  std::vector<std::string> texts;
  EvalScores scores;
};

Scored generate_and_score(const config::RunConfig& cfg,
                          const config::SampleConfig& sample,
                          const model::LlamaModel& model,
                          const data::Tokenizer& tokenizer,
                          const std::vector<data::PromptRecord>& records,
                          const std::vector<model::GenerationRequest>& requests,
                          std::int64_t& scorable) {
  const auto generations = model::generate(model,
                                           requests,
                                           sample,
                                           tokenizer.eos_id(),
                                           tokenizer.pad_id(),
                                           {cfg.run.seed, cfg.train.iteration});
  Scored out;
  std::map<std::string, std::pair<double, double>> by_task;  // task → (correct, total)
  double correct = 0, score_sum = 0;
  scorable = 0;
  for (std::size_t i = 0; i < records.size(); ++i) {
    out.texts.push_back(tokenizer.decode(generations[i].tokens));
    const auto& text = out.texts.back();
    const auto truth = records[i].truth.empty() ? data::solve_prompt(records[i].prompt)
                                                : std::optional<std::string>(records[i].truth);
    if (!truth) {
      continue;
    }
    ++scorable;
    const bool exact = text == *truth;
    correct += exact ? 1 : 0;
    score_sum += data::verify_answer(records[i].prompt, text);
    const auto task = records[i].task.empty() ? data::prompt_task(records[i].prompt).value_or("?")
                                              : records[i].task;
    by_task[task].first += exact ? 1 : 0;
    by_task[task].second += 1;
  }
  if (scorable > 0) {
    out.scores.exact = correct / static_cast<double>(scorable);
    out.scores.mean_score = score_sum / static_cast<double>(scorable);
  }
  for (const auto& [task, counts] : by_task) {
    out.scores.exact_by_task[task] = counts.first / counts.second;
  }
  return out;
}

}  // namespace

std::string format_scores(const EvalScores& scores) {
  std::string tasks;
  for (const auto& [task, exact] : scores.exact_by_task) {
    tasks += fmt::format("{}{} {:.3f}", tasks.empty() ? "" : ", ", task, exact);
  }
  return fmt::format("exact {:.3f} ({}) | score {:.1f}", scores.exact, tasks, scores.mean_score);
}

EvalReport evaluate(const config::RunConfig& cfg,
                    const model::LlamaModel& model,
                    const data::Tokenizer& tokenizer,
                    const std::vector<data::PromptRecord>& records_in,
                    const std::string& samples_out) {
  DNPO_CHECK_WITH(DataError, !records_in.empty(), "eval: no prompts to evaluate");
  std::vector<data::PromptRecord> records = records_in;
  if (cfg.eval.max_prompts > 0 && static_cast<int>(records.size()) > cfg.eval.max_prompts) {
    records.resize(cfg.eval.max_prompts);
  }
  const data::ChatTemplate chat(cfg.chat, tokenizer);
  std::vector<model::GenerationRequest> requests;
  for (std::size_t i = 0; i < records.size(); ++i) {
    requests.push_back({chat.encode_prompt(records[i].prompt), i});
  }
  EvalReport report;
  report.prompts = static_cast<std::int64_t>(records.size());
  const auto sampled =
      generate_and_score(cfg, cfg.sample, model, tokenizer, records, requests, report.scorable);
  report.sampled = sampled.scores;
  if (cfg.eval.greedy_too) {
    auto greedy_cfg = cfg.sample;
    greedy_cfg.temperature = 0;
    std::int64_t ignored = 0;
    report.greedy =
        generate_and_score(cfg, greedy_cfg, model, tokenizer, records, requests, ignored).scores;
    report.has_greedy = true;
  }
  if (!samples_out.empty()) {
    std::ofstream out(samples_out);
    DNPO_CHECK_WITH(DataError, out.good(), "cannot write samples file '", samples_out, "'");
    for (std::size_t i = 0; i < records.size(); ++i) {
      const auto& r = records[i];
      const bool scorable = data::solve_prompt(r.prompt).has_value();
      nlohmann::json j = {{"id", r.id},
                          {"prompt", r.prompt},
                          {"answer", r.answer},
                          {"generated", sampled.texts[i]},
                          {"task", r.task}};
      if (scorable) {
        j["score_generated"] = data::verify_answer(r.prompt, sampled.texts[i]);
        j["score_human"] = data::verify_answer(r.prompt, r.answer);
      }
      // A byte-level model can emit invalid UTF-8: write those bytes as U+FFFD, don't fail.
      out << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    }
    log::info_rank0("eval: wrote {} samples to {}", records.size(), samples_out);
  }
  return report;
}

}  // namespace dnpo::train
