// Stage drivers behind dnpo_dist's subcommands: load config-dependent parts, run, save, report.
#include "dnpo/train/driver.h"

#include <filesystem>
#include <fstream>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "dnpo/common/timer.h"
#include "dnpo/config/loader.h"
#include "dnpo/data/chat_template.h"
#include "dnpo/data/demo_world.h"
#include "dnpo/data/jsonl.h"
#include "dnpo/data/tokenizer.h"
#include "dnpo/model/hf_io.h"
#include "dnpo/model/sampler.h"
#include "dnpo/train/driver_parts.h"
#include "dnpo/train/evaluate.h"
#include "dnpo/train/trainer.h"

#ifndef DNPO_GIT_SHA
#define DNPO_GIT_SHA "unknown"
#endif

namespace dnpo::train {
namespace fs = std::filesystem;
namespace {
// run.threads, or this node's cores shared by the ranks on it.
void set_threads(const config::RunConfig& cfg, const dist::Comm& comm) {
  int threads = cfg.run.threads;
  if (threads <= 0) {
    const int cores = static_cast<int>(std::max(1U, std::thread::hardware_concurrency()));
    threads = std::max(1, cores / comm.local_world_size());
  }
  at::set_num_threads(threads);
}

void check_same_model(const config::ModelConfig& m,
                      const config::RunConfig& cfg,
                      const std::string& dir) {
  DNPO_CHECK_WITH(
      ConfigError,
      m.vocab_size == cfg.model.vocab_size && m.hidden_size == cfg.model.hidden_size &&
          m.num_hidden_layers == cfg.model.num_hidden_layers,
      "the model in '{}' (vocab {}, hidden {}, layers {}) differs from [model] in the config "
      "(vocab {}, hidden {}, layers {}); hint: make [model] match the HF config.json",
      dir,
      m.vocab_size,
      m.hidden_size,
      m.num_hidden_layers,
      cfg.model.vocab_size,
      cfg.model.hidden_size,
      cfg.model.num_hidden_layers);
}

}  // namespace

namespace detail {

std::string run_dir(const config::RunConfig& cfg) {
  return cfg.run.out_dir + "/" + cfg.run.name;
}

model::LlamaModel load_or_init_model(const config::RunConfig& cfg, const std::string& init) {
  const std::string dir = init.empty() ? cfg.model.init_from : init;
  if (dir.empty()) {
    log::info_rank0("model: random init (seed {})", cfg.run.seed);
    return {cfg.model, cfg.run.seed};
  }
  log::info_rank0("model: loading {}", dir);
  auto model = model::load_hf_model(dir, cfg.model);
  check_same_model(model.config(), cfg, dir);
  return model;
}

// The policy as FSDP units, built a unit at a time: the counter-based init, or an HF directory
// of which each rank reads only its own pieces. No rank ever holds the whole model.
std::unique_ptr<ShardedLlama> make_policy(const config::RunConfig& cfg,
                                          const std::string& init,
                                          dist::Comm& comm) {
  const std::string dir = init.empty() ? cfg.model.init_from : init;
  const bool sharded = comm.world_size() > 1;
  if (dir.empty()) {
    log::info_rank0("model: random init (seed {})", cfg.run.seed);
    const auto model_cfg = cfg.model;
    const auto seed = cfg.run.seed;
    return std::make_unique<ShardedLlama>(
        model_cfg,
        [&](const std::string& name) { return model::initial_parameter(model_cfg, name, seed); },
        comm,
        unit_precision(cfg, comm.device()),
        true,
        sharded);
  }
  log::info_rank0("model: loading {} (each rank reads its shard)", dir);
  const auto model_cfg = model::read_hf_config(dir, cfg.model);
  check_same_model(model_cfg, cfg, dir);
  const model::HfTensorReader reader(dir);
  auto policy = std::make_unique<ShardedLlama>(
      model_cfg,
      [&](const std::string& name) {
        return at::zeros(model::parameter_shape(model_cfg, name), at::kFloat);
      },
      comm,
      unit_precision(cfg, comm.device()),
      true,
      sharded);
  policy->load_hf(reader);
  return policy;
}

void save_model(const config::RunConfig& cfg,
                const config::ModelConfig& model_cfg,
                const model::NamedTensors& tensors,
                const std::string& dir) {
  model::save_hf_tensors(dir, model_cfg, tensors);
  if (cfg.tokenizer.kind == "sentencepiece" && !cfg.tokenizer.path.empty()) {
    fs::copy_file(
        cfg.tokenizer.path, dir + "/tokenizer.model", fs::copy_options::overwrite_existing);
  }
  log::info_rank0("saved model to {}", dir);
}

void write_summary(const std::string& path, const nlohmann::json& j) {
  std::ofstream out(path);
  DNPO_CHECK(out.good(), "cannot write '{}'", path);
  out << j.dump(2) << "\n";
}

nlohmann::json summary_json(const TrainSummary& s) {
  return {{"steps", s.steps},
          {"first_loss", s.first_loss},
          {"last_loss", s.last_loss},
          {"mean_step_ms", s.mean_step_ms},
          {"tokens_per_second", s.tokens_per_second},
          {"truncated", s.truncated},
          {"skipped_identical", s.skipped_identical}};
}

void save_trained_model(const config::RunConfig& cfg,
                        ShardedLlama& policy,
                        const TrainSummary* summary,
                        const std::string& dir,
                        dist::Comm& comm) {
  const auto tensors = policy.gather_parameters(comm.rank() == 0);  // collective
  if (comm.rank() == 0) {
    save_model(cfg, policy.config(), tensors, dir);
    if (summary != nullptr) {
      write_summary(dir + "/summary.json", summary_json(*summary));
    }
  }
  comm.barrier().wait();  // the model is on disk before any rank goes on
}

std::string output_dir(const config::RunConfig& cfg,
                       const StageOptions& options,
                       const std::string& stage) {
  return options.output_dir.empty() ? run_dir(cfg) + "/" + stage : options.output_dir;
}

std::string checkpoint_dir(const config::RunConfig& cfg) {
  return cfg.checkpoint.dir.empty() ? run_dir(cfg) + "/checkpoints" : cfg.checkpoint.dir;
}

}  // namespace detail

using namespace detail;  // NOLINT(google-build-using-namespace): this file defines them

std::string prepare_run_dir(const config::RunConfig& cfg, dist::Comm& comm) {
  auto dir = run_dir(cfg);
  if (comm.rank() == 0) {
    fs::create_directories(dir);
    std::ofstream out(dir + "/resolved_config.toml");
    DNPO_CHECK(out.good(), "cannot write '{}/resolved_config.toml'", dir);
    out << "# resolved configuration (dnpo " << DNPO_GIT_SHA << ")\n" << config::to_toml(cfg);
  }
  set_threads(cfg, comm);
  log::info_rank0("dnpo {} | run dir {} | {} threads", DNPO_GIT_SHA, dir, at::get_num_threads());
  return dir;
}

namespace {

// Data files in the demo world's layout are used as they are: a demo.train_size or eval_size
// that differs from them does not apply until they are deleted; say so rather than be ignored.
void note_existing_demo_world(const config::RunConfig& cfg) {
  const fs::path train_path(cfg.data.train_file);
  const fs::path eval_path(cfg.data.eval_file);
  if (train_path.filename() != "train.jsonl" || eval_path.filename() != "eval.jsonl" ||
      train_path.parent_path() != eval_path.parent_path()) {
    return;  // not the demo world's layout: a user's own data
  }
  const auto lines = [](const std::string& path) {
    std::ifstream in(path);
    std::int64_t n = 0;
    for (std::string line; std::getline(in, line);) {
      n += line.empty() ? 0 : 1;
    }
    return n;
  };
  const auto train = lines(cfg.data.train_file);
  const auto eval = lines(cfg.data.eval_file);
  if (train != cfg.demo.train_size || eval != cfg.demo.eval_size) {
    log::info_rank0(
        "data: using the existing {} ({} records) and {} ({}); demo.train_size = {} and "
        "demo.eval_size = {} apply only where the demo world is written (delete both to "
        "regenerate it)",
        cfg.data.train_file,
        train,
        cfg.data.eval_file,
        eval,
        cfg.demo.train_size,
        cfg.demo.eval_size);
  }
}

}  // namespace

void ensure_demo_data(const config::RunConfig& cfg, dist::Comm& comm) {
  const auto& train_file = cfg.data.train_file;
  const auto& eval_file = cfg.data.eval_file;
  if (comm.rank() != 0) {
    comm.barrier().wait();  // rank 0 checks, and writes the files
    return;
  }
  const bool has_train = fs::exists(train_file);
  const bool has_eval = fs::exists(eval_file);
  if (has_train && has_eval) {
    note_existing_demo_world(cfg);
    comm.barrier().wait();
    return;
  }
  // The demo world is written as <dir>/train.jsonl and <dir>/eval.jsonl, and only where neither
  // exists: it must never replace a user's file, nor stand in for data named elsewhere.
  const auto dir = fs::path(train_file).parent_path();
  const bool demo_layout = fs::path(train_file).filename() == "train.jsonl" &&
                           fs::path(eval_file).filename() == "eval.jsonl" &&
                           fs::path(eval_file).parent_path() == dir;
  const std::string missing =
      has_train ? "data.eval_file '" + eval_file + "'" : "data.train_file '" + train_file + "'";
  DNPO_CHECK_WITH(DataError,
                  !has_train && !has_eval && demo_layout,
                  "{}: no such file{}; hint: give both data files, or leave both missing as "
                  "<dir>/train.jsonl and <dir>/eval.jsonl to have the demo world generated there",
                  missing,
                  has_train || has_eval ? " (the other data file exists, so the demo world is "
                                          "not generated over it)"
                                        : "");
  log::info_rank0("demo world: writing {} train / {} eval tasks to {}",
                  cfg.demo.train_size,
                  cfg.demo.eval_size,
                  dir.empty() ? "." : dir.string());
  data::write_demo_data(cfg.demo, dir.empty() ? "." : dir.string());
  comm.barrier().wait();
}

namespace {

/// Runs `stage` on a Trainer of `policy` that writes <dir>/metrics.jsonl (rank 0), checkpoints
/// under checkpoint.dir and resumes as checkpoint.resume says.
template <typename Stage>
TrainSummary run_trainer(const config::RunConfig& cfg,
                         ShardedLlama& policy,
                         const data::Tokenizer& tokenizer,
                         const std::string& dir,
                         dist::Comm& comm,
                         Stage stage) {
  MetricsWriter metrics(comm.rank() == 0 ? dir + "/metrics.jsonl" : "");
  Trainer trainer(cfg, policy, tokenizer, metrics, comm);
  Checkpointer checkpointer(cfg.checkpoint, checkpoint_dir(cfg), comm);
  trainer.set_checkpointing(&checkpointer, resume_checkpoint(cfg.checkpoint, checkpointer.dir()));
  return stage(trainer);
}

/// What tells the training stages apart in run_training_stage.
struct TrainingStage {
  std::string name;             ///< its output folder under the run dir: "sft", "train"
  std::string log_name;         ///< how its closing log line names it: "sft", "train (npo)"
  std::string loss_name;        ///< how that line names the summary's loss
  bool log_model_size = false;  ///< whether it logs the policy's parameter count
};

/// The skeleton every training stage shares: the run dir; its data (read_data(), before the
/// model is built, so bad data fails fast); tokenizer and policy; (trainer.*train)(data) through
/// run_trainer; a closing log line; the trained model and its summary.json saved.
template <typename Records, typename ReadData>
void run_training_stage(const config::RunConfig& cfg,
                        const StageOptions& options,
                        dist::Comm& comm,
                        const TrainingStage& stage,
                        TrainSummary (Trainer::*train)(const std::vector<Records>&),
                        ReadData read_data) {
  const auto dir = prepare_run_dir(cfg, comm);
  const std::vector<Records> records = read_data();
  const auto tokenizer = data::make_tokenizer(cfg.tokenizer);
  auto policy = make_policy(cfg, options.init_model, comm);
  if (stage.log_model_size) {
    log::info_rank0("model: {} parameters", policy->num_parameters());
  }
  const auto summary = run_trainer(cfg, *policy, *tokenizer, dir, comm, [&](Trainer& trainer) {
    return (trainer.*train)(records);
  });
  log::info_rank0("{} done: {} steps, {} {:.4f} → {:.4f}, {:.0f} ms/step",
                  stage.log_name,
                  summary.steps,
                  stage.loss_name,
                  summary.first_loss,
                  summary.last_loss,
                  summary.mean_step_ms);
  save_trained_model(cfg, *policy, &summary, output_dir(cfg, options, stage.name), comm);
}

}  // namespace

void run_sft(const config::RunConfig& cfg, const StageOptions& options, dist::Comm& comm) {
  const TrainingStage sft{"sft", "sft", "loss", true};
  run_training_stage(cfg, options, comm, sft, &Trainer::train_sft, [&] {
    DNPO_CHECK_WITH(ConfigError, !cfg.data.train_file.empty(), "sft needs data.train_file");
    return data::read_prompts_jsonl(cfg.data.train_file);
  });
}

void run_train(const config::RunConfig& cfg, const StageOptions& options, dist::Comm& comm) {
  const TrainingStage train{"train", "train (" + cfg.train.loss + ")", "model loss", false};
  run_training_stage(cfg, options, comm, train, &Trainer::train_preference, [&] {
    DNPO_CHECK_WITH(ConfigError, !cfg.data.pairs_file.empty(), "train needs data.pairs_file");
    return data::read_pairs_jsonl(cfg.data.pairs_file);
  });
}

namespace {

/// data.eval_file's records, for `command` (which needs the key set).
std::vector<data::PromptRecord> eval_records(const config::RunConfig& cfg, const char* command) {
  DNPO_CHECK_WITH(ConfigError, !cfg.data.eval_file.empty(), "{} needs data.eval_file", command);
  return data::read_prompts_jsonl(cfg.data.eval_file);
}

/// eval --compare A B: the two models judged side by side on data.eval_file.
double eval_compare(const config::RunConfig& cfg,
                    const StageOptions& options,
                    const data::Tokenizer& tokenizer,
                    const std::string& dir) {
  const auto records = eval_records(cfg, "eval --compare");
  const auto a = load_or_init_model(cfg, options.compare[0]);
  const auto b = load_or_init_model(cfg, options.compare[1]);
  const auto r = compare_models(cfg, a, b, tokenizer, records);
  const auto share = [&](std::int64_t n) {
    return r.judged > 0 ? static_cast<double>(n) / static_cast<double>(r.judged) : 0.0;
  };
  log::info_rank0(
      "compare on {} prompts ({} judged): A wins {:.1f}%, ties {:.1f}%, loses {:.1f}% | mean "
      "score A {:.1f}, B {:.1f} | A = {}, B = {}",
      r.prompts,
      r.judged,
      100 * share(r.win),
      100 * share(r.tie),
      100 * share(r.loss),
      r.mean_score_a,
      r.mean_score_b,
      options.compare[0],
      options.compare[1]);
  write_summary(dir + "/compare.json",
                {{"a", options.compare[0]},
                 {"b", options.compare[1]},
                 {"prompts", r.prompts},
                 {"judged", r.judged},
                 {"win", r.win},
                 {"tie", r.tie},
                 {"loss", r.loss},
                 {"mean_score_a", r.mean_score_a},
                 {"mean_score_b", r.mean_score_b}});
  return share(r.win);
}

/// eval --choices: multiple-choice questions scored by log-likelihood.
double eval_choices(const config::RunConfig& cfg,
                    const StageOptions& options,
                    const data::Tokenizer& tokenizer,
                    const std::string& dir) {
  const auto questions = data::read_choices_jsonl(options.choices_file);
  const auto model = load_or_init_model(cfg, options.init_model);
  const auto r = score_choices(cfg, model, tokenizer, questions);
  log::info_rank0("multiple choice ({}): {} questions, acc {:.4f}, acc_norm {:.4f}",
                  options.choices_file,
                  r.questions,
                  r.acc,
                  r.acc_norm);
  write_summary(dir + "/eval_choices.json",
                {{"file", options.choices_file},
                 {"questions", r.questions},
                 {"acc", r.acc},
                 {"acc_norm", r.acc_norm}});
  if (!options.choices_out.empty()) {
    std::ofstream out(options.choices_out);
    DNPO_CHECK_WITH(DataError, out.good(), "cannot write '{}'", options.choices_out);
    for (std::size_t i = 0; i < questions.size(); ++i) {
      out << nlohmann::json{{"id", questions[i].id},
                            {"label", questions[i].label},
                            {"loglik", r.loglik[i]},
                            {"predicted", r.predicted[i]},
                            {"predicted_norm", r.predicted_norm[i]}}
                 .dump()
          << "\n";
    }
  }
  return r.acc;
}

/// eval: held-out accuracy and verifier score on data.eval_file.
double eval_held_out(const config::RunConfig& cfg,
                     const StageOptions& options,
                     const data::Tokenizer& tokenizer,
                     const std::string& dir) {
  const auto records = eval_records(cfg, "eval");
  const auto model = load_or_init_model(cfg, options.init_model);
  const auto report = evaluate(cfg, model, tokenizer, records, options.samples_out);
  log::info_rank0("eval on {} prompts ({} scorable)", report.prompts, report.scorable);
  log::info_rank0("  sampled (T={}): {}", cfg.sample.temperature, format_scores(report.sampled));
  nlohmann::json j = {{"prompts", report.prompts},
                      {"scorable", report.scorable},
                      {"sampled_exact", report.sampled.exact},
                      {"sampled_score", report.sampled.mean_score},
                      {"sampled_exact_by_task", report.sampled.exact_by_task}};
  if (report.sampled.judged > 0) {
    j["sampled_judge_score"] = report.sampled.judge_score;
    j["sampled_judged"] = report.sampled.judged;
  }
  if (report.has_greedy) {
    log::info_rank0("  greedy:        {}", format_scores(report.greedy));
    j["greedy_exact"] = report.greedy.exact;
    j["greedy_score"] = report.greedy.mean_score;
    j["greedy_exact_by_task"] = report.greedy.exact_by_task;
  }
  write_summary(dir + "/eval.json", j);
  return report.sampled.exact;
}

}  // namespace

double run_eval(const config::RunConfig& cfg, const StageOptions& options, dist::Comm& comm) {
  const auto dir = prepare_run_dir(cfg, comm);
  if (comm.rank() != 0) {
    return 0;  // one rank evaluates for now
  }
  const auto tokenizer = data::make_tokenizer(cfg.tokenizer);
  if (options.compare.size() == 2) {
    return eval_compare(cfg, options, *tokenizer, dir);
  }
  if (!options.choices_file.empty()) {
    return eval_choices(cfg, options, *tokenizer, dir);
  }
  return eval_held_out(cfg, options, *tokenizer, dir);
}

void run_generate(const config::RunConfig& cfg,
                  const StageOptions& options,
                  const std::string& prompts_file,
                  const std::string& out,
                  dist::Comm& comm) {
  const auto dir = prepare_run_dir(cfg, comm);
  const auto records = data::read_prompts_jsonl(prompts_file);
  const auto tokenizer = data::make_tokenizer(cfg.tokenizer);
  const data::ChatTemplate chat(cfg.chat, *tokenizer);
  auto model = load_or_init_model(cfg, options.init_model);
  model.prepare_for_decoding(model::decoding_dtype(cfg.sample.dtype));
  const int rank = comm.rank();
  const int world = comm.world_size();
  std::vector<model::GenerationRequest> requests;
  std::vector<std::size_t> mine;
  for (std::size_t i = static_cast<std::size_t>(rank); i < records.size();
       i += static_cast<std::size_t>(world)) {
    requests.push_back({chat.encode_prompt(records[i].prompt), i});
    mine.push_back(i);
  }
  Timer timer;
  const auto generations = model::generate(model,
                                           requests,
                                           cfg.sample,
                                           tokenizer->eos_id(),
                                           tokenizer->pad_id(),
                                           {cfg.run.seed, cfg.train.iteration});
  // Token ids travel (exact bytes); rank 0 decodes and writes in prompt order.
  nlohmann::json mine_json = nlohmann::json::array();
  for (std::size_t k = 0; k < mine.size(); ++k) {
    mine_json.push_back({mine[k], generations[k].tokens, generations[k].finished});
  }
  const auto all = dist::all_gather_text(comm, mine_json.dump());
  if (comm.rank() != 0) {
    return;
  }
  std::vector<std::pair<std::vector<std::int64_t>, bool>> answers(records.size());
  for (const auto& text : all) {
    for (const auto& a : nlohmann::json::parse(text)) {
      answers[a.at(0).get<std::size_t>()] = {a.at(1).get<std::vector<std::int64_t>>(),
                                             a.at(2).get<bool>()};
    }
  }
  std::ofstream file(out);
  DNPO_CHECK_WITH(DataError, file.good(), "cannot write '{}'", out);
  for (std::size_t i = 0; i < records.size(); ++i) {
    const nlohmann::json j = {{"id", records[i].id},
                              {"prompt", records[i].prompt},
                              {"answer", records[i].answer},
                              {"generated", tokenizer->decode(answers[i].first)},
                              {"finished", answers[i].second}};
    // A byte-level model can emit invalid UTF-8: written as U+FFFD, not fatal.
    file << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  log::info_rank0("generate: {} answers from {} on {} rank(s), matrices in {}, in {:.1f} s → {}",
                  records.size(),
                  options.init_model.empty() ? cfg.model.init_from : options.init_model,
                  world,
                  c10::toString(model.weights().lm_head.scalar_type()),
                  timer.seconds(),
                  out);
}

}  // namespace dnpo::train
