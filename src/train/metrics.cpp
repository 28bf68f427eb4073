// metrics.jsonl writer and stderr progress; see metrics.h.
#include "dnpo/train/metrics.h"

#include <cmath>
#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "dnpo/common/env.h"
#include "dnpo/common/error.h"
#include "dnpo/common/log.h"

namespace dnpo::train {

MetricsWriter::MetricsWriter(const std::string& path) : path_(path) {
  if (!path.empty()) {
    out_.open(path, std::ios::app);
    DNPO_CHECK(out_.good(), "cannot open metrics file '{}'", path);
  }
}

void MetricsWriter::drop_after(const std::string& kind, std::int64_t step) {
  if (!out_.is_open()) {
    return;
  }
  out_.close();
  std::vector<std::string> kept;
  {
    std::ifstream in(path_);
    std::string line;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      const bool later_of_kind = j.is_object() && j.value("kind", "") == kind &&
                                 j.value("iteration", std::uint64_t{0}) == iteration_ &&
                                 j.value("step", std::int64_t{0}) > step;
      if (!later_of_kind) {
        kept.push_back(line);
      }
    }
  }
  const auto tmp = path_ + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    for (const auto& line : kept) {
      out << line << "\n";
    }
    DNPO_CHECK(out.good(), "cannot write '{}'", tmp);
  }
  DNPO_CHECK(std::rename(tmp.c_str(), path_.c_str()) == 0, "cannot replace '{}'", path_);
  out_.open(path_, std::ios::app);
  DNPO_CHECK(out_.good(), "cannot open metrics file '{}'", path_);
}

void MetricsWriter::write(const std::string& kind,
                          std::int64_t step,
                          const std::vector<std::pair<std::string, double>>& values) {
  if (!out_.is_open()) {
    return;
  }
  nlohmann::json j = {{"kind", kind}, {"iteration", iteration_}, {"step", step}};
  for (const auto& [key, value] : values) {
    j[key] = std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr);
  }
  out_ << j.dump() << "\n";
  out_.flush();
}

void MetricsWriter::restart() {
  if (!out_.is_open()) {
    return;
  }
  out_.close();
  out_.open(path_, std::ios::trunc);
  DNPO_CHECK(out_.good(), "cannot open metrics file '{}'", path_);
}

void MetricsWriter::write_object(const std::string& json_line) {
  if (!out_.is_open()) {
    return;
  }
  out_ << json_line << "\n";
  out_.flush();
}

Progress::Progress(std::string label, std::int64_t total, int every)
    : label_(std::move(label)), total_(total), every_(every < 1 ? 1 : every) {
  const auto forced = env::get(env::kProgress);
  tty_ = forced ? *forced == "1" && isatty(STDERR_FILENO) != 0 : isatty(STDERR_FILENO) != 0;
}

void Progress::update(std::int64_t done, const std::string& status) {
  if (tty_) {
    constexpr int kWidth = 24;
    const auto filled = total_ > 0 ? static_cast<int>(kWidth * done / total_) : 0;
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr,
                 "\r%s [%s] %lld/%lld | %s\033[K",
                 label_.c_str(),
                 bar.c_str(),
                 static_cast<long long>(done),
                 static_cast<long long>(total_),
                 status.c_str());
    std::fflush(stderr);
  } else if (done % every_ == 0 || done == total_) {
    log::info("{} {}/{} | {}", label_, done, total_, status);
  }
}

void Progress::finish() {
  if (tty_) {
    std::fprintf(stderr, "\n");
  }
}

}  // namespace dnpo::train
