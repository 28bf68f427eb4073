// The verdict book: what is known, what is in flight, and its two written forms (see
// verdict_book.h).
#include "dnpo/judge/verdict_book.h"

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <utility>

#include "dnpo/common/error.h"

namespace dnpo::judge {
namespace {

using Json = nlohmann::json;

// A template hash never holds a newline (it is hex, or the rule judge's settings), so a scope
// splits at its last one whatever the model's name.
constexpr char kScopeSeparator = '\n';

std::pair<std::string, std::string> split_scope(const std::string& scope) {
  const auto at = scope.rfind(kScopeSeparator);
  DNPO_INTERNAL_ASSERT(at != std::string::npos);
  return {scope.substr(0, at), scope.substr(at + 1)};
}

Outcome outcome_from(const std::string& name) {
  for (const auto o :
       {Outcome::kScored, Outcome::kSpinFallback, Outcome::kDropped, Outcome::kFailed}) {
    if (name == outcome_name(o)) {
      return o;
    }
  }
  throw CheckpointError("unknown judge outcome '" + name + "'");
}

}  // namespace

std::string judge_scope(const std::string& model, const std::string& template_hash) {
  return model + kScopeSeparator + template_hash;
}

VerdictBook::VerdictBook(VerdictBook&& other) noexcept {
  *this = std::move(other);
}

VerdictBook& VerdictBook::operator=(VerdictBook&& other) noexcept {
  if (this != &other) {
    const std::scoped_lock lock(mutex_, other.mutex_);
    known_ = std::move(other.known_);
    in_flight_ = std::move(other.in_flight_);
    unsent_ = std::move(other.unsent_);
  }
  return *this;
}

std::optional<double> VerdictBook::find(const VerdictKey& key) const {
  const std::lock_guard<std::mutex> lock(mutex_);
  const auto it = known_.find(key);
  if (it == known_.end()) {
    return std::nullopt;
  }
  return it->second;
}

void VerdictBook::insert(const VerdictKey& key, double score) {
  const std::lock_guard<std::mutex> lock(mutex_);
  known_[key] = score;
}

std::size_t VerdictBook::size() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  return known_.size();
}

VerdictBook::Asked VerdictBook::ask(const VerdictKey& key, Reader reader) {
  if (const auto score = find(key)) {
    reader(Verdict{Outcome::kScored, *score});
    return Asked::kKnown;
  }
  if (const auto it = in_flight_.find(key); it != in_flight_.end()) {
    it->second.readers.push_back(std::move(reader));
    return Asked::kInFlight;
  }
  in_flight_[key].readers.push_back(std::move(reader));
  unsent_.push_back(key);
  return Asked::kNew;
}

std::size_t VerdictBook::send(Judge& judge) {
  if (unsent_.empty()) {
    return 0;
  }
  std::vector<JudgeRequest> batch;
  batch.reserve(unsent_.size());
  for (const auto& key : unsent_) {
    batch.push_back({key.question, key.answer});
  }
  auto verdicts = judge.submit(std::move(batch));
  for (std::size_t k = 0; k < unsent_.size(); ++k) {
    in_flight_.at(unsent_[k]).verdict = std::move(verdicts[k]);
  }
  const auto sent = unsent_.size();
  unsent_.clear();
  return sent;
}

void VerdictBook::collect(bool block) {
  for (auto it = in_flight_.begin(); it != in_flight_.end();) {
    auto& request = it->second;
    const bool ready =
        request.verdict.valid() &&
        (block || request.verdict.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
    if (!ready) {
      ++it;
      continue;
    }
    JudgeResult result;
    try {
      result = request.verdict.get();  // throws JudgeError under failure_policy "fail"
    } catch (const std::future_error&) {
      it = in_flight_.erase(it);
      continue;
    }
    const Verdict verdict{result.outcome, result.score};
    if (result.outcome == Outcome::kScored) {
      insert(it->first, result.score);
    }
    for (const auto& reader : request.readers) {
      reader(verdict);
    }
    it = in_flight_.erase(it);
  }
}

void VerdictBook::wait(std::chrono::milliseconds timeout) const {
  for (const auto& [key, request] : in_flight_) {
    if (request.verdict.valid()) {
      request.verdict.wait_for(timeout);
      return;
    }
  }
}

std::size_t VerdictBook::in_flight() const {
  return in_flight_.size();
}

Json VerdictBook::scope_json(const std::string& scope) const {
  const std::lock_guard<std::mutex> lock(mutex_);
  Json out = Json::array();
  for (auto it = known_.lower_bound(VerdictKey{scope, "", ""});
       it != known_.end() && it->first.scope == scope;
       ++it) {
    out.push_back(Json::array(
        {text_json(it->first.answer), verdict_json(Verdict{Outcome::kScored, it->second})}));
  }
  return out;
}

void VerdictBook::restore_scope(const std::string& scope,
                                const std::string& question,
                                const Json& entries) {
  std::map<VerdictKey, double> restored;
  for (const auto& entry : entries) {
    const auto verdict = verdict_from(entry.at(1));
    if (!verdict) {
      throw CheckpointError("a known answer without a verdict");
    }
    if (verdict->outcome != Outcome::kScored) {
      throw CheckpointError(std::string("a known answer with outcome '") +
                            outcome_name(verdict->outcome) + "'; only scored ones are kept");
    }
    restored[VerdictKey{scope, question, text_from(entry.at(0))}] = verdict->score;
  }
  const std::lock_guard<std::mutex> lock(mutex_);
  const auto first = known_.lower_bound(VerdictKey{scope, "", ""});
  auto last = first;
  while (last != known_.end() && last->first.scope == scope) {
    ++last;
  }
  known_.erase(first, last);
  known_.merge(restored);
}

void VerdictBook::save(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    DNPO_CHECK_WITH(JudgeError, out.good(), "cannot write judge cache '{}'", tmp);
    const std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [key, score] : known_) {
      const auto [model, template_hash] = split_scope(key.scope);
      Json j{{"model", model},
             {"template", template_hash},
             {"question", key.question},
             {"answer", key.answer},
             {"score", score}};
      // Answers are model output: replace invalid UTF-8 rather than fail the save.
      out << j.dump(-1, ' ', false, Json::error_handler_t::replace) << '\n';
    }
    out.flush();
    DNPO_CHECK_WITH(JudgeError, out.good(), "writing judge cache '{}' failed", tmp);
  }
  DNPO_CHECK_WITH(JudgeError,
                  std::rename(tmp.c_str(), path.c_str()) == 0,
                  "cannot rename judge cache '{}' to '{}'",
                  tmp,
                  path);
}

void VerdictBook::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  DNPO_CHECK_WITH(JudgeError, in.good(), "cannot read judge cache '{}'", path);
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) {
      continue;
    }
    try {
      const auto j = Json::parse(line);
      insert({judge_scope(j.at("model").get<std::string>(), j.at("template").get<std::string>()),
              j.at("question").get<std::string>(),
              j.at("answer").get<std::string>()},
             j.at("score").get<double>());
    } catch (const Json::exception& e) {
      DNPO_FAIL(JudgeError,
                "{}:{}: bad judge cache entry ({}); expected {{\"model\", \"template\", "
                "\"question\", \"answer\", \"score\"}}",
                path,
                line_no,
                e.what());
    }
  }
}

Json verdict_json(const std::optional<Verdict>& verdict) {
  if (!verdict) {
    return nullptr;
  }
  return Json::array({outcome_name(verdict->outcome), verdict->score});
}

std::optional<Verdict> verdict_from(const Json& j) {
  if (j.is_null()) {
    return std::nullopt;
  }
  return Verdict{outcome_from(j.at(0).get<std::string>()), j.at(1).get<double>()};
}

// Answers are model output: a byte-level model may emit invalid UTF-8. Its bytes are kept
// exactly, so a resumed run finds the same answers among the verdicts known.
Json text_json(const std::string& text) {
  try {
    return Json::parse(Json(text).dump());
  } catch (const Json::exception&) {
    return Json(std::vector<std::uint8_t>(text.begin(), text.end()));
  }
}

std::string text_from(const Json& j) {
  if (j.is_string()) {
    return j.get<std::string>();
  }
  const auto bytes = j.get<std::vector<std::uint8_t>>();
  return {bytes.begin(), bytes.end()};
}

}  // namespace dnpo::judge
