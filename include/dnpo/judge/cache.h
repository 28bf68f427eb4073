// Judge results cached by (judge model, template hash, question, answer), so nothing is judged
// twice; saved to and restored from a JSONL file. Thread-safe.
#pragma once

#include <cstddef>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>

namespace dnpo::judge {

class JudgeCache {
 public:
  /// The cached score, if any.
  std::optional<double> find(const std::string& model,
                             const std::string& template_hash,
                             const std::string& question,
                             const std::string& answer) const;
  /// Adds or replaces a score.
  void insert(const std::string& model,
              const std::string& template_hash,
              const std::string& question,
              const std::string& answer,
              double score);
  std::size_t size() const;

  /// Writes every entry, one JSON object a line ({"model","template","question","answer",
  /// "score"}), to `path` atomically (a temporary file renamed). Throws JudgeError naming it.
  void save(const std::string& path) const;
  /// Adds the entries of a file written by save(). Throws JudgeError naming path:line.
  void load(const std::string& path);

 private:
  using Key = std::tuple<std::string, std::string, std::string, std::string>;
  mutable std::mutex mutex_;
  std::map<Key, double> scores_;
};

}  // namespace dnpo::judge
