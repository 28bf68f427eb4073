// JSONL readers/writers: both prompt schemas, pairs, round trips, line-exact errors.
#include "dnpo/data/jsonl.h"

#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <unistd.h>

#include "dnpo/common/error.h"
#include "expect_error.h"

namespace dnpo::data {
namespace {

namespace fs = std::filesystem;

class JsonlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("dnpo_jsonl_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    fs::remove_all(dir_);
  }
  std::string write_file(const std::string& name, const std::string& text) {
    std::string path = (dir_ / name).string();
    std::ofstream(path) << text;
    return path;
  }
  fs::path dir_;
};

TEST_F(JsonlTest, ReadsFlatSchemaWithOptionalTaskAndTruth) {
  const std::string path = write_file("p.jsonl",
                                      "{\"id\": \"a\", \"prompt\": \"1+2=\", \"answer\": \"3\"}\n"
                                      "\n"
                                      "{\"id\": 7, \"prompt\": \"rev ab\", \"answer\": \"ab\", "
                                      "\"task\": \"reverse\", \"truth\": \"ba\"}\r\n"
                                      "{\"prompt\": \"sort 21\", \"answer\": \"12\"}\n");
  const auto records = read_prompts_jsonl(path);
  ASSERT_EQ(records.size(), 3U);
  EXPECT_EQ(records[0].id, "a");
  EXPECT_EQ(records[0].prompt, "1+2=");
  EXPECT_EQ(records[0].answer, "3");
  EXPECT_EQ(records[0].task, "");
  EXPECT_EQ(records[1].id, "7");
  EXPECT_EQ(records[1].task, "reverse");
  EXPECT_EQ(records[1].truth, "ba");
  EXPECT_EQ(records[2].id, "4") << "missing id = line number";
}

TEST_F(JsonlTest, ReadsUltraChatMessages) {
  const std::string path = write_file(
      "u.jsonl",
      R"({"prompt_id": "p1", "prompt": "Hi?", "messages": [{"role": "system", "content": "be nice"},)"
      R"( {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"},)"
      R"( {"role": "user", "content": "more"}, {"role": "assistant", "content": "sure"}]})"
      "\n"
      R"({"messages": [{"role": "user", "content": "Wie geht's? ü"}, {"role": "assistant", "content": "Gut."}]})"
      "\n");
  const auto records = read_prompts_jsonl(path);
  ASSERT_EQ(records.size(), 2U);
  EXPECT_EQ(records[0].id, "p1");
  EXPECT_EQ(records[0].prompt, "Hi?");
  EXPECT_EQ(records[0].answer, "Hello!");
  EXPECT_EQ(records[1].id, "2");
  EXPECT_EQ(records[1].prompt, "Wie geht's? ü");
  EXPECT_EQ(records[1].answer, "Gut.");
}

TEST_F(JsonlTest, MalformedLinesNameFileAndLine) {
  const std::string good = R"({"id": "a", "prompt": "p", "answer": "x"})"
                           "\n";
  const std::string path = (dir_ / "bad.jsonl").string();
  struct Case {
    std::string line;
    std::string what;
  };
  const std::vector<Case> cases = {
      {R"({"id": "c", "prompt": "p")", "invalid JSON"},
      {R"({"id": "c", "prompt": "p"})", R"(missing field "answer")"},
      {R"({"id": "c", "prompt": 5, "answer": "x"})", R"("prompt" must be a string)"},
      {R"({"id": "c", "prompt": "", "answer": "x"})", "empty prompt"},
      {R"({"id": [1], "prompt": "p", "answer": "x"})", R"("id" must be a string or an integer)"},
      {"[1, 2]", "expected a JSON object"},
      {R"({"messages": [{"role": "user", "content": "q"}]})", "no assistant turn"},
      {R"({"messages": "hi"})", R"("messages" must be an array)"},
  };
  for (const Case& c : cases) {
    std::string text = good;
    text += "\n" + c.line + "\n";
    text += good;
    SCOPED_TRACE(c.line);
    write_file("bad.jsonl", text);
    const std::string msg = test::error_of<DataError>([&] { read_prompts_jsonl(path); });
    EXPECT_EQ(msg.rfind(path + ":3: ", 0), 0U) << msg;
    EXPECT_CONTAINS(msg, c.what);
    EXPECT_CONTAINS(msg, "expected {\"id\"");  // the schema
  }
}

// The in-memory readers (what the fuzz targets drive) are the file readers over text.
TEST_F(JsonlTest, InMemoryReadersEqualTheFileReaders) {
  const std::string prompts =
      "{\"id\": 1, \"prompt\": \"2+2\", \"answer\": \"4\"}\n\n"
      "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, "
      "{\"role\": \"assistant\", \"content\": \"hello\"}]}\n";
  const auto from_file = read_prompts_jsonl(write_file("p.jsonl", prompts));
  const auto from_text = parse_prompts_jsonl(prompts, "p.jsonl");
  ASSERT_EQ(from_text.size(), 2U);
  ASSERT_EQ(from_file.size(), from_text.size());
  for (std::size_t i = 0; i < from_text.size(); ++i) {
    EXPECT_EQ(from_text[i].id, from_file[i].id);
    EXPECT_EQ(from_text[i].prompt, from_file[i].prompt);
    EXPECT_EQ(from_text[i].answer, from_file[i].answer);
  }
  const auto pairs =
      parse_pairs_jsonl(R"({"id": "a", "prompt": "q", "chosen": "x", "rejected": "y"})", "m");
  ASSERT_EQ(pairs.size(), 1U);
  EXPECT_EQ(pairs[0].chosen, "x");
  const auto choices = parse_choices_jsonl(
      R"({"id": 1, "question": "q", "choices": ["a", "b"], "answer": "B"})", "m");
  ASSERT_EQ(choices.size(), 1U);
  EXPECT_EQ(choices[0].label, 1);
  EXPECT_ERROR(
      DataError,
      [] {
        parse_prompts_jsonl("{\"id\": 1, \"prompt\": \"ok\", \"answer\": \"a\"}\n{\"id\": 2",
                            "inline.jsonl");
      },
      "inline.jsonl:2:");
}

// Found by fuzz_jsonl: a number too large for a double escaped as nlohmann's out_of_range,
// without the file and line. It is a DataError naming both now.
TEST_F(JsonlTest, NumberOverflowNamesFileAndLine) {
  const auto path =
      write_file("big.jsonl",
                 "{\"id\": 1, \"prompt\": \"p\", \"answer\": \"a\"}\n"
                 "{\"id\": 2, \"prompt\": \"p\", \"answer\": \"a\", \"x\": 905e8888888}\n");
  EXPECT_ERROR(
      DataError, [&] { read_prompts_jsonl(path); }, "big.jsonl:2: invalid JSON");
}

TEST_F(JsonlTest, MissingFileNamesPath) {
  const std::string path = (dir_ / "absent.jsonl").string();
  EXPECT_ERROR(
      DataError, [&] { read_prompts_jsonl(path); }, path);
  EXPECT_THROW(read_pairs_jsonl(path), DataError);
  EXPECT_THROW(read_prompts_jsonl(dir_.string()), DataError);
}

TEST_F(JsonlTest, PromptsRoundTrip) {
  std::vector<PromptRecord> records = {{"train-000000", "12+5=", "17", "add", "17"},
                                       {"x", "line\nbreak \"quoted\" ü", "ans", "", ""}};
  const std::string path = (dir_ / "rt.jsonl").string();
  write_prompts_jsonl(path, records);
  const auto back = read_prompts_jsonl(path);
  ASSERT_EQ(back.size(), records.size());
  for (std::size_t i = 0; i < records.size(); ++i) {
    EXPECT_EQ(back[i].id, records[i].id);
    EXPECT_EQ(back[i].prompt, records[i].prompt);
    EXPECT_EQ(back[i].answer, records[i].answer);
    EXPECT_EQ(back[i].task, records[i].task);
    EXPECT_EQ(back[i].truth, records[i].truth);
  }
  std::ifstream in(path);
  std::string first;
  std::getline(in, first);
  EXPECT_EQ(first,
            R"({"id":"train-000000","prompt":"12+5=","answer":"17","task":"add","truth":"17"})");
  EXPECT_THROW(write_prompts_jsonl(path, {{"bad", "\xff\xfe", "a", "", ""}}), DataError);
}

TEST_F(JsonlTest, PairsRoundTripAndHfForm) {
  PairRecord scored{"p1", "1+1=", "2", "3", 100.0, 60.0};
  PairRecord plain{"p2", "rev ab", "ba", "ab", std::nullopt, std::nullopt};
  const std::string path = (dir_ / "pairs.jsonl").string();
  write_pairs_jsonl(path, {scored, plain});
  const auto back = read_pairs_jsonl(path);
  ASSERT_EQ(back.size(), 2U);
  EXPECT_EQ(back[0].chosen, "2");
  EXPECT_EQ(back[0].rejected, "3");
  EXPECT_EQ(back[0].score_chosen, 100.0);
  EXPECT_EQ(back[0].score_rejected, 60.0);
  EXPECT_FALSE(back[1].score_chosen.has_value());
  EXPECT_EQ(back[1].prompt, "rev ab");

  const std::string hf = write_file(
      "hf.jsonl",
      R"({"prompt_id": "u1", "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],)"
      R"( "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}],)"
      R"( "score_chosen": 8.5, "score_rejected": 3})"
      "\n");
  const auto pairs = read_pairs_jsonl(hf);
  ASSERT_EQ(pairs.size(), 1U);
  EXPECT_EQ(pairs[0].id, "u1");
  EXPECT_EQ(pairs[0].prompt, "Q");
  EXPECT_EQ(pairs[0].chosen, "good");
  EXPECT_EQ(pairs[0].rejected, "bad");
  EXPECT_EQ(pairs[0].score_rejected, 3.0);

  const std::string bad = write_file("badpairs.jsonl",
                                     "{\"id\": \"a\", \"prompt\": \"q\", \"chosen\": \"x\", "
                                     "\"rejected\": \"y\"}\n\n"
                                     "{\"id\": \"b\", \"prompt\": \"q\", \"chosen\": \"x\", "
                                     "\"rejected\": \"y\", \"score_chosen\": \"high\"}\n");
  const std::string msg = test::error_of<DataError>([&] { read_pairs_jsonl(bad); });
  EXPECT_EQ(msg.rfind(bad + ":3: ", 0), 0U) << msg;
  EXPECT_CONTAINS(msg, "score_chosen");
}

}  // namespace
}  // namespace dnpo::data
