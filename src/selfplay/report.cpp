// The self-play table and plots; see report.h.
#include "dnpo/selfplay/report.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "dnpo/data/jsonl_reader.h"

namespace dnpo::selfplay {
namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

std::vector<Json> read_lines(const std::string& path) {
  std::vector<Json> rows;
  data::for_each_jsonl_file(
      path, [&rows](const Json& row, const data::JsonlLine&) { rows.push_back(row); });
  return rows;
}

double number_or(const Json& j, const char* key, double fallback) {
  const auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : fallback;
}

std::string cell(const Json& j, const char* key, const char* format) {
  const auto it = j.find(key);
  if (it == j.end() || !it->is_number()) {
    return "-";
  }
  return fmt::format(fmt::runtime(format), it->get<double>());
}

// Text inside a gnuplot single-quoted string, where a quote is written twice.
std::string gnuplot_quoted(const std::string& text) {
  std::string out;
  for (const char c : text) {
    out += c;
    if (c == '\'') {
      out += c;
    }
  }
  return out;
}

bool have_gnuplot() {
  return std::system("command -v gnuplot > /dev/null 2>&1") == 0;
}

// One row per model: held-out accuracy, and generated vs human answers by judge score as shares
// of the prompts both were scored on. Returns how many rows have judged answers.
int write_iterations_csv(const std::string& reports, const std::string& path) {
  std::ofstream csv(path);
  csv << "model,sampled_exact,greedy_exact,sampled_score,win,tie,loss,mean_score_generated,"
         "mean_score_human\n";
  std::int64_t model = 0;
  int judged_rows = 0;
  for (const auto& r : read_lines(reports)) {
    const auto eval = r.value("eval", Json::object());
    const double judged =
        number_or(r, "win", 0) + number_or(r, "tie", 0) + number_or(r, "loss_count", 0);
    const auto share = [&](const char* key) {
      return judged > 0 ? fmt::format("{}", number_or(r, key, 0) / judged) : std::string();
    };
    const auto value = [](const Json& j, const char* key) {
      return j.contains(key) ? fmt::format("{}", j.at(key).get<double>()) : std::string();
    };
    csv << model++ << "," << value(eval, "sampled_exact") << "," << value(eval, "greedy_exact")
        << "," << value(eval, "sampled_score") << "," << share("win") << "," << share("tie") << ","
        << share("loss_count") << "," << value(r, "mean_score_generated") << ","
        << value(r, "mean_score_human") << "\n";
    judged_rows += judged > 0 ? 1 : 0;
  }
  return judged_rows;
}

// One row per training step of the self-play iterations, numbered across them (SFT's steps left
// out: they are another loss). Returns how many rows it wrote.
std::int64_t write_steps_csv(const std::string& metrics, const std::string& path) {
  std::ofstream csv(path);
  csv << "step,iteration,kind,loss,model_loss,minus_noise_loss,reward_accuracy,margin,mean_s\n";
  std::int64_t step = 0;
  for (const auto& m : read_lines(metrics)) {
    const auto kind = m.value("kind", "");
    if (kind != "spin" && kind != "npo") {
      continue;
    }
    const auto value = [&](const char* key) {
      return m.contains(key) && m.at(key).is_number() ? fmt::format("{}", m.at(key).get<double>())
                                                      : std::string();
    };
    csv << ++step << "," << m.value("iteration", std::uint64_t{0}) << "," << kind << ","
        << value("loss") << "," << value("model_loss") << "," << value("minus_noise_loss") << ","
        << value("reward_accuracy") << "," << value("margin") << "," << value("mean_s") << "\n";
  }
  return step;
}

// The log-prob histograms the loop wrote, one per iteration from 0 (logprobs_iter_<t>).
std::vector<std::string> logprob_histograms(const std::string& plots) {
  std::vector<std::string> names;
  for (std::uint64_t t = 0; fs::exists(fmt::format("{}/logprobs_iter_{}.csv", plots, t)); ++t) {
    names.push_back(fmt::format("logprobs_iter_{}", t));
  }
  return names;
}

// The charts there is data for: gnuplot fails on a plot without points (before iteration 0 has
// judged answers or trained a step). Returns the file names of the pictures the script draws.
std::vector<std::string> write_gnuplot_script(const std::string& script,
                                              const std::string& plots,
                                              bool judged,
                                              bool stepped,
                                              const std::vector<std::string>& histograms) {
  std::vector<std::string> drawn{"accuracy.png"};
  std::ofstream gp(script);
  gp << "set terminal pngcairo size 900,540 noenhanced\n"
        "set datafile separator ','\n"
        "set key autotitle columnhead outside bottom center horizontal\n"
        "set grid\n"
        "cd '"
     << plots
     << "'\n"
        "set output 'accuracy.png'\n"
        "set title 'held-out exact accuracy per model (model_0 = SFT)'\n"
        "set xlabel 'model'; set ylabel 'exact'; set xtics 1\n"
        "plot 'iterations.csv' using 1:2 with linespoints lw 2, '' using 1:3 with linespoints "
        "lw 2\n";
  if (judged) {
    drawn.emplace_back("win_tie_loss.png");
    gp << "set output 'win_tie_loss.png'\n"
          "set title 'generated vs human answers by judge score (iteration = model - 1)'\n"
          "set ylabel 'share of prompts'; set yrange [0:1]\n"
          "plot 'iterations.csv' using ($1-1):5 with linespoints lw 2 title 'win', "
          "'' using ($1-1):6 with linespoints lw 2 title 'tie', "
          "'' using ($1-1):7 with linespoints lw 2 title 'loss'\n";
  }
  gp << "set autoscale y; set xtics autofreq\n";
  if (stepped) {
    drawn.emplace_back("losses.png");
    drawn.emplace_back("reward.png");
    gp << "set output 'losses.png'\n"
          "set title 'training losses, all iterations in order'\n"
          "set xlabel 'optimizer step'; set ylabel 'loss'\n"
          "plot 'steps.csv' using 1:5 with lines lw 2 title 'model loss', "
          "'' using 1:6 with lines lw 2 title '-noise loss (as in the objective)'\n"
          "set output 'reward.png'\n"
          "set title 'reward accuracy, margin and mean noise scale s'\n"
          "set ylabel 'value'\n"
          "plot 'steps.csv' using 1:7 with lines lw 2 title 'reward accuracy', "
          "'' using 1:8 with lines lw 2 title 'margin', "
          "'' using 1:9 with lines lw 2 title 'mean s'\n";
  }
  for (const auto& name : histograms) {
    drawn.push_back(name + ".png");
    gp << "set output '" << name << ".png'\n"
       << "set title 'log p(y|x) of the answers of iteration " << name.substr(14)
       << " under the model it trained (first 1000 prompts)"
       << "'\n"
          "set xlabel 'log p(y|x)'; set ylabel 'answers'; set autoscale\n"
          "plot '"
       << name << ".csv' using 1:2 with steps lw 2 title 'positive', '' using 1:3 with steps lw 2 "
       << "title 'negative', '' using 1:4 with steps lw 2 title 'generated'";
    gp << "\n";
  }
  return drawn;
}

}  // namespace

std::string selfplay_table(const std::vector<std::string>& run_dirs) {
  std::string out = fmt::format("{:<14} {:<8} {:<10} {:>6} {:>6} {:>9} {:>8} {:>8} {:>6}\n",
                                "run",
                                "model",
                                "trained",
                                "pairs",
                                "flips",
                                "gen>=hum",
                                "sampled",
                                "greedy",
                                "score");
  for (const auto& dir : run_dirs) {
    const auto name = fs::path(dir).filename().string();
    for (const auto& r : read_lines(dir + "/selfplay.jsonl")) {
      const bool model_0 = r.value("stage", "") == "model_0";
      const auto eval = r.value("eval", Json::object());
      const auto model = model_0
                             ? std::string("model_0")
                             : fmt::format("model_{}", r.value("iteration", std::uint64_t{0}) + 1);
      const auto trained = model_0
                               ? std::string("sft")
                               : fmt::format("{}+{}", r.value("labels", "?"), r.value("loss", "?"));
      out += fmt::format("{:<14} {:<8} {:<10} {:>6} {:>6} {:>9} {:>8} {:>8} {:>6}\n",
                         name,
                         model,
                         trained,
                         cell(r, "pairs", "{:.0f}"),
                         cell(r, "generated_positive", "{:.0f}"),
                         cell(r, "generated_at_least_human", "{:.3f}"),
                         cell(eval, "sampled_exact", "{:.3f}"),
                         cell(eval, "greedy_exact", "{:.3f}"),
                         cell(eval, "sampled_score", "{:.1f}"));
    }
  }
  return out;
}

std::vector<Series> collect_series(const std::vector<std::string>& run_dirs,
                                   const std::string& metric,
                                   bool by_mode) {
  std::vector<Series> out;
  for (const auto& dir : run_dirs) {
    const auto rows = read_lines(dir + "/selfplay.jsonl");
    std::string name = "?";
    if (by_mode) {
      for (const auto& r : rows) {
        name = r.value("mode", name);
      }
    } else {
      name = fs::path(dir).filename().string();
    }
    auto it =
        std::find_if(out.begin(), out.end(), [&name](const Series& s) { return s.name == name; });
    if (it == out.end()) {
      out.push_back({name, {}});
      it = out.end() - 1;
    }
    for (std::size_t m = 0; m < rows.size(); ++m) {
      const auto eval = rows[m].value("eval", Json::object());
      const auto& source = eval.contains(metric) ? eval : rows[m];
      if (source.contains(metric) && source.at(metric).is_number()) {
        it->by_model[m].push_back(source.at(metric).get<double>());
      }
    }
  }
  return out;
}

Spread spread_of(const std::vector<double>& v) {
  const double n = static_cast<double>(v.size());
  double mean = 0;
  for (const double x : v) {
    mean += x / n;
  }
  double var = 0;
  for (const double x : v) {
    var += (x - mean) * (x - mean);
  }
  return {mean, v.size() > 1 ? std::sqrt(var / (n - 1)) : 0.0, v.size()};
}

std::string selfplay_mode_table(const std::vector<std::string>& run_dirs,
                                const std::string& metric) {
  const auto series = collect_series(run_dirs, metric, true);
  std::size_t models = 0;
  for (const auto& s : series) {
    if (!s.by_model.empty()) {
      models = std::max(models, s.by_model.rbegin()->first + 1);
    }
  }
  std::string out = fmt::format("{:<12}", "mode");
  for (std::size_t m = 0; m < models; ++m) {
    out += fmt::format(" {:>17}", fmt::format("model_{}", m));
  }
  out += "\n";
  const bool percent_scale = metric != "sampled_score";
  for (const auto& s : series) {
    out += fmt::format("{:<12}", s.name);
    for (std::size_t m = 0; m < models; ++m) {
      const auto it = s.by_model.find(m);
      if (it == s.by_model.end() || it->second.empty()) {
        out += fmt::format(" {:>17}", "-");
        continue;
      }
      const auto v = spread_of(it->second);
      out += fmt::format(" {:>17}",
                         percent_scale ? fmt::format("{:.3f} ± {:.3f} ({})", v.mean, v.sd, v.n)
                                       : fmt::format("{:.2f} ± {:.2f} ({})", v.mean, v.sd, v.n));
    }
    out += "\n";
  }
  return out;
}

std::string write_comparison_plot(const std::vector<std::string>& run_dirs,
                                  const std::string& metric,
                                  bool by_mode,
                                  const std::string& png) {
  const auto series = collect_series(run_dirs, metric, by_mode);
  const auto base = fs::path(png).replace_extension().string();
  if (const auto parent = fs::path(png).parent_path(); !parent.empty()) {
    fs::create_directories(parent);
  }
  // one gnuplot data block per series: model, mean, sd, runs
  std::ofstream csv(base + ".csv");
  for (const auto& s : series) {
    csv << "# " << s.name << "\n";
    for (const auto& [model, values] : s.by_model) {
      const auto v = spread_of(values);
      csv << model << "," << v.mean << "," << v.sd << "," << v.n << "\n";
    }
    csv << "\n\n";
  }
  csv.close();
  if (!have_gnuplot()) {
    log::warn("plots: gnuplot not found; wrote {}.csv only", base);
    return "";
  }
  std::ofstream gp(base + ".gp");
  gp << "set terminal pngcairo size 900,540 noenhanced\n"
        "set datafile separator ','\n"
        "set key outside bottom center horizontal\n"
        "set grid\n"
        "set output '"
     << png << "'\n"
     << "set title 'held-out " << metric << " per model (model_0 = SFT"
     << (by_mode ? "; mean and sample sd over the runs of each mode" : "") << ")'\n"
     << "set xlabel 'model'; set ylabel '" << metric << "'; set xtics 1\n"
     << "plot";
  for (std::size_t i = 0; i < series.size(); ++i) {
    gp << (i > 0 ? "," : "") << " '" << base << ".csv' index " << i
       << " using 1:2:3 with yerrorlines lw 2 title '" << gnuplot_quoted(series[i].name) << "'";
  }
  gp << "\n";
  gp.close();
  const auto command = fmt::format("gnuplot '{}.gp' 2> '{}.log'", base, base);
  if (std::system(command.c_str()) != 0) {
    log::warn("plots: gnuplot failed (see {}.log); the data is in {}.csv", base, base);
    return "";
  }
  return png;
}

std::vector<std::string> write_selfplay_plots(const std::string& run_dir) {
  const auto plots = run_dir + "/plots";
  fs::create_directories(plots);
  const bool judged =
      write_iterations_csv(run_dir + "/selfplay.jsonl", plots + "/iterations.csv") > 0;
  const bool stepped = write_steps_csv(run_dir + "/metrics.jsonl", plots + "/steps.csv") > 0;
  if (!have_gnuplot()) {
    log::warn("plots: gnuplot not found; wrote the CSVs to {} only", plots);
    return {};
  }
  const auto histograms = logprob_histograms(plots);
  const auto script = plots + "/plots.gp";
  const auto pictures = write_gnuplot_script(script, plots, judged, stepped, histograms);
  const auto command = fmt::format("gnuplot '{}' 2> '{}/gnuplot.log'", script, plots);
  if (std::system(command.c_str()) != 0) {
    log::warn("plots: gnuplot failed (see {}/gnuplot.log); the CSVs are in {}", plots, plots);
    return {};
  }
  std::vector<std::string> drawn;
  for (const auto& png : pictures) {
    drawn.push_back(plots + "/" + png);
  }
  return drawn;
}

}  // namespace dnpo::selfplay
