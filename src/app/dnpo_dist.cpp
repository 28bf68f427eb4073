// dnpo_dist: the trainer's command line. Every process is an MPI process (mpirun, srun, or a
// plain start as a world of one). Parses options (CLI11), resolves the config (file → --set
// overrides → validate for this world size), opens the process group, runs a stage, and turns
// any error into one clear message naming the rank and a non-zero exit; with several ranks it
// then aborts the job, so no rank waits on a dead peer. A bare `dnpo_dist --config X` runs the
// whole job (`run`).
#include <cstdio>
#include <exception>
#include <iostream>
#include <memory>

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
                  "run.device = \"",
                  cfg.run.device,
                  "\": this build has no CUDA (its LibTorch is CPU-only); build against a CUDA "
                  "LibTorch (launch/device-debs) or set run.device = \"cpu\"");
#endif
  return cfg;
}

/// The whole command line; main() only adds a last-resort catch around it.
int run_cli(int argc, char** argv) {
  const auto blas = dnpo::app::ensure_fast_blas(argc, argv);  // may re-exec: before MPI_Init
  const auto heap = dnpo::configure_heap();
  const dnpo::dist::MpiEnv mpi(&argc, &argv);
  const int rank = mpi.rank();
  const int world = mpi.world_size();
  dnpo::log::init(rank, dnpo::env::get(dnpo::env::kLogLevel).value_or("info"));
  dnpo::preemption::install_handlers();
  CLI::App app{"dnpo_dist — DNPO self-improvement trainer (SFT, SPIN, NPO/DNPO)"};
  app.require_subcommand(0, 1);
  Options o;
  add_common(&app, o);

  auto* run = app.add_subcommand(
      "run", "the whole job (default): demo data, SFT, SPIN iteration 0, iterations 1..T");
  add_common(run, o);
  auto* sft =
      app.add_subcommand("sft", "supervised fine-tuning on prompt/answer JSONL (data.train_file)");
  add_common(sft, o);
  sft->add_option("--init", o.stage.init_model, "HF model directory to start from");
  sft->add_option("--out", o.stage.output_dir, "where to write the model (default <run_dir>/sft)");
  auto* train = app.add_subcommand("train", "preference training on pairs JSONL (data.pairs_file)");
  add_common(train, o);
  train->add_option("--init", o.stage.init_model, "HF model directory to start from");
  train->add_option(
      "--out", o.stage.output_dir, "where to write the model (default <run_dir>/train)");
  train->add_option("--loss", o.loss, "spin | npo (sets train.loss)");
  train->add_option("--pairs", o.pairs, "pairs JSONL (sets data.pairs_file)");
  auto* eval = app.add_subcommand("eval", "held-out accuracy and verifier score of a model");
  add_common(eval, o);
  auto* eval_model =
      eval->add_option("--model", o.stage.init_model, "HF model directory to evaluate");
  auto* eval_compare = eval->add_option("--compare",
                                        o.stage.compare,
                                        "instead: two HF model directories A B; win/tie/loss of "
                                        "A's judged answers against B's on data.eval_file")
                           ->expected(2);
  eval_model->excludes(eval_compare);
  eval->callback([eval_model, eval_compare] {
    if (eval_model->count() == 0 && eval_compare->count() == 0) {
      throw CLI::RequiredError("--model or --compare");
    }
  });
  eval->add_option("--samples-out", o.stage.samples_out, "write generated answers as JSONL");
  eval->add_option("--choices",
                   o.stage.choices_file,
                   "instead: multiple-choice accuracy (acc, acc_norm) on a JSONL of "
                   "{question, choices, label|answer}");
  eval->add_option(
      "--choices-out", o.stage.choices_out, "per-question log-likelihoods and predictions (JSONL)");
  auto* generate = app.add_subcommand(
      "generate", "answers to a prompts JSONL, split across the ranks (sampling per [sample])");
  add_common(generate, o);
  generate->add_option(
      "--model", o.stage.init_model, "HF model directory (default model.init_from)");
  generate
      ->add_option("--prompts", o.prompts_file, "prompts JSONL ({\"id\",\"prompt\"[,\"answer\"]})")
      ->required();
  generate->add_option("--out", o.generate_out, "answers JSONL to write")->required();
  auto* demo = app.add_subcommand("demo-data", "write the demo world's train/eval JSONL");
  add_common(demo, o);
  demo->add_option("--out", o.demo_out, "directory (default: that of data.train_file)");

  auto* report = app.add_subcommand(
      "report", "print the self-play table of run directories side by side; redraw their plots");
  report->add_option("runs", o.report_runs, "run directories (<run.out_dir>/<run.name>)")
      ->required();
  report->add_option("--by-mode",
                     o.report_metrics,
                     "instead: mean ± std over the runs of each mode, per model, of these "
                     "comma-separated metrics (sampled_exact, greedy_exact, sampled_score, "
                     "generated_at_least_human)");

  CLI11_PARSE(app, argc, argv);
  if (*report) {
    // Reads files only: no config, no process group.
    try {
      for (const auto& dir : o.report_runs) {
        if (rank == 0 && o.report_metrics.empty()) {
          for (const auto& png : dnpo::selfplay::write_selfplay_plots(dir)) {
            dnpo::log::info("plot: {}", png);
          }
        }
      }
      if (rank == 0 && o.report_metrics.empty()) {
        std::cout << dnpo::selfplay::selfplay_table(o.report_runs);
      }
      std::vector<std::string> metrics;
      for (std::size_t at = 0; at < o.report_metrics.size();) {
        const auto comma = std::min(o.report_metrics.find(',', at), o.report_metrics.size());
        metrics.push_back(o.report_metrics.substr(at, comma - at));
        at = comma + 1;
      }
      for (const auto& metric : metrics) {
        if (rank == 0) {
          const bool of_answers = metric == "generated_at_least_human";
          std::cout << metric << " (mean ± std over seeds, (runs)); column model_k: "
                    << (of_answers ? "iteration k-1's answers, generated by model_k-1\n"
                                   : "the model after iteration k-1 (model_0 = SFT)\n")
                    << dnpo::selfplay::selfplay_mode_table(o.report_runs, metric) << "\n";
        }
      }
      return 0;
    } catch (const std::exception& e) {
      dnpo::log::error("fatal: {}", e.what());
      return 1;
    }
  }
  try {
    if (!o.loss.empty()) {
      o.overrides.push_back("train.loss=" + o.loss);
    }
    if (!o.pairs.empty()) {
      o.overrides.push_back("data.pairs_file=" + o.pairs);
    }
    if (!o.resume.empty()) {
      o.overrides.push_back("checkpoint.resume=\"" + o.resume + "\"");
    }
    const auto cfg = resolve(o, world);
    dnpo::log::init(rank, cfg.run.log_level);
    dnpo::log::info_rank0("{}", blas);
    dnpo::log::info_rank0("{}", heap);
    // One process on the CPU needs no process group; several share one (Gloo). On CUDA there is
    // always one (NCCL, one GPU per rank by local rank): one GPU runs the same streams and events
    // as many.
    std::unique_ptr<dnpo::dist::Comm> comm;
    if (world > 1 || cfg.run.device == "cuda") {
      comm = std::make_unique<dnpo::dist::Comm>(mpi, cfg.dist, cfg.run.device);
    }
    if (*sft) {
      dnpo::train::run_sft(cfg, o.stage, comm.get());
    } else if (*train) {
      dnpo::train::run_train(cfg, o.stage, comm.get());
    } else if (*generate) {
      dnpo::train::run_generate(cfg, o.stage, o.prompts_file, o.generate_out, comm.get());
    } else if (*eval) {
      dnpo::train::run_eval(cfg, o.stage, comm.get());
    } else if (*demo) {
      if (rank == 0 && !o.demo_out.empty()) {
        dnpo::data::write_demo_data(cfg.demo, o.demo_out);
      } else if (o.demo_out.empty()) {
        dnpo::train::ensure_demo_data(cfg, comm.get());
      }
    } else {
      dnpo::selfplay::run_job(cfg, comm.get());
    }
  } catch (const dnpo::train::Preempted& p) {
    // Every rank saved its part of the checkpoint and agreed to stop: a clean exit, so Slurm
    // (or the user's script) can requeue and resume.
    dnpo::log::info_rank0("stopped on signal {} after step {}; resume with --resume auto ({})",
                          p.signal_number,
                          p.step,
                          p.path);
    return 0;
  } catch (const std::exception& e) {
    if (world == 1) {
      dnpo::log::error("fatal: {}", e.what());
      return 1;
    }
    // The others may be blocked in a collective with this rank: end the whole job now.
    dnpo::log::error("fatal on rank {} of {}: {}", rank, world, e.what());
    dnpo::log::error("aborting all {} ranks", world);
    spdlog::default_logger()->flush();
    dnpo::dist::MpiEnv::abort(1);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // run_cli() reports errors through the logger; this catches what escapes it (an error while
  // setting up BLAS, the logger or the command line, or one thrown by the logger itself).
  return dnpo::guarded_main("dnpo_dist", argc, argv, run_cli);
}
