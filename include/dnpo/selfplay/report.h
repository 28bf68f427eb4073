// What a self-play run shows people: a table of its iterations (one run or several side by side)
// and its plots (CSV next to PNG drawn by gnuplot) under <run dir>/plots/:
//   iterations.csv, accuracy.png     held-out sampled and greedy exact accuracy per model
//   iterations.csv, win_tie_loss.png generated vs human answers by judge score (paper Fig. 1)
//   steps.csv, losses.png            model and noise loss of every training step (Fig. 9)
//   steps.csv, reward.png            reward accuracy, margin and mean noise scale s per step
//   logprobs_iter_<t>.csv/.png       log π(y|x) of positive, negative and generated answers under
//                                    the model iteration t trained (Fig. 2 and 10)
// Read from selfplay.jsonl and metrics.jsonl, so they can be redrawn after the run. Several runs
// compared (dnpo_dist report A B): one picture, a line per run or per mode.
#pragma once

#include <cstddef>
#include <map>
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

/// One line of a comparison: a run, or a mode's runs (seeds), with a metric per model.
struct Series {
  std::string name;                                     ///< the run's directory name, or the mode
  std::map<std::size_t, std::vector<double>> by_model;  ///< model index → one value per run
};
/// `metric` (as for selfplay_mode_table) of every model of the runs, one series per run, or per
/// self-play mode with by_mode. Throws DataError naming an unreadable run.
std::vector<Series> collect_series(const std::vector<std::string>& run_dirs,
                                   const std::string& metric,
                                   bool by_mode);

struct Spread {
  double mean = 0, sd = 0;  ///< sd: the sample standard deviation (0 for one value)
  std::size_t n = 0;
};
Spread spread_of(const std::vector<double>& values);

/// The runs compared in one picture: `metric` per model, a line per series (collect_series)
/// with the spread of its runs as error bars. Writes its data beside it (.csv, .gp, .log) and
/// returns `png`, or "" when gnuplot is missing or fails (warned).
std::string write_comparison_plot(const std::vector<std::string>& run_dirs,
                                  const std::string& metric,
                                  bool by_mode,
                                  const std::string& png);

/// Writes the CSVs and, when gnuplot is installed, the PNGs; returns the PNG paths drawn.
std::vector<std::string> write_selfplay_plots(const std::string& run_dir);

}  // namespace dnpo::selfplay
