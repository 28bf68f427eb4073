// The stages a user runs (dnpo_dist subcommands): sft, train, generate, eval; `run`, the whole
// job, is the self-play loop's (dnpo/selfplay/selfplay.h).
// Each stage reads a resolved RunConfig, writes into the run directory <run.out_dir>/<run.name>:
// resolved_config.toml, metrics.jsonl, and an HF model directory per training stage. Every rank
// calls the stage (one process passes Comm::one_process()); training is sharded over the ranks,
// rank 0 writes the files, and eval runs on rank 0.
#pragma once

#include <string>
#include <vector>

#include "dnpo/config/config.h"
#include "dnpo/dist/comm.h"

namespace dnpo::train {

struct StageOptions {
  std::string init_model;    ///< HF directory to start from (overrides model.init_from)
  std::string samples_out;   ///< eval: JSONL of generated answers
  std::string output_dir;    ///< where the trained model goes; "" = <run_dir>/<stage>
  std::string choices_file;  ///< eval: multiple-choice JSONL scored by log-likelihood instead
  std::string choices_out;   ///< eval: per-question log-likelihoods and predictions (JSONL)
  std::vector<std::string> compare;  ///< eval: two HF directories, A and B, judged side by side
};

/// The run directory, created with resolved_config.toml written into it (by rank 0).
std::string prepare_run_dir(const config::RunConfig& cfg, dist::Comm& comm);

/// Writes the demo world's train/eval JSONL when both data files are missing and named
/// <dir>/train.jsonl and <dir>/eval.jsonl; otherwise a missing one is a DataError naming it (a
/// user's file is never written over). Rank 0 writes, the others wait for it.
void ensure_demo_data(const config::RunConfig& cfg, dist::Comm& comm);

void run_sft(const config::RunConfig& cfg, const StageOptions& options, dist::Comm& comm);
void run_train(const config::RunConfig& cfg, const StageOptions& options, dist::Comm& comm);
/// Returns the sampled exact accuracy (for scripts; 0 on ranks other than 0); logs the report.
double run_eval(const config::RunConfig& cfg, const StageOptions& options, dist::Comm& comm);
/// Distributed generation: every rank loads the model (options.init_model, or model.init_from)
/// and answers its share of the prompts of `prompts_file` (prompt i on rank i mod N, sampling
/// draws keyed on (seed, train.iteration, i), so the output does not depend on N beyond float
/// rounding); rank 0 writes {"id","prompt","answer","generated","finished"} lines to `out`, in
/// prompt order. collective.
void run_generate(const config::RunConfig& cfg,
                  const StageOptions& options,
                  const std::string& prompts_file,
                  const std::string& out,
                  dist::Comm& comm);

}  // namespace dnpo::train
