// What a self-play run shows people: a table of its iterations (one run or several side by side)
// and its plots (CSV next to PNG drawn by gnuplot) under <run dir>/plots/:
//   iterations.csv, accuracy.png     held-out sampled and greedy exact accuracy per model
//   iterations.csv, win_tie_loss.png generated vs human answers by judge score (paper Fig. 1)
//   steps.csv, losses.png            model and noise loss of every training step (Fig. 9)
//   steps.csv, reward.png            reward accuracy, margin and mean noise scale s per step
//   logprobs_iter_<t>.csv/.png       log π(y|x) of positive, negative and generated answers under
//                                    the model iteration t trained (Fig. 2 and 10)
// Read from selfplay.jsonl and metrics.jsonl, so they can be redrawn after the run.
#pragma once

#include <string>
#include <vector>

namespace dnpo::selfplay {

/// One row per model of each run (model_0, then after each iteration): labels and loss, pairs,
/// flips, generated ≥ human, held-out sampled / greedy exact accuracy and verifier score.
/// Throws DataError naming a run directory without a readable selfplay.jsonl.
std::string selfplay_table(const std::vector<std::string>& run_dirs);

/// Runs grouped by their self-play mode (several seeds of each), one row per mode and one column
/// per model: mean ± sample standard deviation over the runs of `metric`, a key of the reports'
/// "eval" ("sampled_exact", "greedy_exact", "sampled_score") or of the report itself
/// ("generated_at_least_human"). Throws DataError naming an unreadable run.
std::string selfplay_mode_table(const std::vector<std::string>& run_dirs,
                                const std::string& metric);

/// Writes the CSVs and, when gnuplot is installed, the PNGs; returns the PNG paths drawn.
std::vector<std::string> write_selfplay_plots(const std::string& run_dir);

}  // namespace dnpo::selfplay
