// dnpo_dist: the trainer's command line. Every process is an MPI process (mpirun, srun, or a
// plain start as a world of one). Parses options (CLI11), resolves the config (file → --set
// overrides → validate for this world size), opens the process group, runs a stage, and turns
// any error into one clear message naming the rank and a non-zero exit; with several ranks it
// then aborts the job, so no rank waits on a dead peer. A bare `dnpo_dist --config X` runs the
// whole job (`run`).
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <memory>
#include <stdexcept>

#include <CLI/CLI.hpp>

#include "blas_setup.h"
#include "dnpo/common/allocator.h"
#include "dnpo/common/env.h"
#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "dnpo/common/main.h"
#include "dnpo/common/preemption.h"
#include "dnpo/config/loader.h"
#include "dnpo/data/demo_world.h"
#include "dnpo/dist/comm.h"
#include "dnpo/dist/mpi_env.h"
#include "dnpo/selfplay/report.h"
#include "dnpo/selfplay/selfplay.h"
#include "dnpo/train/checkpointing.h"
#include "dnpo/train/driver.h"

namespace {

struct Options {
  std::string config_path;
  std::vector<std::string> overrides;
  dnpo::train::StageOptions stage;
  std::string loss;
  std::string pairs;
  std::string demo_out;
  std::string resume;
  std::vector<std::string> report_runs;
  std::string report_metrics;
  std::string report_plot;
  std::string prompts_file;
  std::string generate_out;
};

void add_common(CLI::App* app, Options& o) {
  app->add_option("-c,--config", o.config_path, "TOML config file (default: built-in defaults)");
  app->add_option(
         "--set", o.overrides, "override a config key, e.g. --set train.lr=1e-4 (repeatable)")
      ->type_name("KEY=VALUE");
  app->add_option("--resume",
                  o.resume,
                  "auto (the newest valid checkpoint of the run) | none | a checkpoint file "
                  "(sets checkpoint.resume)");
}

dnpo::config::RunConfig resolve(const Options& o, int world) {
  auto cfg = dnpo::config::load_config(o.config_path, o.overrides);
  dnpo::config::validate(cfg, world);
#ifndef DNPO_WITH_CUDA
  DNPO_CHECK_WITH(dnpo::ConfigError,
                  cfg.run.device == "cpu",
                  "run.device = \"{}\": this build has no CUDA (its LibTorch is CPU-only); build "
                  "against a CUDA LibTorch (launch/device-debs) or set run.device = \"cpu\"",
                  cfg.run.device);
#endif
  return cfg;
}

/// An error every rank meets alike, before any collective: the config's file, the overrides and
/// the world size are the same on every rank. Rank 0 reports it; the others end quietly.
struct SameOnEveryRank : std::runtime_error {
  using std::runtime_error::runtime_error;
};

dnpo::config::RunConfig resolve_on_every_rank(const Options& o, int world) {
  try {
    return resolve(o, world);
  } catch (const std::exception& e) {
    throw SameOnEveryRank(e.what());
  }
}

/// The subcommands, for telling which one the command line chose.
struct Commands {
  CLI::App* sft = nullptr;
  CLI::App* train = nullptr;
  CLI::App* eval = nullptr;
  CLI::App* generate = nullptr;
  CLI::App* demo = nullptr;
  CLI::App* report = nullptr;
};

/// sft, train, generate and demo-data: the commands that run one stage of the job.
void add_stage_commands(CLI::App& app, Options& o, Commands& c) {
  auto* run = app.add_subcommand(
      "run", "the whole job (default): demo data, SFT, SPIN iteration 0, iterations 1..T");
  add_common(run, o);
  c.sft =
      app.add_subcommand("sft", "supervised fine-tuning on prompt/answer JSONL (data.train_file)");
  add_common(c.sft, o);
  c.sft->add_option("--init", o.stage.init_model, "HF model directory to start from");
  c.sft->add_option(
      "--out", o.stage.output_dir, "where to write the model (default <run_dir>/sft)");
  c.train = app.add_subcommand("train", "preference training on pairs JSONL (data.pairs_file)");
  add_common(c.train, o);
  c.train->add_option("--init", o.stage.init_model, "HF model directory to start from");
  c.train->add_option(
      "--out", o.stage.output_dir, "where to write the model (default <run_dir>/train)");
  c.train->add_option("--loss", o.loss, "spin | npo (sets train.loss)");
  c.train->add_option("--pairs", o.pairs, "pairs JSONL (sets data.pairs_file)");
  c.generate = app.add_subcommand(
      "generate", "answers to a prompts JSONL, split across the ranks (sampling per [sample])");
  add_common(c.generate, o);
  c.generate->add_option(
      "--model", o.stage.init_model, "HF model directory (default model.init_from)");
  c.generate
      ->add_option("--prompts", o.prompts_file, "prompts JSONL ({\"id\",\"prompt\"[,\"answer\"]})")
      ->required();
  c.generate->add_option("--out", o.generate_out, "answers JSONL to write")->required();
  c.demo = app.add_subcommand("demo-data", "write the demo world's train/eval JSONL");
  add_common(c.demo, o);
  c.demo->add_option("--out", o.demo_out, "directory (default: that of data.train_file)");
}

/// eval (a model's accuracy, or two models compared) and report (run directories side by side).
void add_reading_commands(CLI::App& app, Options& o, Commands& c) {
  c.eval = app.add_subcommand("eval", "held-out accuracy and verifier score of a model");
  add_common(c.eval, o);
  auto* eval_model =
      c.eval->add_option("--model", o.stage.init_model, "HF model directory to evaluate");
  auto* eval_compare = c.eval
                           ->add_option("--compare",
                                        o.stage.compare,
                                        "instead: two HF model directories A B; win/tie/loss "
                                        "of A's judged answers against B's on data.eval_file")
                           ->expected(2);
  eval_model->excludes(eval_compare);
  c.eval->callback([eval_model, eval_compare] {
    if (eval_model->count() == 0 && eval_compare->count() == 0) {
      throw CLI::RequiredError("--model or --compare");
    }
  });
  c.eval->add_option("--samples-out", o.stage.samples_out, "write generated answers as JSONL");
  c.eval->add_option("--choices",
                     o.stage.choices_file,
                     "instead: multiple-choice accuracy (acc, acc_norm) on a JSONL of "
                     "{question, choices, label|answer}");
  c.eval->add_option(
      "--choices-out", o.stage.choices_out, "per-question log-likelihoods and predictions (JSONL)");
  c.report = app.add_subcommand(
      "report", "print the self-play table of run directories side by side; redraw their plots");
  c.report->add_option("runs", o.report_runs, "run directories (<run.out_dir>/<run.name>)")
      ->required();
  c.report->add_option("--by-mode",
                       o.report_metrics,
                       "instead: mean ± std over the runs of each mode, per model, of these "
                       "comma-separated metrics (sampled_exact, greedy_exact, sampled_score, "
                       "generated_at_least_human)");
  c.report->add_option("--plot",
                       o.report_plot,
                       "the runs compared in one picture (PNG): sampled_exact per model, or the "
                       "first --by-mode metric per mode (default: comparison.png beside the "
                       "first run)");
}

/// Several runs (or modes) in one picture; its path printed.
void plot_comparison(const Options& o) {
  const bool by_mode = !o.report_metrics.empty();
  if (o.report_runs.size() < 2 && !by_mode) {
    return;
  }
  const auto metric =
      by_mode ? o.report_metrics.substr(0, o.report_metrics.find(',')) : "sampled_exact";
  const auto png =
      o.report_plot.empty()
          ? (std::filesystem::path(o.report_runs.front()).parent_path() / "comparison.png").string()
          : o.report_plot;
  const auto drawn = dnpo::selfplay::write_comparison_plot(o.report_runs, metric, by_mode, png);
  if (!drawn.empty()) {
    std::cout << "comparison: " << drawn << "\n";
  }
}

/// `report`: reads files only (no config, no process group); rank 0 prints and plots.
void run_report(const Options& o, int rank) {
  if (rank != 0) {
    return;
  }
  if (o.report_metrics.empty()) {
    for (const auto& dir : o.report_runs) {
      for (const auto& png : dnpo::selfplay::write_selfplay_plots(dir)) {
        dnpo::log::info("plot: {}", png);
      }
    }
    std::cout << dnpo::selfplay::selfplay_table(o.report_runs);
    plot_comparison(o);
    return;
  }
  for (std::size_t at = 0; at < o.report_metrics.size();) {
    const auto comma = std::min(o.report_metrics.find(',', at), o.report_metrics.size());
    const auto metric = o.report_metrics.substr(at, comma - at);
    at = comma + 1;
    const bool of_answers = metric == "generated_at_least_human";
    std::cout << metric << " (mean ± std over seeds, (runs)); column model_k: "
              << (of_answers ? "iteration k-1's answers, generated by model_k-1\n"
                             : "the model after iteration k-1 (model_0 = SFT)\n")
              << dnpo::selfplay::selfplay_mode_table(o.report_runs, metric) << "\n";
  }
  plot_comparison(o);
}

/// The data key the chosen command reads, checked with the config (alike on every rank, before
/// any collective, so rank 0 alone reports it) rather than where the command first reads it.
/// eval runs on rank 0 only, and generate takes its prompts from the command line.
void require_data_keys_on_every_rank(const dnpo::config::RunConfig& cfg, const Commands& c) {
  const auto require = [](const std::string& value, const char* message) {
    try {
      DNPO_CHECK_WITH(dnpo::ConfigError, !value.empty(), "{}", message);
    } catch (const dnpo::ConfigError& e) {
      throw SameOnEveryRank(e.what());
    }
  };
  if (*c.sft) {
    require(cfg.data.train_file, "sft needs data.train_file");
  } else if (*c.train) {
    require(cfg.data.pairs_file, "train needs data.pairs_file");
  } else if (!*c.generate && !*c.eval && !*c.demo) {
    require(cfg.data.train_file, "selfplay needs data.train_file");
  }
}

/// Resolves the config, opens the process group and runs the chosen command (the whole job when
/// none was named).
void run_command(Options& o,
                 const Commands& c,
                 const dnpo::dist::MpiEnv& mpi,
                 const std::string& blas,
                 const std::string& heap) {
  if (!o.loss.empty()) {
    o.overrides.push_back("train.loss=" + o.loss);
  }
  if (!o.pairs.empty()) {
    o.overrides.push_back("data.pairs_file=" + o.pairs);
  }
  if (!o.resume.empty()) {
    o.overrides.push_back("checkpoint.resume=\"" + o.resume + "\"");
  }
  const auto cfg = resolve_on_every_rank(o, mpi.world_size());
  require_data_keys_on_every_rank(cfg, c);
  dnpo::log::init(mpi.rank(), cfg.run.log_level);
  dnpo::log::info_rank0("{}", blas);
  dnpo::log::info_rank0("{}", heap);
  // One process on the CPU needs no process group; several share one (Gloo). On CUDA there is
  // always one (NCCL, one GPU per rank by local rank): one GPU runs the same streams and events
  // as many.
  const auto comm = mpi.world_size() > 1 || cfg.run.device == "cuda"
                        ? std::make_unique<dnpo::dist::Comm>(mpi, cfg.dist, cfg.run.device)
                        : dnpo::dist::Comm::one_process();
  if (*c.sft) {
    dnpo::train::run_sft(cfg, o.stage, *comm);
  } else if (*c.train) {
    dnpo::train::run_train(cfg, o.stage, *comm);
  } else if (*c.generate) {
    dnpo::train::run_generate(cfg, o.stage, o.prompts_file, o.generate_out, *comm);
  } else if (*c.eval) {
    dnpo::train::run_eval(cfg, o.stage, *comm);
  } else if (*c.demo) {
    if (mpi.rank() == 0 && !o.demo_out.empty()) {
      dnpo::data::write_demo_data(cfg.demo, o.demo_out);
    } else if (o.demo_out.empty()) {
      dnpo::train::ensure_demo_data(cfg, *comm);
    }
  } else {
    dnpo::selfplay::run_job(cfg, *comm);
  }
}

/// An error on this rank: one line naming it; with several ranks the whole job ends now, since
/// the others may be blocked in a collective with this one.
int fail(const std::exception& e, int rank, int world) {
  if (world == 1) {
    dnpo::log::error("fatal: {}", e.what());
    return 1;
  }
  dnpo::log::error("fatal on rank {} of {}: {}", rank, world, e.what());
  dnpo::log::error("aborting all {} ranks", world);
  spdlog::default_logger()->flush();
  dnpo::dist::MpiEnv::abort(1);
}

/// The whole command line; main() only adds a last-resort catch around it.
int run_cli(int argc, char** argv) {
  const auto blas = dnpo::app::ensure_fast_blas(argc, argv);  // may re-exec: before MPI_Init
  const auto heap = dnpo::configure_heap();
  const dnpo::dist::MpiEnv mpi(&argc, &argv);
  dnpo::log::init(mpi.rank(), dnpo::env::get(dnpo::env::kLogLevel).value_or("info"));
  dnpo::preemption::install_handlers();
  CLI::App app{"dnpo_dist — DNPO self-improvement trainer (SFT, SPIN, NPO/DNPO)"};
  app.require_subcommand(0, 1);
  Options o;
  add_common(&app, o);
  Commands commands;
  add_stage_commands(app, o, commands);
  add_reading_commands(app, o, commands);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return mpi.rank() == 0 ? app.exit(e) : e.get_exit_code();  // --help or a usage error, once
  }
  try {
    if (*commands.report) {
      run_report(o, mpi.rank());
      return 0;
    }
    run_command(o, commands, mpi, blas, heap);
  } catch (const dnpo::train::Preempted& p) {
    // Every rank saved its part of the checkpoint and agreed to stop: a clean exit, so Slurm
    // (or the user's script) can requeue and resume.
    dnpo::log::info_rank0("stopped on signal {} after step {}; resume with --resume auto ({})",
                          p.signal_number,
                          p.step,
                          p.path);
  } catch (const SameOnEveryRank& e) {
    if (mpi.rank() == 0) {
      dnpo::log::error("fatal: {}", e.what());
    }
    return 1;
  } catch (const std::exception& e) {
    return fail(e, mpi.rank(), mpi.world_size());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // run_cli() reports errors through the logger; this catches what escapes it (an error while
  // setting up BLAS, the logger or the command line, or one thrown by the logger itself).
  return dnpo::guarded_main("dnpo_dist", argc, argv, run_cli);
}
