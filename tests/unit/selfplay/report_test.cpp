// The self-play report from a run directory's files: the plots' CSVs and the tables.
#include "dnpo/selfplay/report.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dnpo/common/error.h"

namespace dnpo::selfplay {
namespace {

using ::testing::HasSubstr;

std::string read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// model_0, a SPIN iteration and a DNPO one; metrics of an SFT step (left out of the plots), a
// SPIN and an NPO step.
std::string make_run(const std::string& name) {
  const auto dir = ::testing::TempDir() + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/selfplay.jsonl")
      << R"({"stage":"model_0","iteration":null,"eval":{"sampled_exact":0.25,"sampled_score":61.5}})"
      << "\n"
      << R"({"stage":"iteration","iteration":0,"mode":"dnpo","labels":"spin","loss":"spin",)"
      << R"("pairs":12,"generated_positive":0,"win":3,"tie":2,"loss_count":7,)"
      << R"("generated_at_least_human":0.41,"mean_score_generated":55.2,"mean_score_human":70.1,)"
      << R"("eval":{"sampled_exact":0.3,"greedy_exact":0.35,"sampled_score":64.0}})"
      << "\n"
      << R"({"stage":"iteration","iteration":1,"mode":"dnpo","labels":"dsl","loss":"npo",)"
      << R"("pairs":11,"generated_positive":4,"win":5,"tie":2,"loss_count":5,)"
      << R"("mean_score_generated":60.2,"mean_score_human":70.1,)"
      << R"("eval":{"sampled_exact":0.4,"sampled_score":66.0}})"
      << "\n";
  std::ofstream(dir + "/metrics.jsonl")
      << R"({"kind":"sft","step":1,"loss":2.5})"
      << "\n"
      << R"({"kind":"spin","iteration":0,"step":1,"loss":0.69,"model_loss":0.69,)"
      << R"("reward_accuracy":0.5,"margin":0.01})"
      << "\n"
      << R"({"kind":"npo","iteration":1,"step":1,"loss":0.9,"model_loss":0.68,"minus_noise_loss":-0.22,)"
      << R"("reward_accuracy":0.6,"margin":0.1,"mean_s":0.5})"
      << "\n";
  return dir;
}

TEST(Report, PlotsDataHoldEveryModelAndEveryIterationStep) {
  const auto dir = make_run("report_plots");
  write_selfplay_plots(dir);  // PNGs too where gnuplot is installed; the CSVs always
  EXPECT_EQ(read(dir + "/plots/iterations.csv"),
            "model,sampled_exact,greedy_exact,sampled_score,win,tie,loss,mean_score_generated,"
            "mean_score_human\n"
            "0,0.25,,61.5,,,,,\n"
            "1,0.3,0.35,64,0.25,0.16666666666666666,0.5833333333333334,55.2,70.1\n"
            "2,0.4,,66,0.4166666666666667,0.16666666666666666,0.4166666666666667,60.2,70.1\n");
  EXPECT_EQ(read(dir + "/plots/steps.csv"),
            "step,iteration,kind,loss,model_loss,minus_noise_loss,reward_accuracy,margin,mean_s\n"
            "1,0,spin,0.69,0.69,,0.5,0.01,\n"
            "2,1,npo,0.9,0.68,-0.22,0.6,0.1,0.5\n");
}

// Before iteration 0 has judged or trained anything only the accuracy chart has points: the
// others are left out rather than failing gnuplot (which would warn in every default run).
TEST(Report, PlotsBeforeTheFirstIterationDrawOnlyWhatHasData) {
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "gnuplot is not installed (launch/install-deps installs gnuplot-nox)";
  }
  const auto dir = ::testing::TempDir() + "report_model_0";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/selfplay.jsonl")
      << R"({"stage":"model_0","iteration":null,"eval":{"sampled_exact":0.25,"sampled_score":61.5}})"
      << "\n";
  std::ofstream(dir + "/metrics.jsonl") << R"({"kind":"sft","step":1,"loss":2.5})"
                                        << "\n";
  const auto drawn = write_selfplay_plots(dir);
  EXPECT_EQ(drawn, std::vector<std::string>{dir + "/plots/accuracy.png"});
  EXPECT_TRUE(std::filesystem::exists(dir + "/plots/accuracy.png"));
  EXPECT_EQ(read(dir + "/plots/gnuplot.log").find("invalid"), std::string::npos)
      << read(dir + "/plots/gnuplot.log");
  const auto all = write_selfplay_plots(make_run("report_all_plots"));
  EXPECT_EQ(all.size(), 4U);  // accuracy, win/tie/loss, losses, reward
}

TEST(Report, TablesNameEachModelsTrainingAndScores) {
  const auto dir = make_run("report_tables");
  const auto table = selfplay_table({dir});
  EXPECT_THAT(table, HasSubstr("model_0  sft             -      -         -    0.250        -"));
  EXPECT_THAT(table, HasSubstr("model_1  spin+spin      12      0     0.410    0.300    0.350"));
  EXPECT_THAT(table, HasSubstr("model_2  dsl+npo        11      4         -    0.400        -"));
  EXPECT_THAT(selfplay_mode_table({dir}, "sampled_exact"),
              HasSubstr("dnpo         0.250 ± 0.000 (1) 0.300 ± 0.000 (1) 0.400 ± 0.000 (1)"));
  EXPECT_THROW(selfplay_table({dir + "/missing"}), DataError);
}

// Runs side by side in one picture: a line per run, or per mode with the runs' spread.
TEST(Report, ComparisonHoldsEveryRunOrEveryModesSpread) {
  const auto a = make_run("report_compare_a's");  // a quote in a title
  const auto b = make_run("report_compare_b");
  {
    // b's first iteration scored otherwise: 0.3 in a, 0.5 in b
    const auto text = read(b + "/selfplay.jsonl");
    const auto at = text.find(R"("sampled_exact":0.3)");
    ASSERT_NE(at, std::string::npos);
    std::ofstream(b + "/selfplay.jsonl")
        << text.substr(0, at) << R"("sampled_exact":0.5)" << text.substr(at + 19);
  }
  const auto per_run = collect_series({a, b}, "sampled_exact", false);
  ASSERT_EQ(per_run.size(), 2U);
  EXPECT_EQ(per_run[0].name, "report_compare_a's");
  EXPECT_EQ(per_run[1].by_model.at(1), (std::vector<double>{0.5}));
  const auto per_mode = collect_series({a, b}, "sampled_exact", true);
  ASSERT_EQ(per_mode.size(), 1U);  // both runs are mode dnpo
  EXPECT_EQ(per_mode[0].name, "dnpo");
  const auto spread = spread_of(per_mode[0].by_model.at(1));
  EXPECT_DOUBLE_EQ(spread.mean, 0.4);
  EXPECT_NEAR(spread.sd, std::sqrt(0.02), 1e-12);
  EXPECT_EQ(spread.n, 2U);

  const auto png = ::testing::TempDir() + "report_compare/comparison.png";
  std::filesystem::remove_all(::testing::TempDir() + "report_compare");
  const auto drawn = write_comparison_plot({a, b}, "sampled_exact", true, png);
  EXPECT_THAT(read(::testing::TempDir() + "report_compare/comparison.csv"),
              HasSubstr("# dnpo\n0,0.25,0,2\n1,0.4,"));
  if (std::system("command -v gnuplot > /dev/null 2>&1") == 0) {
    EXPECT_EQ(drawn, png);
    EXPECT_GT(std::filesystem::file_size(png), 1000U);
  }
}

}  // namespace
}  // namespace dnpo::selfplay
