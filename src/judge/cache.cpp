// The judge cache and its JSONL file (see cache.h).
#include "dnpo/judge/cache.h"

#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "dnpo/common/error.h"

namespace dnpo::judge {

std::optional<double> JudgeCache::find(const std::string& model,
                                       const std::string& template_hash,
                                       const std::string& question,
                                       const std::string& answer) const {
  const std::lock_guard<std::mutex> lock(mutex_);
  const auto it = scores_.find(Key{model, template_hash, question, answer});
  if (it == scores_.end()) {
    return std::nullopt;
  }
  return it->second;
}

void JudgeCache::insert(const std::string& model,
                        const std::string& template_hash,
                        const std::string& question,
                        const std::string& answer,
                        double score) {
  const std::lock_guard<std::mutex> lock(mutex_);
  scores_[Key{model, template_hash, question, answer}] = score;
}

std::size_t JudgeCache::size() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  return scores_.size();
}

void JudgeCache::save(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    DNPO_CHECK_WITH(JudgeError, out.good(), "cannot write judge cache '", tmp, "'");
    const std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [key, score] : scores_) {
      nlohmann::json j{{"model", std::get<0>(key)},
                       {"template", std::get<1>(key)},
                       {"question", std::get<2>(key)},
                       {"answer", std::get<3>(key)},
                       {"score", score}};
      // Answers are model output: replace invalid UTF-8 rather than fail the save.
      out << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
    }
    out.flush();
    DNPO_CHECK_WITH(JudgeError, out.good(), "writing judge cache '", tmp, "' failed");
  }
  DNPO_CHECK_WITH(JudgeError,
                  std::rename(tmp.c_str(), path.c_str()) == 0,
                  "cannot rename judge cache '",
                  tmp,
                  "' to '",
                  path,
                  "'");
}

void JudgeCache::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  DNPO_CHECK_WITH(JudgeError, in.good(), "cannot read judge cache '", path, "'");
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) {
      continue;
    }
    try {
      const auto j = nlohmann::json::parse(line);
      insert(j.at("model").get<std::string>(),
             j.at("template").get<std::string>(),
             j.at("question").get<std::string>(),
             j.at("answer").get<std::string>(),
             j.at("score").get<double>());
    } catch (const nlohmann::json::exception& e) {
      DNPO_FAIL(JudgeError,
                path,
                ":",
                line_no,
                ": bad judge cache entry (",
                e.what(),
                "); expected {\"model\", \"template\", \"question\", \"answer\", \"score\"}");
    }
  }
}

}  // namespace dnpo::judge
