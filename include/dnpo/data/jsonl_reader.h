// The one JSONL reader: every non-blank line of a file or stream parsed as a JSON object and
// handed to a visitor, with "<path>:<line>" on every error. The record readers (jsonl.h), the
// judge's batch scorer and the benchmarks read JSONL through it.
#pragma once

#include <functional>
#include <iosfwd>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace dnpo::data {

/// Where a line came from (1-based), for the visitor's own errors.
struct JsonlLine {
  const std::string& path;
  int number;
};

using JsonlVisitor = std::function<void(const nlohmann::json& object, const JsonlLine& line)>;

/// Calls visit(object, line) for every non-blank line of `in` (named `path` in errors); a UTF-8
/// byte order mark before line 1 is dropped. Throws DataError "<path>:<line>: <what>[; expected
/// <schema>]" for a line that is not JSON or not an object, and one naming the path and the last
/// line read on a read error. What visit throws propagates.
void for_each_jsonl(std::istream& in,
                    const std::string& path,
                    const JsonlVisitor& visit,
                    const char* schema = nullptr);

/// for_each_jsonl over the file `path`; throws DataError naming it when it cannot be opened or is
/// a directory.
void for_each_jsonl_file(const std::string& path,
                         const JsonlVisitor& visit,
                         const char* schema = nullptr);

/// Throws DataError "<path>:<line>: <what>[; expected <schema>]".
[[noreturn]] void fail_jsonl_line(const JsonlLine& line,
                                  const std::string& what,
                                  const char* schema = nullptr);

}  // namespace dnpo::data
