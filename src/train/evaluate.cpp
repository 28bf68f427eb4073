// Held-out evaluation with the single-process sampler and the demo world's verifier.
#include "dnpo/train/evaluate.h"

#include <algorithm>
#include <fstream>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "dnpo/data/chat_template.h"
#include "dnpo/data/demo_world.h"
#include "dnpo/judge/judge.h"
#include "dnpo/model/batch.h"
#include "dnpo/model/sampler.h"
#include "dnpo/train/dnpo_loss.h"

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
  if (cfg.judge.backend == "http") {  // the rule judge is the verifier above
    const auto judge = judge::make_judge(cfg.judge);
    std::vector<judge::JudgeRequest> batch;
    for (std::size_t i = 0; i < records.size(); ++i) {
      batch.push_back({records[i].prompt, out.texts[i]});
    }
    double sum = 0;
    for (auto& verdict : judge->submit(std::move(batch))) {
      const auto r = verdict.get();
      if (r.outcome == judge::Outcome::kScored) {
        sum += r.score;
        ++out.scores.judged;
      }
    }
    out.scores.judge_score =
        out.scores.judged > 0 ? sum / static_cast<double>(out.scores.judged) : 0;
  }
  for (const auto& [task, counts] : by_task) {
    out.scores.exact_by_task[task] = counts.first / counts.second;
  }
  return out;
}

}  // namespace

namespace {

/// UTF-8 characters (code points) of `text`: lm-eval-harness normalises by len() of the str.
std::int64_t characters(const std::string& text) {
  std::int64_t n = 0;
  for (const char c : text) {
    n += (static_cast<unsigned char>(c) & 0xC0U) != 0x80U ? 1 : 0;
  }
  return n;
}

std::size_t argmax(const std::vector<double>& v) {
  return static_cast<std::size_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

}  // namespace

ChoiceReport score_choices(const config::RunConfig& cfg,
                           const model::LlamaModel& model,
                           const data::Tokenizer& tokenizer,
                           const std::vector<data::ChoiceRecord>& questions) {
  DNPO_CHECK_WITH(DataError, !questions.empty(), "eval: no multiple-choice questions");
  const at::NoGradGuard no_grad;
  const auto max_tokens = static_cast<std::size_t>(cfg.model.max_position_embeddings);
  ChoiceReport report;
  report.questions = static_cast<std::int64_t>(questions.size());
  double correct = 0;
  double correct_norm = 0;
  for (const auto& q : questions) {
    std::vector<std::int64_t> context;
    if (cfg.chat.add_bos) {
      context.push_back(tokenizer.bos_id());
    }
    const auto question = tokenizer.encode(q.question);
    context.insert(context.end(), question.begin(), question.end());
    std::vector<model::TokenSequence> seqs;
    for (const auto& choice : q.choices) {
      model::TokenSequence seq{context, tokenizer.encode(" " + choice)};
      DNPO_CHECK_WITH(
          DataError,
          seq.response.size() < max_tokens,
          "eval: a choice of question '{}' is longer than model.max_position_embeddings",
          q.id);
      if (seq.prompt.size() + seq.response.size() > max_tokens) {  // keep the question's end
        seq.prompt.erase(
            seq.prompt.begin(),
            seq.prompt.end() - static_cast<std::ptrdiff_t>(max_tokens - seq.response.size()));
      }
      seqs.push_back(std::move(seq));
    }
    // on the model's device (a GPU's, with run.device = "cuda")
    const auto batch = model::to_device(model::pad_batch(seqs, tokenizer.pad_id()),
                                        model.weights().embed_tokens.device());
    const auto hidden = model.forward_hidden(batch.input_ids, batch.attention_mask);
    const auto values = sequence_logprobs(hidden, model.lm_head(), batch.input_ids, batch.loss_mask)
                            .to(at::kCPU)
                            .contiguous();
    std::vector<double> loglik(values.data_ptr<float>(), values.data_ptr<float>() + values.numel());
    std::vector<double> normed;
    for (std::size_t c = 0; c < q.choices.size(); ++c) {
      normed.push_back(loglik[c] /
                       static_cast<double>(std::max<std::int64_t>(1, characters(q.choices[c]))));
    }
    const auto pred = static_cast<int>(argmax(loglik));
    const auto pred_norm = static_cast<int>(argmax(normed));
    correct += pred == q.label ? 1 : 0;
    correct_norm += pred_norm == q.label ? 1 : 0;
    report.loglik.push_back(std::move(loglik));
    report.predicted.push_back(pred);
    report.predicted_norm.push_back(pred_norm);
  }
  report.acc = correct / static_cast<double>(questions.size());
  report.acc_norm = correct_norm / static_cast<double>(questions.size());
  return report;
}

CompareReport compare_models(const config::RunConfig& cfg,
                             const model::LlamaModel& a,
                             const model::LlamaModel& b,
                             const data::Tokenizer& tokenizer,
                             const std::vector<data::PromptRecord>& records_in) {
  DNPO_CHECK_WITH(DataError, !records_in.empty(), "eval --compare: no prompts");
  auto records = records_in;
  if (cfg.eval.max_prompts > 0 && static_cast<int>(records.size()) > cfg.eval.max_prompts) {
    records.resize(static_cast<std::size_t>(cfg.eval.max_prompts));
  }
  const data::ChatTemplate chat(cfg.chat, tokenizer);
  std::vector<model::GenerationRequest> requests;
  for (std::size_t i = 0; i < records.size(); ++i) {
    requests.push_back({chat.encode_prompt(records[i].prompt), i});
  }
  const auto judge = judge::make_judge(cfg.judge);
  const auto answers_of = [&](const model::LlamaModel& m) {
    const auto generations = model::generate(
        m, requests, cfg.sample, tokenizer.eos_id(), tokenizer.pad_id(), {cfg.run.seed, 0});
    std::vector<judge::JudgeRequest> batch;
    for (std::size_t i = 0; i < records.size(); ++i) {
      batch.push_back({records[i].prompt, tokenizer.decode(generations[i].tokens)});
    }
    return judge->submit(std::move(batch));  // judged while the other model generates
  };
  auto verdicts_a = answers_of(a);
  auto verdicts_b = answers_of(b);
  CompareReport report;
  report.prompts = static_cast<std::int64_t>(records.size());
  for (std::size_t i = 0; i < records.size(); ++i) {
    const auto va = verdicts_a[i].get();
    const auto vb = verdicts_b[i].get();
    if (va.outcome != judge::Outcome::kScored || vb.outcome != judge::Outcome::kScored) {
      continue;
    }
    ++report.judged;
    report.win += va.score > vb.score ? 1 : 0;
    report.tie += va.score == vb.score ? 1 : 0;
    report.loss += va.score < vb.score ? 1 : 0;
    report.mean_score_a += va.score;
    report.mean_score_b += vb.score;
  }
  if (report.judged > 0) {
    report.mean_score_a /= static_cast<double>(report.judged);
    report.mean_score_b /= static_cast<double>(report.judged);
  }
  return report;
}

std::string format_scores(const EvalScores& scores) {
  std::string tasks;
  for (const auto& [task, exact] : scores.exact_by_task) {
    tasks += fmt::format("{}{} {:.3f}", tasks.empty() ? "" : ", ", task, exact);
  }
  auto text =
      fmt::format("exact {:.3f} ({}) | score {:.1f}", scores.exact, tasks, scores.mean_score);
  if (scores.judged > 0) {
    text += fmt::format(" | judge {:.1f} ({} judged)", scores.judge_score, scores.judged);
  }
  return text;
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
    DNPO_CHECK_WITH(DataError, out.good(), "cannot write samples file '{}'", samples_out);
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
