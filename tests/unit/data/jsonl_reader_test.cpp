// for_each_jsonl: blank lines skipped with the numbering kept, a byte order mark dropped, and every
// error naming the path and the line.
#include "dnpo/data/jsonl_reader.h"

#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dnpo/common/error.h"
#include "expect_error.h"

namespace dnpo::data {
namespace {

/// for_each_jsonl over `text` as x.jsonl, visiting nothing.
void read_text(const std::string& text, const char* schema = nullptr) {
  std::istringstream in(text);
  for_each_jsonl(
      in, "x.jsonl", [](const nlohmann::json&, const JsonlLine&) {}, schema);
}

TEST(JsonlReader, VisitsObjectsWithTheirLineNumbers) {
  std::istringstream in("\xEF\xBB\xBF{\"a\": 1}\n\n   \n{\"a\": 2}\r\n");
  std::vector<std::pair<int, int>> seen;
  for_each_jsonl(in, "x.jsonl", [&](const nlohmann::json& object, const JsonlLine& line) {
    seen.emplace_back(object["a"].get<int>(), line.number);
    EXPECT_EQ(line.path, "x.jsonl");
  });
  EXPECT_EQ(seen, (std::vector<std::pair<int, int>>{{1, 1}, {2, 4}}));
}

TEST(JsonlReader, ErrorsNameThePathAndTheLine) {
  EXPECT_ERROR(
      DataError, [] { read_text("{\"a\": 1}\n{nope\n"); }, "x.jsonl:2: invalid JSON");
  EXPECT_ERROR(
      DataError,
      [] { read_text("\n[1, 2]\n", "{\"a\": int}"); },
      "x.jsonl:2: expected a JSON object, got array; expected {\"a\": int}");
}

TEST(JsonlReader, TheVisitorsOwnErrorsCarryTheLine) {
  std::istringstream in("{\"a\": 1}\n{\"b\": 1}\n");
  const auto read = [&] {
    for_each_jsonl(in, "y.jsonl", [](const nlohmann::json& object, const JsonlLine& line) {
      if (!object.contains("a")) {
        fail_jsonl_line(line, "missing field \"a\"", "{\"a\": int}");
      }
    });
  };
  EXPECT_ERROR(DataError, read, "y.jsonl:2: missing field \"a\"; expected {\"a\": int}");
}

TEST(JsonlReader, AFileThatCannotBeOpenedIsNamed) {
  EXPECT_ERROR(
      DataError,
      [] {
        for_each_jsonl_file("/nonexistent/z.jsonl", [](const nlohmann::json&, const JsonlLine&) {});
      },
      "cannot open JSONL file '/nonexistent/z.jsonl'");
}

}  // namespace
}  // namespace dnpo::data
