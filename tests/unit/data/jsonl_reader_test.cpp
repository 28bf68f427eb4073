// for_each_jsonl: blank lines skipped with the numbering kept, a byte order mark dropped, and every
// error naming the path and the line.
#include "dnpo/data/jsonl_reader.h"

#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dnpo/common/error.h"

namespace dnpo::data {
namespace {

std::string error_reading(const std::string& text, const char* schema = nullptr) {
  std::istringstream in(text);
  try {
    for_each_jsonl(
        in, "x.jsonl", [](const nlohmann::json&, const JsonlLine&) {}, schema);
  } catch (const DataError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a DataError";
  return "";
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
  const auto bad_json = error_reading("{\"a\": 1}\n{nope\n");
  EXPECT_NE(bad_json.find("x.jsonl:2: invalid JSON"), std::string::npos) << bad_json;
  const auto not_object = error_reading("\n[1, 2]\n", "{\"a\": int}");
  EXPECT_NE(not_object.find("x.jsonl:2: expected a JSON object, got array; expected {\"a\": int}"),
            std::string::npos)
      << not_object;
}

TEST(JsonlReader, TheVisitorsOwnErrorsCarryTheLine) {
  std::istringstream in("{\"a\": 1}\n{\"b\": 1}\n");
  try {
    for_each_jsonl(in, "y.jsonl", [](const nlohmann::json& object, const JsonlLine& line) {
      if (!object.contains("a")) {
        fail_jsonl_line(line, "missing field \"a\"", "{\"a\": int}");
      }
    });
    ADD_FAILURE() << "expected a DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("y.jsonl:2: missing field \"a\"; expected {\"a\": int}"),
              std::string::npos)
        << e.what();
  }
}

TEST(JsonlReader, AFileThatCannotBeOpenedIsNamed) {
  try {
    for_each_jsonl_file("/nonexistent/z.jsonl", [](const nlohmann::json&, const JsonlLine&) {});
    ADD_FAILURE() << "expected a DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot open JSONL file '/nonexistent/z.jsonl'"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace dnpo::data
