// What an iteration leaves behind: the held-out evaluation, the log-prob histograms, the
// iteration's files, the similarity to the previous positives and the reports; see loop.h.
#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "dnpo/common/timer.h"
#include "dnpo/data/jsonl_reader.h"
#include "dnpo/model/batch.h"
#include "dnpo/selfplay/report.h"
#include "dnpo/selfplay/text_metrics.h"
#include "dnpo/train/dnpo_loss.h"
#include "loop.h"

namespace dnpo::selfplay::detail {
namespace fs = std::filesystem;

namespace {

constexpr std::array<const char*, 3> kAnswerKinds{"positive", "negative", "generated"};

struct AnswerRow {
  std::size_t kind;  // into kAnswerKinds
  const std::string* prompt;
  const std::string* answer;
};

// log π(answer|prompt) of each row, on the model's device (a GPU's, with run.device = "cuda").
std::vector<double> logprobs_of(const model::LlamaModel& model,
                                const data::ChatTemplate& chat,
                                const config::DataConfig& data,
                                std::int64_t pad_id,
                                const std::vector<AnswerRow>& rows) {
  constexpr std::size_t kBatch = 64;
  const at::NoGradGuard no_grad;
  std::vector<double> logp;
  for (std::size_t begin = 0; begin < rows.size(); begin += kBatch) {
    const auto end = std::min(rows.size(), begin + kBatch);
    std::vector<model::TokenSequence> seqs;
    for (std::size_t i = begin; i < end; ++i) {
      model::TokenSequence seq{chat.encode_prompt(*rows[i].prompt),
                               chat.encode_response(*rows[i].answer)};
      model::truncate_sequence(seq, data.max_length, data.max_prompt_length);
      seqs.push_back(std::move(seq));
    }
    const auto batch =
        model::to_device(model::pad_batch(seqs, pad_id), model.weights().embed_tokens.device());
    const auto hidden = model.forward_hidden(batch.input_ids, batch.attention_mask);
    const auto values =
        train::sequence_logprobs(hidden, model.lm_head(), batch.input_ids, batch.loss_mask)
            .to(at::kCPU)
            .contiguous();
    const auto* v = values.data_ptr<float>();
    logp.insert(logp.end(), v, v + (end - begin));
  }
  return logp;
}

// The CSV {logp (bin centre), positive, negative, generated} of `logp` (one per row, not empty)
// in bins of kBinWidth nats on a lattice shared by every iteration (so two iterations' histograms
// compare bin by bin, paper Fig. 2), from the 1st percentile up; the first bin also counts the
// tail below it, a few outliers that would otherwise squeeze the rest into a handful of bins.
// Returns each kind's mean.
Json write_histogram(const std::string& path,
                     const std::vector<AnswerRow>& rows,
                     const std::vector<double>& logp) {
  constexpr double kBinWidth = 0.5;
  constexpr std::int64_t kMaxBins = 400;
  std::vector<double> sorted(logp);
  std::sort(sorted.begin(), sorted.end());
  const double low =
      sorted[static_cast<std::size_t>(0.01 * static_cast<double>(sorted.size() - 1))];
  const double high = sorted.back();
  const auto top = static_cast<std::int64_t>(std::floor(high / kBinWidth));
  const std::int64_t first =
      std::max(static_cast<std::int64_t>(std::floor(low / kBinWidth)), top - kMaxBins + 1);
  const auto bins = static_cast<std::size_t>(top - first + 1);
  std::vector<std::array<std::int64_t, 3>> counts(bins, {0, 0, 0});
  std::array<double, 3> sums{0, 0, 0};
  std::array<std::int64_t, 3> totals{0, 0, 0};
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto lattice = static_cast<std::int64_t>(std::floor(logp[i] / kBinWidth));
    const auto bin = static_cast<std::size_t>(std::max(lattice, first) - first);
    counts[bin][rows[i].kind] += 1;
    sums[rows[i].kind] += logp[i];
    totals[rows[i].kind] += 1;
  }
  std::ofstream out(path);
  DNPO_CHECK(out.good(), "cannot write '{}'", path);
  out << "logp,positive,negative,generated\n";
  for (std::size_t b = 0; b < bins; ++b) {
    const auto& c = counts[b];
    out << (static_cast<double>(first) + static_cast<double>(b) + 0.5) * kBinWidth << "," << c[0]
        << "," << c[1] << "," << c[2] << "\n";
  }
  Json means = Json::object();
  for (std::size_t k = 0; k < kAnswerKinds.size(); ++k) {
    if (totals[k] > 0) {
      means[kAnswerKinds[k]] = sums[k] / static_cast<double>(totals[k]);
    }
  }
  return means;
}

}  // namespace

Json eval_json(const train::EvalReport& r) {
  Json j = {{"prompts", r.prompts},
            {"sampled_exact", r.sampled.exact},
            {"sampled_score", r.sampled.mean_score},
            {"sampled_exact_by_task", r.sampled.exact_by_task}};
  if (r.sampled.judged > 0) {
    j["sampled_judge_score"] = r.sampled.judge_score;
  }
  if (r.has_greedy) {
    j["greedy_exact"] = r.greedy.exact;
    j["greedy_score"] = r.greedy.mean_score;
  }
  return j;
}

std::optional<train::EvalReport> SelfplayLoop::evaluate_policy(const LabeledPairs* labeled) {
  if (eval_records_.empty() && labeled == nullptr) {
    return std::nullopt;
  }
  Timer timer;
  auto tensors = policy_->gather_parameters(comm_.rank() == 0);  // collective
  std::optional<train::EvalReport> report;
  if (comm_.rank() == 0) {
    const model::LlamaModel model(policy_->config(), tensors);
    if (!eval_records_.empty()) {
      auto eval_cfg = cfg_;
      eval_cfg.train.iteration = 0;  // the same draws for every model: differences are the model's
      eval_cfg.judge.backend = "rule";  // the verifier; `dnpo_dist eval` asks an http judge
      report = train::evaluate(eval_cfg, model, *tokenizer_, eval_records_);
    }
    if (labeled != nullptr) {
      logprob_means_ = write_logprobs(model, *labeled);
    }
  }
  comm_.barrier().wait();
  times_.eval_s = timer.seconds();
  return report;
}

// log π(y|x) under the model just trained, of up to kLogprobPairs pairs' positive and negative
// answers and of those prompts' generated answers (paper Fig. 2 and 10): a histogram CSV that
// report.cpp draws; returns the means.
Json SelfplayLoop::write_logprobs(const model::LlamaModel& model,
                                  const LabeledPairs& labeled) const {
  constexpr std::size_t kLogprobPairs = 1000;
  std::vector<AnswerRow> rows;
  for (std::size_t i = 0; i < labeled.pairs.size() && i < kLogprobPairs; ++i) {
    const auto& p = labeled.pairs[i];
    rows.push_back({0, &p.prompt, &p.chosen});
    rows.push_back({1, &p.prompt, &p.rejected});
  }
  for (std::size_t i = 0; i < state_.samples.size() && i < kLogprobPairs; ++i) {
    rows.push_back({2, &prompts_[i].prompt, &state_.samples[i].answer});
  }
  const auto logp = logprobs_of(model, chat_, cfg_.data, tokenizer_->pad_id(), rows);
  if (logp.empty()) {
    return Json::object();
  }
  fs::create_directories(dir_ + "/plots");
  return write_histogram(
      fmt::format("{}/plots/logprobs_iter_{}.csv", dir_, state_.iteration), rows, logp);
}

void SelfplayLoop::write_iteration_files(const LabeledPairs& labeled) const {
  if (comm_.rank() != 0) {
    return;
  }
  const auto dir = fmt::format("{}/iter_{}", dir_, state_.iteration);
  fs::create_directories(dir);
  std::ofstream out(dir + "/samples.jsonl");
  DNPO_CHECK(out.good(), "cannot write '{}/samples.jsonl'", dir);
  for (const auto& s : state_.samples) {
    const auto& r = prompts_[static_cast<std::size_t>(s.index)];
    const auto& g = s.generated_verdict;
    const auto& h = state_.human[static_cast<std::size_t>(s.index)];
    Json j = {{"id", r.id},
              {"prompt", r.prompt},
              {"human", r.answer},
              {"generated", s.answer},
              {"finished", s.finished},
              {"outcome_generated", g ? judge::outcome_name(g->outcome) : "none"},
              {"outcome_human", h ? judge::outcome_name(h->outcome) : "none"}};
    if (g && g->outcome == judge::Outcome::kScored) {
      j["score_generated"] = g->score;
    }
    if (h && h->outcome == judge::Outcome::kScored) {
      j["score_human"] = h->score;
    }
    out << dump(j) << "\n";
  }
  // As data::write_pairs_jsonl, but invalid UTF-8 from a byte-level model is replaced, not fatal.
  std::ofstream pairs(dir + "/pairs.jsonl");
  DNPO_CHECK(pairs.good(), "cannot write '{}/pairs.jsonl'", dir);
  for (const auto& p : labeled.pairs) {
    Json j = {{"id", p.id}, {"prompt", p.prompt}, {"chosen", p.chosen}, {"rejected", p.rejected}};
    if (p.score_chosen && p.score_rejected) {
      j["score_chosen"] = *p.score_chosen;
      j["score_rejected"] = *p.score_rejected;
    }
    pairs << dump(j) << "\n";
  }
}

Json SelfplayLoop::similarity_to_previous_positives() const {
  const auto t = state_.iteration;
  const auto path = fmt::format("{}/iter_{}/pairs.jsonl", dir_, t - 1);
  if (t == 0 || comm_.rank() != 0 || !fs::exists(path)) {
    return nullptr;
  }
  std::map<std::string, std::string> chosen;
  data::for_each_jsonl_file(path, [&chosen](const Json& j, const data::JsonlLine&) {
    chosen[j.at("id").get<std::string>()] = j.at("chosen").get<std::string>();
  });
  std::vector<TokenIds> generated;
  std::vector<TokenIds> previous;
  for (std::size_t i = 0; i < prompts_.size(); ++i) {
    const auto it = chosen.find(prompts_[i].id);
    generated.push_back(state_.samples[i].tokens);
    previous.push_back(tokenizer_->encode(it != chosen.end() ? it->second : prompts_[i].answer));
  }
  return {{"bleu", corpus_bleu(generated, previous)},
          {"rouge_l", mean_rouge_l(generated, previous)}};
}

void SelfplayLoop::write_reports() const {
  if (comm_.rank() != 0) {
    return;
  }
  const auto path = dir_ + "/selfplay.jsonl";
  const auto tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    for (const auto& r : state_.reports) {
      out << dump(r) << "\n";
    }
    DNPO_CHECK(out.good(), "cannot write '{}'", tmp);
  }
  fs::rename(tmp, path);
  try {
    write_selfplay_plots(dir_);
  } catch (const std::exception& e) {
    log::warn("plots: {} (the run goes on)", e.what());  // a plot is never worth a lost run
  }
}

void SelfplayLoop::record_report(const Json& report) {
  state_.reports.push_back(report);
  metrics_.set_iteration(state_.iteration);
  metrics_.write_object(
      dump(Json{{"kind", "selfplay"}, {"iteration", state_.iteration}, {"report", report}}));
  write_reports();
}

}  // namespace dnpo::selfplay::detail
