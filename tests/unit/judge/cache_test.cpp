// The judge cache: keyed by all four parts, saved and restored through a file.
#include "dnpo/judge/cache.h"

#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "dnpo/common/error.h"

namespace dnpo::judge {
namespace {

TEST(JudgeCache, KeysOnModelTemplateQuestionAnswer) {
  JudgeCache c;
  c.insert("m", "t", "q", "a", 42);
  EXPECT_EQ(c.find("m", "t", "q", "a"), 42);
  EXPECT_FALSE(c.find("m2", "t", "q", "a"));
  EXPECT_FALSE(c.find("m", "t2", "q", "a"));
  EXPECT_FALSE(c.find("m", "t", "q2", "a"));
  EXPECT_FALSE(c.find("m", "t", "q", "a2"));
  c.insert("m", "t", "q", "a", 43);
  EXPECT_EQ(c.find("m", "t", "q", "a"), 43);
  EXPECT_EQ(c.size(), 1U);
}

TEST(JudgeCache, SavesAndLoads) {
  JudgeCache c;
  c.insert("gpt", "abc", "1+1=", "2", 100);
  c.insert("gpt", "abc", "rev ab\n\"x\"", "b\ta", 12.5);
  const std::string path = ::testing::TempDir() + "judge_cache.jsonl";
  c.save(path);
  JudgeCache d;
  d.load(path);
  EXPECT_EQ(d.size(), 2U);
  EXPECT_EQ(d.find("gpt", "abc", "rev ab\n\"x\"", "b\ta"), 12.5);
  EXPECT_EQ(d.find("gpt", "abc", "1+1=", "2"), 100);
}

TEST(JudgeCache, BadFilesNameTheLine) {
  const std::string path = ::testing::TempDir() + "judge_cache_bad.jsonl";
  std::ofstream(path) << R"({"model":"m","template":"t","question":"q","answer":"a","score":1})"
                      << "\n{\"model\": 3}\n";
  JudgeCache c;
  try {
    c.load(path);
    FAIL() << "expected a JudgeError";
  } catch (const JudgeError& e) {
    EXPECT_NE(std::string(e.what()).find("judge_cache_bad.jsonl:2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(c.load("/nonexistent/cache.jsonl"), JudgeError);
}

}  // namespace
}  // namespace dnpo::judge
