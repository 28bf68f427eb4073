// Pieces the stage drivers share (driver.cpp defines them) with the self-play loop
// (src/selfplay/), which builds, trains and saves the policy the same way.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "dnpo/config/config.h"
#include "dnpo/dist/comm.h"
#include "dnpo/model/llama.h"
#include "dnpo/train/driver.h"
#include "dnpo/train/sharded_llama.h"
#include "dnpo/train/trainer.h"

namespace dnpo::train::detail {

/// <run.out_dir>/<run.name>
std::string run_dir(const config::RunConfig& cfg);
/// checkpoint.dir, or <run dir>/checkpoints
std::string checkpoint_dir(const config::RunConfig& cfg);
/// `init` (or model.init_from) as a whole model on this process, or the random init.
model::LlamaModel load_or_init_model(const config::RunConfig& cfg, const std::string& init);
/// The policy as FSDP units, built a unit at a time (no rank holds the whole model).
std::unique_ptr<ShardedLlama> make_policy(const config::RunConfig& cfg,
                                          const std::string& init,
                                          dist::Comm& comm);
/// Writes an HF model directory (and the SentencePiece model next to it).
void save_model(const config::RunConfig& cfg,
                const config::ModelConfig& model_cfg,
                const model::NamedTensors& tensors,
                const std::string& dir);
/// collective: the policy gathered onto rank 0 and written there as an HF directory `dir` (with
/// summary.json when `summary` is given); every rank returns once it is on disk.
void save_trained_model(const config::RunConfig& cfg,
                        ShardedLlama& policy,
                        const TrainSummary* summary,
                        const std::string& dir,
                        dist::Comm& comm);
void write_summary(const std::string& path, const nlohmann::json& j);
nlohmann::json summary_json(const TrainSummary& s);
std::string output_dir(const config::RunConfig& cfg,
                       const StageOptions& options,
                       const std::string& stage);

}  // namespace dnpo::train::detail
