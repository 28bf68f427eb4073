// Checkpoint directories: <name>.h5 files, <name>.keep markers, the `latest` pointer (updated
// last, by rename), retention, and the choice of the checkpoint to resume from.
#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include <fcntl.h>
#include <unistd.h>

#include "dnpo/ckpt/checkpoint.h"
#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "format.h"
#include "group.h"

namespace dnpo::ckpt {
namespace {

namespace fs = std::filesystem;

constexpr const char* kExtension = ".h5";
constexpr const char* kTmpExtension = ".h5.tmp";
constexpr const char* kKeepExtension = ".keep";
constexpr const char* kLatest = "latest";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// Writes `text` to `path` durably and atomically (aside, fsync, rename, fsync of the dir).
void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): POSIX open
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  DNPO_CHECK_WITH(CheckpointError, fd >= 0, "cannot create {}: {}", tmp, std::strerror(errno));
  const auto written = ::write(fd, text.data(), text.size());
  const int write_errno = errno;
  const int synced = ::fsync(fd);
  const int sync_errno = errno;
  ::close(fd);
  DNPO_CHECK_WITH(CheckpointError,
                  written == static_cast<ssize_t>(text.size()),
                  "cannot write {}: {}",
                  tmp,
                  std::strerror(write_errno));
  DNPO_CHECK_WITH(
      CheckpointError, synced == 0, "fsync of {} failed: {}", tmp, std::strerror(sync_errno));
  std::error_code ec;
  fs::rename(tmp, path, ec);
  DNPO_CHECK_WITH(CheckpointError, !ec, "cannot rename {} to {}: {}", tmp, path, ec.message());
  const auto dir = fs::path(path).parent_path();
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): POSIX open
  const int dir_fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

}  // namespace

std::string checkpoint_name(std::int64_t index) {
  std::array<char, 32> buf{};
  std::snprintf(buf.data(), buf.size(), "ckpt-%09lld", static_cast<long long>(index));
  return buf.data();
}

std::string checkpoint_path(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / (name + kExtension)).string();
}

void write_latest(const std::string& dir, const std::string& name) {
  format::check_name(name, "checkpoint", "checkpoint directory " + dir);
  write_file_atomically((fs::path(dir) / kLatest).string(), name + "\n");
}

std::optional<std::string> read_latest(const std::string& dir) {
  std::ifstream in(fs::path(dir) / kLatest);
  std::string name;
  if (!in || !std::getline(in, name) || name.empty()) {
    return std::nullopt;
  }
  return name;
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string file = entry.path().filename().string();
    if (entry.is_regular_file(ec) && ends_with(file, kExtension)) {
      names.push_back(file.substr(0, file.size() - std::strlen(kExtension)));
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<std::string> prune_checkpoints(const std::string& dir, int keep_last) {
  std::vector<std::string> removed;
  const auto names = list_checkpoints(dir);
  std::set<std::string> keep;
  const auto newest = static_cast<std::size_t>(std::max(keep_last, 0));
  for (std::size_t i = names.size() > newest ? names.size() - newest : 0; i < names.size(); ++i) {
    keep.insert(names[i]);
  }
  if (const auto latest = read_latest(dir)) {
    keep.insert(*latest);
  }
  std::error_code ec;
  for (const auto& name : names) {
    if (keep.count(name) == 0 && !fs::exists(fs::path(dir) / (name + kKeepExtension), ec)) {
      const auto path = checkpoint_path(dir, name);
      if (fs::remove(path, ec)) {
        removed.push_back(path);
      } else if (ec) {
        log::warn("cannot delete old checkpoint {}: {}", path, ec.message());
      }
    }
  }
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string file = entry.path().filename().string();
    if (ends_with(file, kTmpExtension) && fs::remove(entry.path(), ec)) {
      removed.push_back(entry.path().string());
    }
  }
  return removed;
}

std::string commit_checkpoint(const std::string& dir,
                              const std::string& name,
                              const StateDict& state,
                              const CommitOptions& options) {
  const Group group = Group::world();
  const std::string where = "checkpoint directory " + dir;
  group.agree(group.rank() != 0 ? std::string() : capture_error([&] {
    format::check_name(name, "checkpoint", where);
    DNPO_CHECK_WITH(CheckpointError, name != kLatest, "{}: '{}' is reserved", where, name);
    std::error_code ec;
    fs::create_directories(dir, ec);
    DNPO_CHECK_WITH(CheckpointError, !ec, "{}: cannot create it: {}", where, ec.message());
    if (options.keep) {
      write_file_atomically((fs::path(dir) / (name + kKeepExtension)).string(), "");
    }
  }));
  std::string path = checkpoint_path(dir, name);
  try {
    save(path, state);
  } catch (const CheckpointError&) {
    if (options.keep && group.rank() == 0) {  // no marker for a checkpoint that is not there
      std::error_code ec;
      fs::remove(fs::path(dir) / (name + kKeepExtension), ec);
    }
    throw;
  }
  group.agree(group.rank() != 0 ? std::string() : capture_error([&] {
    write_latest(dir, name);
    if (options.keep_last > 0) {
      for (const auto& removed : prune_checkpoints(dir, options.keep_last)) {
        log::info("pruned checkpoint {}", removed);
      }
    }
  }));
  return path;
}

std::optional<ResumePoint> find_latest_valid(const std::string& dir) {
  const Group group = Group::world();
  // Rank 0 decides the candidates (latest first, then newest by name), so every rank tries the
  // same files in the same order.
  std::string listing;
  if (group.rank() == 0) {
    const auto latest = read_latest(dir);
    auto names = list_checkpoints(dir);
    std::reverse(names.begin(), names.end());
    if (!latest) {
      if (!names.empty()) {
        log::warn(
            "checkpoint directory {} has no readable `latest` pointer; trying the newest "
            "checkpoints by name",
            dir);
      }
    } else if (std::find(names.begin(), names.end(), *latest) == names.end()) {
      log::warn("checkpoint {} named by {}/latest does not exist; trying the newest by name",
                checkpoint_path(dir, *latest),
                dir);
    } else {
      names.erase(std::find(names.begin(), names.end(), *latest));
      names.insert(names.begin(), *latest);
    }
    for (const auto& name : names) {
      listing += name + "\n";
    }
  }
  listing = group.broadcast(listing, 0);
  ResumePoint point;
  std::size_t start = 0;
  for (std::size_t end = listing.find('\n'); end != std::string::npos;
       start = end + 1, end = listing.find('\n', start)) {
    const std::string name = listing.substr(start, end - start);
    const std::string path = checkpoint_path(dir, name);
    try {
      verify(path);
      point.name = name;
      point.path = path;
      return point;
    } catch (const CheckpointError& e) {
      if (group.rank() == 0) {
        log::warn("checkpoint {} is damaged, skipping it: {}", path, e.what());
      }
      point.damaged.push_back(path + ": " + e.what());
    }
  }
  return std::nullopt;
}

}  // namespace dnpo::ckpt
