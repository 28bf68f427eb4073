// The self-improvement loop (docs/selfplay.md), distributed and resumable: model_0 (SFT, or an
// imported model), SPIN iteration 0, then iterations 1..T of
//   generate  prompts split across ranks by global index; every rank holds the whole policy while
//             it samples; each finished batch goes straight to the judge (asynchronous), so
//             judging overlaps generation;
//   label     SPIN or DSL (labeling.h), the same on every rank once the answers are all-gathered;
//   train     SPIN or NPO on this iteration's pairs, reference := the iteration's starting policy
//             (which labels and which objective: selfplay.mode's row of the table in modes.h);
//   eval      held-out accuracy and verifier score (rank 0).
// Every phase checkpoints (generation and judging per prompt, training per step), so a killed job
// resumes mid-iteration without regenerating or re-judging what a committed checkpoint holds.
#pragma once

#include "dnpo/config/config.h"
#include "dnpo/dist/comm.h"

namespace dnpo::selfplay {

/// The whole job. Writes into the run directory: selfplay.jsonl (one report per iteration, after
/// a first line for model_0), iter_<t>/samples.jsonl and iter_<t>/pairs.jsonl (every prompt's
/// answers, verdicts and label), metrics.jsonl, the SFT model (sft/) and the last one (final/).
/// Resumes from checkpoint.resume. collective.
void run_selfplay(const config::RunConfig& cfg, dist::Comm& comm);

/// The whole job (`dnpo_dist run`): demo data (when missing), then the self-play loop.
void run_job(const config::RunConfig& cfg, dist::Comm& comm);

}  // namespace dnpo::selfplay
