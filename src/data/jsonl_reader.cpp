// for_each_jsonl: line by line, blank lines skipped, every parse error named by path and line.
#include "dnpo/data/jsonl_reader.h"

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <istream>
#include <system_error>

#include <nlohmann/json.hpp>

#include "dnpo/common/error.h"

namespace dnpo::data {
namespace {

std::string error_text(int err) {
  return std::error_code(err, std::generic_category()).message();
}

}  // namespace

void fail_jsonl_line(const JsonlLine& line, const std::string& what, const char* schema) {
  if (schema == nullptr) {
    DNPO_FAIL(DataError, "{}:{}: {}", line.path, line.number, what);
  }
  DNPO_FAIL(DataError, "{}:{}: {}; expected {}", line.path, line.number, what, schema);
}

void for_each_jsonl(std::istream& in,
                    const std::string& path,
                    const JsonlVisitor& visit,
                    const char* schema) {
  std::string text;
  int number = 0;
  while (std::getline(in, text)) {
    ++number;
    if (number == 1 && text.rfind("\xEF\xBB\xBF", 0) == 0) {
      text.erase(0, 3);  // UTF-8 byte order mark
    }
    if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
      continue;
    }
    const JsonlLine line{path, number};
    nlohmann::json object;
    try {
      object = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for 1e999
      fail_jsonl_line(line, std::string("invalid JSON (") + e.what() + ")", schema);
    }
    if (!object.is_object()) {
      fail_jsonl_line(
          line, std::string("expected a JSON object, got ") + object.type_name(), schema);
    }
    visit(object, line);
  }
  DNPO_CHECK_WITH(DataError,
                  !in.bad(),
                  "read error in '{}' after line {}: {}",
                  path,
                  number,
                  error_text(errno));
}

void for_each_jsonl_file(const std::string& path, const JsonlVisitor& visit, const char* schema) {
  std::error_code ec;
  DNPO_CHECK_WITH(DataError,
                  !std::filesystem::is_directory(path, ec),
                  "cannot read JSONL file '{}': it is a directory; expected a file with one JSON "
                  "object per line",
                  path);
  std::ifstream in(path);
  DNPO_CHECK_WITH(
      DataError, in.is_open(), "cannot open JSONL file '{}': {}", path, error_text(errno));
  for_each_jsonl(in, path, visit, schema);
}

}  // namespace dnpo::data
