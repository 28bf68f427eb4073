// The verdicts a judge has given and the requests still in flight, so that no answer is judged
// twice: the self-play loop keeps one book for the whole run (in its checkpoints), and
// `dnpo_judge score` keeps one as its cache (judge.cache_file), which the backends consult before
// sending and fill after scoring. Only scored verdicts are kept: a failure is asked again.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "dnpo/judge/judge.h"

namespace dnpo::judge {

/// What a verdict is on, and where it may be reused: only by an ask with the same scope.
/// `dnpo_judge score` scopes by the judge (judge_scope()), so one cache file can hold several
/// judges' verdicts; the self-play loop scopes by the prompt's index, so prompts that repeat a
/// text are judged apart and each prompt's verdicts travel with it (checkpoints, ranks).
struct VerdictKey {
  std::string scope;
  std::string question;
  std::string answer;

  bool operator<(const VerdictKey& other) const {
    return std::tie(scope, question, answer) < std::tie(other.scope, other.question, other.answer);
  }
};

/// The scope of a judge's verdicts: its model and prompt template hash.
std::string judge_scope(const std::string& model, const std::string& template_hash);

class VerdictBook {
 public:
  /// Receives a verdict once it is in.
  using Reader = std::function<void(const Verdict&)>;
  /// How ask() answered.
  enum class Asked {
    kKnown,     ///< from a verdict already in: the reader ran at once
    kInFlight,  ///< the same request is in flight: the reader waits for its verdict
    kNew,       ///< a new request, sent by the next send()
  };

  VerdictBook() = default;
  VerdictBook(VerdictBook&& other) noexcept;
  VerdictBook& operator=(VerdictBook&& other) noexcept;
  VerdictBook(const VerdictBook&) = delete;
  VerdictBook& operator=(const VerdictBook&) = delete;

  // --- verdicts known; thread-safe, since a backend consults them from its own thread ---

  /// The score, if `key` was scored.
  std::optional<double> find(const VerdictKey& key) const;
  /// Adds or replaces a score.
  void insert(const VerdictKey& key, double score);
  /// How many scores are known.
  std::size_t size() const;

  // --- requests in flight; one thread, the asker's ---

  /// Asks for the verdict on `key`'s answer to its question; `reader` receives it.
  Asked ask(const VerdictKey& key, Reader reader);
  /// Sends the new requests asked for since the last send, as one batch; returns how many.
  std::size_t send(Judge& judge);
  /// Hands every verdict that is in to its readers (with `block`, waits for all of them) and
  /// keeps the scored ones. A request its judge abandoned (the judge destroyed first) is
  /// forgotten, readers and all: asked again, it is sent again. Rethrows a request's JudgeError
  /// (judge.failure_policy "fail").
  void collect(bool block);
  /// Waits up to `timeout` for the oldest request in flight.
  void wait(std::chrono::milliseconds timeout) const;
  /// Requests sent or to be sent whose verdicts were not collected yet.
  std::size_t in_flight() const;

  // --- checkpoint forms ---

  /// `scope`'s scores as [[answer, ["scored", score]], ...] in answer order, each answer as
  /// text_json() writes it (the self-play checkpoint's form, one array per prompt).
  nlohmann::json scope_json(const std::string& scope) const;
  /// Replaces `scope`'s scores by those of scope_json()'s form, each on `question`. Throws
  /// CheckpointError on an entry that is not a scored verdict.
  void restore_scope(const std::string& scope,
                     const std::string& question,
                     const nlohmann::json& entries);
  /// Writes every score, one JSON object a line ({"model","template","question","answer",
  /// "score"}; scopes from judge_scope()), to `path` atomically (a temporary file renamed).
  /// Throws JudgeError naming it.
  void save(const std::string& path) const;
  /// Adds the scores of a file written by save(). Throws JudgeError naming path:line.
  void load(const std::string& path);

 private:
  struct Request {
    std::vector<Reader> readers;
    std::future<JudgeResult> verdict;  ///< invalid until sent
  };
  mutable std::mutex mutex_;  // guards known_
  std::map<VerdictKey, double> known_;
  std::map<VerdictKey, Request> in_flight_;
  std::vector<VerdictKey> unsent_;
};

/// A verdict as the checkpoints write it: ["scored", 71.5], or null for none yet.
nlohmann::json verdict_json(const std::optional<Verdict>& verdict);
/// Throws CheckpointError on an unknown outcome.
std::optional<Verdict> verdict_from(const nlohmann::json& j);

/// Text that may not be valid UTF-8 (a byte-level model's answer): a JSON string when it is
/// valid, else its bytes as an array, so a checkpoint restores it exactly.
nlohmann::json text_json(const std::string& text);
std::string text_from(const nlohmann::json& j);

}  // namespace dnpo::judge
