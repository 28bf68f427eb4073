// Demo world: determinism, disjoint splits, label noise, and the verifier on every task.
#include "dnpo/data/demo_world.h"

#include <filesystem>
#include <set>
#include <string>

#include <gtest/gtest.h>
#include <unistd.h>

#include "dnpo/common/error.h"
#include "expect_error.h"

namespace dnpo::data {
namespace {

namespace fs = std::filesystem;

TEST(DemoWorld, PromptFormats) {
  EXPECT_EQ(solve_prompt("123+456="), "579");
  EXPECT_EQ(solve_prompt("999+1="), "1000");
  EXPECT_EQ(solve_prompt("0+0="), "0");
  EXPECT_EQ(solve_prompt("rev abcdef"), "fedcba");
  EXPECT_EQ(solve_prompt("sort 52813"), "12358");
  EXPECT_EQ(solve_prompt("  sort 90\n"), "09");
  EXPECT_EQ(solve_prompt("99999999999999999999+1="), "100000000000000000000");
  EXPECT_EQ(prompt_task("12+3="), "add");
  EXPECT_EQ(prompt_task("rev xy"), "reverse");
  EXPECT_EQ(prompt_task("sort 1"), "sort");
  for (const std::string bad : {"", "hello", "1+2", "+3=", "rev ", "rev ABC", "sort 12a", "1-2="}) {
    EXPECT_FALSE(solve_prompt(bad).has_value()) << bad;
  }
}

TEST(DemoWorld, DeterministicAndPrefixStable) {
  const config::DemoConfig cfg;
  const DemoWorld world(cfg);
  const auto a = world.make_split("train", 300);
  const auto b = DemoWorld(cfg).make_split("train", 300);
  const auto prefix = world.make_split("train", 100);
  ASSERT_EQ(a.size(), 300U);
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].prompt, b[i].prompt);
    EXPECT_EQ(a[i].answer, b[i].answer);
    if (i < prefix.size()) {
      EXPECT_EQ(a[i].prompt, prefix[i].prompt);
      EXPECT_EQ(a[i].answer, prefix[i].answer);
    }
  }
  EXPECT_EQ(a[123].id, "train-000123");
  EXPECT_EQ(a[0].task, "add");
  EXPECT_EQ(a[1].task, "reverse");
  EXPECT_EQ(a[2].task, "sort");

  config::DemoConfig other = cfg;
  other.seed = cfg.seed + 1;
  const auto c = DemoWorld(other).make_split("train", 300);
  int same = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    same += a[i].prompt == c[i].prompt ? 1 : 0;
  }
  EXPECT_LT(same, 10) << "another seed should give other prompts";
}

TEST(DemoWorld, PinnedRecords) {
  // Golden values: the data must be the same on every platform and must not change unnoticed
  // (mt19937_64 is fully specified; the uniform draws are our own).
  const auto records = DemoWorld(config::DemoConfig{}).make_split("train", 9);
  EXPECT_EQ(records[0].prompt, "950+655=");
  EXPECT_EQ(records[0].truth, "1605");
  EXPECT_EQ(records[1].prompt, "rev hcsnig");
  EXPECT_EQ(records[2].prompt, "sort 53");
  EXPECT_EQ(records[5].prompt, "sort 396");
  EXPECT_EQ(records[8].prompt, "sort 57");
  EXPECT_EQ(records[8].answer, "75") << "a noisy human answer (adjacent swap)";
  const auto eval = DemoWorld(config::DemoConfig{}).make_split("eval", 1);
  EXPECT_EQ(eval[0].prompt, "734+27=");
}

TEST(DemoWorld, TrainAndEvalAreDisjoint) {
  config::DemoConfig cfg;
  cfg.add_digits = 1;  // only 100 add prompts: forces the exclusion to work
  cfg.string_length = 3;
  cfg.eval_size = 60;
  const DemoWorld world(cfg);
  const auto eval = world.make_split("eval", cfg.eval_size);
  std::set<std::string> eval_prompts;
  for (const auto& r : eval) {
    EXPECT_TRUE(eval_prompts.insert(r.prompt).second) << "eval prompts repeat: " << r.prompt;
  }
  for (const auto& r : world.make_split("train", 3000)) {
    EXPECT_EQ(eval_prompts.count(r.prompt), 0U) << r.prompt;
  }
}

TEST(DemoWorld, TooSmallPromptSpaceIsConfigError) {
  config::DemoConfig cfg;
  cfg.tasks = {"add"};
  cfg.add_digits = 1;
  cfg.eval_size = 101;  // only 100 distinct "a+b=" prompts exist
  EXPECT_THROW(DemoWorld(cfg).make_split("eval", cfg.eval_size), ConfigError);
  cfg.tasks = {"mul"};
  EXPECT_THROW(DemoWorld{cfg}, ConfigError);
  cfg.tasks = {"add"};
  cfg.noise_rate = 1.5;
  EXPECT_THROW(DemoWorld{cfg}, ConfigError);
}

TEST(DemoWorld, NoiseRateAndNoisyAnswersNeverCorrect) {
  const config::DemoConfig cfg;  // noise_rate 0.3
  const auto records = DemoWorld(cfg).make_split("train", 5000);
  int noisy = 0;
  std::set<std::string> tasks;
  for (const auto& r : records) {
    tasks.insert(r.task);
    ASSERT_EQ(solve_prompt(r.prompt), r.truth) << r.prompt;
    EXPECT_EQ(prompt_task(r.prompt), r.task) << r.prompt;
    EXPECT_EQ(verify_answer(r.prompt, r.truth), 100) << r.prompt;
    if (r.answer != r.truth) {
      ++noisy;
      EXPECT_EQ(r.answer.size(), r.truth.size()) << r.prompt << " " << r.answer;
      EXPECT_LT(verify_answer(r.prompt, r.answer), 100) << r.prompt << " " << r.answer;
      if (r.task == "add" && r.answer.size() > 1) {
        EXPECT_NE(r.answer[0], '0') << "leading zero: " << r.answer;
      }
    }
  }
  EXPECT_EQ(tasks, (std::set<std::string>{"add", "reverse", "sort"}));
  EXPECT_NEAR(noisy / 5000.0, cfg.noise_rate, 0.03);

  config::DemoConfig clean = cfg;
  clean.noise_rate = 0.0;
  for (const auto& r : DemoWorld(clean).make_split("train", 500)) {
    EXPECT_EQ(r.answer, r.truth);
  }
  config::DemoConfig all = cfg;
  all.noise_rate = 1.0;
  all.string_length = 1;  // single characters: only the off-by-one mistake is possible
  all.eval_size = 5;      // "sort" has only 10 one-digit prompts
  for (const auto& r : DemoWorld(all).make_split("train", 500)) {
    EXPECT_NE(r.answer, r.truth) << r.prompt;
  }
}

TEST(Verifier, PartialCredit) {
  EXPECT_EQ(verify_answer("123+456=", "579"), 100);
  EXPECT_EQ(verify_answer("123+456=", "  579\n"), 100);
  EXPECT_EQ(verify_answer("123+456=", ""), 0);
  EXPECT_EQ(verify_answer("123+456=", "   "), 0);
  EXPECT_EQ(verify_answer("123+456=", "589"), 60);        // floor(90 * 2 / 3)
  EXPECT_EQ(verify_answer("999+1=", "000"), 67);          // right-aligned: 3 of 4 digits
  EXPECT_EQ(verify_answer("rev abcdef", "fedcab"), 60);   // 4 of 6
  EXPECT_EQ(verify_answer("rev abcdef", "fedcbaa"), 77);  // 6 of 7
  EXPECT_EQ(verify_answer("sort 52813", "12385"), 54);    // 3 of 5
  EXPECT_EQ(verify_answer("sort 52813", "xyz"), 0);
  EXPECT_ERROR(
      DataError, [] { verify_answer("what is 2 times 3?", "6"); }, "what is 2 times 3?");
}

TEST(DemoWorld, WriteDemoData) {
  config::DemoConfig cfg;
  cfg.train_size = 50;
  cfg.eval_size = 20;
  const fs::path dir =
      fs::path(::testing::TempDir()) / ("dnpo_demo_" + std::to_string(getpid())) / "data";
  write_demo_data(cfg, dir.string());
  const auto train = read_prompts_jsonl((dir / "train.jsonl").string());
  const auto eval = read_prompts_jsonl((dir / "eval.jsonl").string());
  ASSERT_EQ(train.size(), 50U);
  ASSERT_EQ(eval.size(), 20U);
  const auto expected = DemoWorld(cfg).make_split("train", 50);
  for (std::size_t i = 0; i < train.size(); ++i) {
    EXPECT_EQ(train[i].id, expected[i].id);
    EXPECT_EQ(train[i].prompt, expected[i].prompt);
    EXPECT_EQ(train[i].answer, expected[i].answer);
    EXPECT_EQ(train[i].truth, expected[i].truth);
    EXPECT_EQ(train[i].task, expected[i].task);
  }
  for (const auto& r : eval) {
    EXPECT_EQ(r.answer, r.truth);
    EXPECT_EQ(r.id.rfind("eval-", 0), 0U);
  }
  fs::remove_all(dir.parent_path());
}

}  // namespace
}  // namespace dnpo::data
