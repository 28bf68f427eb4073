// JSONL readers and writers for prompt/SFT records and preference pairs. Every malformed line is
// reported as "<path>:<line>: <what>; expected <schema>"; nothing is silently dropped.
#include "dnpo/data/jsonl.h"

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string_view>
#include <system_error>

#include <nlohmann/json.hpp>

#include "dnpo/common/error.h"
#include "dnpo/data/jsonl_reader.h"

namespace dnpo::data {
namespace {

using Json = nlohmann::json;

constexpr const char* kPromptSchema =
    R"({"id": str|int, "prompt": str, "answer": str[, "task": str, "truth": str]} or )"
    R"({"prompt_id": str|int, "messages": [{"role": "user"|"assistant", "content": str}, ...]})";
constexpr const char* kPairSchema =
    R"({"id": str|int, "prompt": str, "chosen": str|messages, "rejected": str|messages)"
    R"([, "score_chosen": number, "score_rejected": number]})";

constexpr const char* kChoiceSchema =
    R"({"id": str|int, "question": str, "choices": [str, ...], "label"|"answer": )"
    R"(index|choice text|letter})";

/// Where a record came from, for error messages.
struct LineContext {
  const JsonlLine& line;
  const char* schema;
};

[[noreturn]] void fail(const LineContext& ctx, const std::string& what) {
  fail_jsonl_line(ctx.line, what, ctx.schema);
}

std::string error_text(int err) {
  return std::error_code(err, std::generic_category()).message();
}

/// A visitor that appends parse(object, ctx) to `records`.
template <typename Record, typename Parse>
JsonlVisitor collect_into(std::vector<Record>& records, const char* schema, Parse parse) {
  return [&records, schema, parse](const Json& object, const JsonlLine& line) {
    records.push_back(parse(object, LineContext{line, schema}));
  };
}

/// Calls parse(object, ctx) for every non-blank line of `in` (named `path` in errors); collects
/// the results.
template <typename Record, typename Parse>
std::vector<Record> read_jsonl_lines(std::istream& in,
                                     const std::string& path,
                                     const char* schema,
                                     Parse parse) {
  std::vector<Record> records;
  for_each_jsonl(in, path, collect_into(records, schema, parse), schema);
  return records;
}

/// read_jsonl_lines over the file `path`.
template <typename Record, typename Parse>
std::vector<Record> read_jsonl(const std::string& path, const char* schema, Parse parse) {
  std::vector<Record> records;
  for_each_jsonl_file(path, collect_into(records, schema, parse), schema);
  return records;
}

/// read_jsonl_lines over text in memory.
template <typename Record, typename Parse>
std::vector<Record> parse_jsonl(std::string_view text,
                                const std::string& name,
                                const char* schema,
                                Parse parse) {
  std::istringstream in{std::string(text)};
  return read_jsonl_lines<Record>(in, name, schema, parse);
}

/// A required string field.
std::string get_string(const Json& object, const char* key, const LineContext& ctx) {
  const auto it = object.find(key);
  if (it == object.end()) {
    fail(ctx, std::string("missing field \"") + key + "\"");
  }
  if (!it->is_string()) {
    fail(ctx, std::string("field \"") + key + "\" must be a string, got " + it->type_name());
  }
  return it->get<std::string>();
}

/// An optional string field ("" when absent or null).
std::string get_optional_string(const Json& object, const char* key, const LineContext& ctx) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) {
    return "";
  }
  if (!it->is_string()) {
    fail(ctx, std::string("field \"") + key + "\" must be a string, got " + it->type_name());
  }
  return it->get<std::string>();
}

/// "id", else "prompt_id", else the line number. Strings and integers are accepted.
std::string get_id(const Json& object, const LineContext& ctx) {
  for (const char* key : {"id", "prompt_id"}) {
    const auto it = object.find(key);
    if (it == object.end() || it->is_null()) {
      continue;
    }
    if (it->is_string()) {
      return it->get<std::string>();
    }
    if (it->is_number_integer()) {
      return it->dump();
    }
    fail(ctx,
         std::string("field \"") + key + "\" must be a string or an integer, got " +
             it->type_name());
  }
  return std::to_string(ctx.line.number);
}

std::optional<double> get_optional_number(const Json& object,
                                          const char* key,
                                          const LineContext& ctx) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) {
    return std::nullopt;
  }
  if (!it->is_number()) {
    fail(ctx, std::string("field \"") + key + "\" must be a number, got " + it->type_name());
  }
  return it->get<double>();
}

/// The first user turn and the first assistant turn after it, from an HF message list.
struct Turns {
  std::optional<std::string> user;
  std::optional<std::string> assistant;
};

Turns parse_messages(const Json& messages, const char* key, const LineContext& ctx) {
  if (!messages.is_array()) {
    fail(ctx, std::string("field \"") + key + "\" must be an array, got " + messages.type_name());
  }
  Turns turns;
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const Json& turn = messages[i];
    const std::string where = std::string(key) + "[" + std::to_string(i) + "]";
    if (!turn.is_object()) {
      fail(ctx, where + " must be an object, got " + turn.type_name());
    }
    const std::string role = get_string(turn, "role", ctx);
    const auto content = turn.find("content");
    if (content == turn.end() || !content->is_string()) {
      fail(ctx, where + ".content must be a string");
    }
    if (role == "user" && !turns.user) {
      turns.user = content->get<std::string>();
    } else if (role == "assistant" && turns.user && !turns.assistant) {
      turns.assistant = content->get<std::string>();
    }
  }
  return turns;
}

PromptRecord parse_prompt(const Json& object, const LineContext& ctx) {
  PromptRecord record;
  record.id = get_id(object, ctx);
  if (object.contains("messages") && !object.contains("answer")) {
    const Turns turns = parse_messages(object.at("messages"), "messages", ctx);
    if (!turns.user) {
      fail(ctx, "\"messages\" has no user turn");
    }
    if (!turns.assistant) {
      fail(ctx, "\"messages\" has no assistant turn after the first user turn");
    }
    record.prompt = *turns.user;
    record.answer = *turns.assistant;
  } else {
    record.prompt = get_string(object, "prompt", ctx);
    record.answer = get_string(object, "answer", ctx);
    record.task = get_optional_string(object, "task", ctx);
    record.truth = get_optional_string(object, "truth", ctx);
  }
  if (record.prompt.empty()) {
    fail(ctx, "empty prompt");
  }
  return record;
}

/// "chosen"/"rejected": a string, or a message list whose first assistant turn is the text.
std::string get_response(const Json& object,
                         const char* key,
                         const LineContext& ctx,
                         std::optional<std::string>* user_turn) {
  const auto it = object.find(key);
  if (it == object.end()) {
    fail(ctx, std::string("missing field \"") + key + "\"");
  }
  if (it->is_string()) {
    return it->get<std::string>();
  }
  if (it->is_array()) {
    const Turns turns = parse_messages(*it, key, ctx);
    if (!turns.assistant) {
      fail(ctx, std::string("\"") + key + "\" has no assistant turn after a user turn");
    }
    if (user_turn != nullptr && !*user_turn) {
      *user_turn = turns.user;
    }
    return *turns.assistant;
  }
  fail(ctx,
       std::string("field \"") + key + "\" must be a string or a message list, got " +
           it->type_name());
}

PairRecord parse_pair(const Json& object, const LineContext& ctx) {
  PairRecord record;
  record.id = get_id(object, ctx);
  std::optional<std::string> user_turn;
  record.chosen = get_response(object, "chosen", ctx, &user_turn);
  record.rejected = get_response(object, "rejected", ctx, nullptr);
  if (object.contains("prompt") || !user_turn) {
    record.prompt = get_string(object, "prompt", ctx);
  } else {
    record.prompt = *user_turn;
  }
  if (record.prompt.empty()) {
    fail(ctx, "empty prompt");
  }
  record.score_chosen = get_optional_number(object, "score_chosen", ctx);
  record.score_rejected = get_optional_number(object, "score_rejected", ctx);
  return record;
}

ChoiceRecord parse_choice(const Json& object, const LineContext& ctx) {
  ChoiceRecord record;
  record.id = get_id(object, ctx);
  record.question = get_string(object, "question", ctx);
  const auto choices = object.find("choices");
  if (choices == object.end() || !choices->is_array() || choices->size() < 2) {
    fail(ctx, "\"choices\" must be an array of at least two strings");
  }
  for (const auto& c : *choices) {
    if (!c.is_string()) {
      fail(ctx, std::string("every choice must be a string, got ") + c.type_name());
    }
    record.choices.push_back(c.get<std::string>());
  }
  auto answer = object.find("label");
  if (answer == object.end()) {
    answer = object.find("answer");
  }
  if (answer == object.end()) {
    fail(ctx, "missing field \"label\" (or \"answer\")");
  }
  const auto n = static_cast<std::int64_t>(record.choices.size());
  std::int64_t index = -1;
  if (answer->is_number_integer()) {
    index = answer->get<std::int64_t>();
  } else if (answer->is_string()) {
    const auto text = answer->get<std::string>();
    for (std::int64_t i = 0; i < n; ++i) {
      if (record.choices[static_cast<std::size_t>(i)] == text) {
        index = i;
      }
    }
    if (index < 0 && text.size() == 1 && text[0] >= 'A' && text[0] < 'A' + n) {
      index = text[0] - 'A';
    }
  }
  if (index < 0 || index >= n) {
    fail(ctx, "the answer " + answer->dump() + " is none of the " + std::to_string(n) + " choices");
  }
  record.label = static_cast<int>(index);
  return record;
}

/// Writes one ordered JSON object per record; make(record) builds the object.
template <typename Record, typename Make>
void write_jsonl(const std::string& path, const std::vector<Record>& records, Make make) {
  std::ofstream out(path, std::ios::out | std::ios::trunc);
  DNPO_CHECK_WITH(DataError,
                  out.is_open(),
                  "cannot open '{}' for writing: {}; hint: does its directory exist?",
                  path,
                  error_text(errno));
  for (const Record& record : records) {
    std::string line;
    try {
      line = make(record).dump();
    } catch (const nlohmann::ordered_json::type_error& e) {
      DNPO_FAIL(DataError,
                "cannot write record id '{}' to '{}': {}; expected UTF-8 text",
                record.id,
                path,
                e.what());
    }
    out << line << '\n';
  }
  out.flush();
  DNPO_CHECK_WITH(DataError, out.good(), "write error on '{}': {}", path, error_text(errno));
}

}  // namespace

std::vector<PromptRecord> read_prompts_jsonl(const std::string& path) {
  return read_jsonl<PromptRecord>(path, kPromptSchema, parse_prompt);
}

std::vector<PairRecord> read_pairs_jsonl(const std::string& path) {
  return read_jsonl<PairRecord>(path, kPairSchema, parse_pair);
}

std::vector<ChoiceRecord> read_choices_jsonl(const std::string& path) {
  return read_jsonl<ChoiceRecord>(path, kChoiceSchema, parse_choice);
}

std::vector<PromptRecord> parse_prompts_jsonl(std::string_view text, const std::string& name) {
  return parse_jsonl<PromptRecord>(text, name, kPromptSchema, parse_prompt);
}

std::vector<PairRecord> parse_pairs_jsonl(std::string_view text, const std::string& name) {
  return parse_jsonl<PairRecord>(text, name, kPairSchema, parse_pair);
}

std::vector<ChoiceRecord> parse_choices_jsonl(std::string_view text, const std::string& name) {
  return parse_jsonl<ChoiceRecord>(text, name, kChoiceSchema, parse_choice);
}

void write_prompts_jsonl(const std::string& path, const std::vector<PromptRecord>& records) {
  write_jsonl(path, records, [](const PromptRecord& r) {
    nlohmann::ordered_json object;
    object["id"] = r.id;
    object["prompt"] = r.prompt;
    object["answer"] = r.answer;
    if (!r.task.empty()) {
      object["task"] = r.task;
    }
    if (!r.truth.empty()) {
      object["truth"] = r.truth;
    }
    return object;
  });
}

void write_pairs_jsonl(const std::string& path, const std::vector<PairRecord>& records) {
  write_jsonl(path, records, [](const PairRecord& r) {
    nlohmann::ordered_json object;
    object["id"] = r.id;
    object["prompt"] = r.prompt;
    object["chosen"] = r.chosen;
    object["rejected"] = r.rejected;
    if (r.score_chosen) {
      object["score_chosen"] = *r.score_chosen;
    }
    if (r.score_rejected) {
      object["score_rejected"] = *r.score_rejected;
    }
    return object;
  });
}

}  // namespace dnpo::data
