// Judge templates: the shipped files, rendering and its inverse, and strict score parsing on good
// and hostile replies.
#include "dnpo/judge/prompt_template.h"

#include <string>

#include <gtest/gtest.h>

#include "dnpo/common/error.h"

namespace dnpo::judge {
namespace {

PromptTemplate shipped(const std::string& name) {
  return load_template(std::string(DNPO_SOURCE_DIR) + "/configs/judge/" + name + ".txt");
}

TEST(PromptTemplate, DefaultTemplateLoads) {
  const auto t = shipped("default_0_100");
  EXPECT_EQ(t.name, "default_0_100");
  EXPECT_EQ(t.format, ScoreFormat::kBare);
  EXPECT_EQ(t.score_min, 0);
  EXPECT_EQ(t.score_max, 100);
  EXPECT_EQ(t.system, "");
  EXPECT_EQ(t.hash.size(), 16U);
  EXPECT_EQ(t.body.rfind("You are tasked with evaluating", 0), 0U);
  EXPECT_EQ(t.body.substr(t.body.size() - 6), "Score:");
}

TEST(PromptTemplate, MtBenchTemplateLoads) {
  const auto t = shipped("mt_bench_single_v1");
  EXPECT_EQ(t.format, ScoreFormat::kBrackets);
  EXPECT_EQ(t.score_min, 1);
  EXPECT_EQ(t.score_max, 10);
  EXPECT_EQ(t.system, "You are a helpful assistant.");
  EXPECT_NE(t.body.find("\"Rating: [[5]]\""), std::string::npos);
  EXPECT_NE(t.hash, shipped("default_0_100").hash);
}

TEST(PromptTemplate, RenderReplacesOnceAndNeverRescans) {
  const auto t = shipped("default_0_100");
  const std::string text = render(t, "12+30=", "{question} 42");
  EXPECT_NE(text.find("\n\nQuestion: 12+30=\n\nAnswer: {question} 42\n\nScore:"),
            std::string::npos);
  const auto back = unrender(t, text);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->first, "12+30=");
  EXPECT_EQ(back->second, "{question} 42");
  EXPECT_FALSE(unrender(t, "Question: 1+1=\n\nAnswer: 2").has_value());
  const auto mt = shipped("mt_bench_single_v1");
  const auto mt_back = unrender(mt, render(mt, "rev abc", ""));
  ASSERT_TRUE(mt_back.has_value());
  EXPECT_EQ(mt_back->first, "rev abc");
  EXPECT_EQ(mt_back->second, "");
}

TEST(PromptTemplate, BadTemplatesNameTheProblem) {
  EXPECT_THROW(parse_template("score_format = bare\nScore: {answer}\n", "t"), ConfigError);
  EXPECT_THROW(parse_template("---\n{answer} {question}\n", "t"), ConfigError);
  EXPECT_THROW(parse_template("---\n{question} {question} {answer}\n", "t"), ConfigError);
  EXPECT_THROW(parse_template("score_format = stars\n---\n{question}{answer}\n", "t"), ConfigError);
  EXPECT_THROW(parse_template("score_min = 5\nscore_max = 1\n---\n{question}{answer}", "t"),
               ConfigError);
  EXPECT_THROW(parse_template("colour = red\n---\n{question}{answer}\n", "t"), ConfigError);
  EXPECT_THROW(load_template("/nonexistent/template.txt"), ConfigError);
  const auto t = parse_template("# c\n\nscore_max = 5\n---\nQ {question} A {answer}\n", "t");
  EXPECT_EQ(t.body, "Q {question} A {answer}");
  EXPECT_EQ(t.score_max, 5);
}

TEST(ScoreParsing, BareAcceptsOnlyANumberInRange) {
  const auto t = shipped("default_0_100");
  EXPECT_EQ(parse_score(t, "73"), 73);
  EXPECT_EQ(parse_score(t, "  \n91\n"), 91);
  EXPECT_EQ(parse_score(t, "0"), 0);
  EXPECT_EQ(parse_score(t, "100"), 100);
  EXPECT_EQ(parse_score(t, "72.5"), 72.5);
  EXPECT_EQ(parse_score(t, "007"), 7);
  const char* hostile[] = {"",
                           "   ",
                           "Score: 73",
                           "73 points",
                           "73/100",
                           "73\n80",
                           "-5",
                           "+5",
                           "101",
                           "100.5",
                           "1e2",
                           "NaN",
                           "nan",
                           "inf",
                           "0x10",
                           "73.",
                           ".5",
                           "99999999999999999999999999999",
                           "7 3",
                           "[[73]]",
                           ("\xff\xfe"
                            "73"),  // one reply: bytes that are not UTF-8, then 73
                           "73\xc3"};
  for (const char* reply : hostile) {
    EXPECT_FALSE(parse_score(t, reply).has_value()) << "reply: " << reply;
  }
  EXPECT_FALSE(parse_score(t, std::string("7\0003", 3)).has_value());
}

TEST(ScoreParsing, BracketsTakeDoubleThenSingle) {
  const auto t = shipped("mt_bench_single_v1");
  EXPECT_EQ(parse_score(t, "The answer is fine. Rating: [[7]]"), 7);
  EXPECT_EQ(parse_score(t, "Rating: [[8.5]] and later [[2]]"), 8.5);
  EXPECT_EQ(parse_score(t, "see [note] then [[3]]"), 3);  // [[x]] wins over an earlier [x]
  EXPECT_EQ(parse_score(t, "Rating: [6]"), 6);
  EXPECT_EQ(parse_score(t, "[[10]]"), 10);
  EXPECT_EQ(parse_score(t, "[[7.]]"), 7);
  const char* hostile[] = {"",
                           "Rating: 7",
                           "Rating: [[11]]",
                           "Rating: [[0]]",
                           "Rating: [[-3]]",
                           "Rating: [[nan]]",
                           "Rating: [[1e1]]",
                           "Rating: [[ 7 ]]",
                           "Rating: [[7",
                           "Rating: [[99999999999999999999]]",
                           "\xff[[\xfe]]"};
  for (const char* reply : hostile) {
    EXPECT_FALSE(parse_score(t, reply).has_value()) << "reply: " << reply;
  }
}

TEST(ScoreParsing, FormatReplyParsesBack) {
  const auto t = shipped("default_0_100");
  const auto mt = shipped("mt_bench_single_v1");
  EXPECT_EQ(format_reply(t, 73), "73");
  EXPECT_EQ(format_reply(mt, 100), "Rating: [[10]]");
  EXPECT_EQ(format_reply(mt, 0), "Rating: [[1]]");
  for (int s = 0; s <= 100; ++s) {
    EXPECT_EQ(parse_score(t, format_reply(t, s)), s);
    EXPECT_TRUE(parse_score(mt, format_reply(mt, s)).has_value());
  }
}

TEST(ScoreParsing, ScoresMapOntoZeroToHundredExactly) {
  const auto t = shipped("default_0_100");
  const auto mt = shipped("mt_bench_single_v1");
  for (int s = 0; s <= 100; ++s) {
    EXPECT_EQ(score_0_100(t, s), static_cast<double>(s)) << s;  // bit for bit: 29 is 29
  }
  EXPECT_EQ(score_0_100(mt, 1), 0.0);
  EXPECT_EQ(score_0_100(mt, 10), 100.0);
  EXPECT_DOUBLE_EQ(score_0_100(mt, 7), 600.0 / 9.0);
}

TEST(HashText, IsFnv1a64) {
  EXPECT_EQ(hash_text(""), 0xcbf29ce484222325ULL);
  EXPECT_EQ(hex64(hash_text("a")), "af63dc4c8601ec8c");
}

TEST(PromptTemplate, ChatReplyTextTakesTheFirstChoicesStringContentOnly) {
  EXPECT_EQ(
      chat_reply_text(R"({"choices": [{"message": {"role": "assistant", "content": "87"}}]})"),
      "87");
  EXPECT_EQ(chat_reply_text(R"({"choices": [{"message": {"content": ""}}, {"x": 1}]})"), "");
  EXPECT_FALSE(chat_reply_text("not json"));
  EXPECT_FALSE(chat_reply_text("[]"));
  EXPECT_FALSE(chat_reply_text(R"({"choices": []})"));
  EXPECT_FALSE(chat_reply_text(R"({"choices": [3]})"));
  EXPECT_FALSE(chat_reply_text(R"({"choices": [{"message": "87"}]})"));
  EXPECT_FALSE(chat_reply_text(R"({"choices": [{"message": {"content": 87}}]})"));
  EXPECT_FALSE(chat_reply_text(R"({"choices": [{"message": {"content": null}}]})"));
}

}  // namespace
}  // namespace dnpo::judge
