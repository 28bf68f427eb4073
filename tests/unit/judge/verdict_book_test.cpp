// The verdict book: one request per key however often it is asked, verdicts kept by scope, and
// its two written forms (the cache file of `dnpo_judge score`, the self-play checkpoint's).
#include "dnpo/judge/verdict_book.h"

#include <deque>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "dnpo/common/error.h"

namespace dnpo::judge {
namespace {

// A judge whose verdicts the test hands out itself.
class ManualJudge : public Judge {
 public:
  std::vector<std::future<JudgeResult>> submit(std::vector<JudgeRequest> batch) override {
    std::vector<std::future<JudgeResult>> out;
    for (auto& request : batch) {
      requests.push_back(std::move(request));
      promises.emplace_back();
      out.push_back(promises.back().get_future());
    }
    return out;
  }
  JudgeStats stats() const override {
    return {};
  }
  void score(std::size_t k, double score) {
    JudgeResult r;
    r.score = score;
    promises.at(k).set_value(r);
  }
  std::vector<JudgeRequest> requests;
  std::deque<std::promise<JudgeResult>> promises;
};

TEST(JudgeCache, KeysOnModelTemplateQuestionAnswer) {
  VerdictBook c;
  c.insert({judge_scope("m", "t"), "q", "a"}, 42);
  EXPECT_EQ(c.find({judge_scope("m", "t"), "q", "a"}), 42);
  EXPECT_FALSE(c.find({judge_scope("m2", "t"), "q", "a"}));
  EXPECT_FALSE(c.find({judge_scope("m", "t2"), "q", "a"}));
  EXPECT_FALSE(c.find({judge_scope("m", "t"), "q2", "a"}));
  EXPECT_FALSE(c.find({judge_scope("m", "t"), "q", "a2"}));
  c.insert({judge_scope("m", "t"), "q", "a"}, 43);
  EXPECT_EQ(c.find({judge_scope("m", "t"), "q", "a"}), 43);
  EXPECT_EQ(c.size(), 1U);
}

TEST(JudgeCache, SavesAndLoads) {
  VerdictBook c;
  c.insert({judge_scope("gpt", "abc"), "1+1=", "2"}, 100);
  c.insert({judge_scope("gpt", "abc"), "rev ab\n\"x\"", "b\ta"}, 12.5);
  c.insert({judge_scope("a\nmodel name with a newline", "abc"), "q", "a"}, 7);
  const std::string path = ::testing::TempDir() + "judge_cache.jsonl";
  c.save(path);
  VerdictBook d;
  d.load(path);
  EXPECT_EQ(d.size(), 3U);
  EXPECT_EQ(d.find({judge_scope("gpt", "abc"), "rev ab\n\"x\"", "b\ta"}), 12.5);
  EXPECT_EQ(d.find({judge_scope("gpt", "abc"), "1+1=", "2"}), 100);
  EXPECT_EQ(d.find({judge_scope("a\nmodel name with a newline", "abc"), "q", "a"}), 7);
}

TEST(JudgeCache, ReadsTheFileFormatItAlwaysWrote) {
  const std::string path = ::testing::TempDir() + "judge_cache_v1.jsonl";
  std::ofstream(path) << R"({"answer":"2","model":"gpt","question":"1+1=","score":100.0,)"
                      << R"("template":"abc"})"
                      << "\n";
  VerdictBook c;
  c.load(path);
  EXPECT_EQ(c.find({judge_scope("gpt", "abc"), "1+1=", "2"}), 100);
  c.save(path);
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line,
            R"({"answer":"2","model":"gpt","question":"1+1=","score":100.0,"template":"abc"})");
}

TEST(JudgeCache, BadFilesNameTheLine) {
  const std::string path = ::testing::TempDir() + "judge_cache_bad.jsonl";
  std::ofstream(path) << R"({"model":"m","template":"t","question":"q","answer":"a","score":1})"
                      << "\n{\"model\": 3}\n";
  VerdictBook c;
  try {
    c.load(path);
    FAIL() << "expected a JudgeError";
  } catch (const JudgeError& e) {
    EXPECT_NE(std::string(e.what()).find("judge_cache_bad.jsonl:2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(c.load("/nonexistent/cache.jsonl"), JudgeError);
}

TEST(VerdictBook, AsksOncePerKeyAndRemembersScoredVerdicts) {
  VerdictBook book;
  ManualJudge judge;
  std::vector<double> got;
  const auto reader = [&](const Verdict& v) { got.push_back(v.score); };
  EXPECT_EQ(book.ask({"0", "q", "a"}, reader), VerdictBook::Asked::kNew);
  EXPECT_EQ(book.ask({"0", "q", "a"}, reader), VerdictBook::Asked::kInFlight);
  EXPECT_EQ(book.send(judge), 1U);
  EXPECT_EQ(book.ask({"0", "q", "a"}, reader), VerdictBook::Asked::kInFlight);  // after sending
  EXPECT_EQ(book.send(judge), 0U);
  ASSERT_EQ(judge.requests.size(), 1U);
  EXPECT_EQ(judge.requests[0].question, "q");
  EXPECT_EQ(judge.requests[0].answer, "a");
  book.collect(false);
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(book.in_flight(), 1U);
  judge.score(0, 80);
  book.collect(false);
  EXPECT_EQ(got, (std::vector<double>{80, 80, 80}));
  EXPECT_EQ(book.in_flight(), 0U);
  EXPECT_EQ(book.ask({"0", "q", "a"}, reader), VerdictBook::Asked::kKnown);
  EXPECT_EQ(got.size(), 4U);
  // another scope is another prompt: judged apart
  EXPECT_EQ(book.ask({"1", "q", "a"}, reader), VerdictBook::Asked::kNew);
}

TEST(VerdictBook, FailuresAreAskedAgain) {
  VerdictBook book;
  ManualJudge judge;
  std::vector<Outcome> got;
  const auto reader = [&](const Verdict& v) { got.push_back(v.outcome); };
  book.ask({"0", "q", "a"}, reader);
  book.send(judge);
  JudgeResult dropped;
  dropped.outcome = Outcome::kDropped;
  judge.promises[0].set_value(dropped);
  book.collect(true);
  EXPECT_EQ(got, std::vector<Outcome>{Outcome::kDropped});
  EXPECT_EQ(book.size(), 0U);
  EXPECT_EQ(book.ask({"0", "q", "a"}, reader), VerdictBook::Asked::kNew);
}

TEST(VerdictBook, ARequestItsJudgeAbandonedIsForgotten) {
  VerdictBook book;
  bool read = false;
  {
    ManualJudge judge;
    book.ask({"0", "q", "a"}, [&](const Verdict&) { read = true; });
    book.send(judge);
  }  // the judge goes first: its promise is broken
  book.collect(true);
  EXPECT_FALSE(read);
  EXPECT_EQ(book.in_flight(), 0U);
  EXPECT_EQ(book.ask({"0", "q", "a"}, [](const Verdict&) {}), VerdictBook::Asked::kNew);
}

TEST(VerdictBook, AFailedRequestRethrowsItsJudgeError) {
  VerdictBook book;
  ManualJudge judge;
  book.ask({"0", "q", "a"}, [](const Verdict&) {});
  book.send(judge);
  judge.promises[0].set_exception(std::make_exception_ptr(JudgeError("judge down")));
  EXPECT_THROW(book.collect(true), JudgeError);
}

TEST(VerdictBook, ScopeFormKeepsExactBytes) {
  VerdictBook book;
  const std::string bytes("\xff\x00", 2);
  book.insert({"2", "q2", bytes}, 1.0);
  book.insert({"2", "q2", "ok"}, 55.5);
  book.insert({"3", "q3", "other"}, 9);
  const auto form = book.scope_json("2");
  EXPECT_EQ(form.dump(), R"([["ok",["scored",55.5]],[[255,0],["scored",1.0]]])");
  VerdictBook back;
  back.insert({"2", "q2", "stale"}, 3);
  back.restore_scope("2", "q2", form);
  EXPECT_EQ(back.find({"2", "q2", bytes}), 1.0);
  EXPECT_FALSE(back.find({"2", "q2", "stale"}));
  EXPECT_EQ(back.scope_json("2"), form);
  EXPECT_EQ(back.scope_json("3"), nlohmann::json::array());
  EXPECT_THROW(back.restore_scope("2", "q2", nlohmann::json::parse(R"([["a",null]])")),
               CheckpointError);
  EXPECT_THROW(back.restore_scope("2", "q2", nlohmann::json::parse(R"([["a",["dropped",0]]])")),
               CheckpointError);
}

}  // namespace
}  // namespace dnpo::judge
