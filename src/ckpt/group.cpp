// Group: the few MPI collectives ckpt/ uses (every call checked), with lone-process fallbacks.
#include "group.h"

#include <array>
#include <cstring>
#include <exception>
#include <limits>

#include "dnpo/common/error.h"
#include "dnpo/common/mpi_check.h"

namespace dnpo::ckpt {
namespace {

int checked_count(std::size_t n) {
  DNPO_CHECK_WITH(CheckpointError,
                  n <= static_cast<std::size_t>(std::numeric_limits<int>::max()),
                  "checkpoint metadata too large for one MPI message: {} elements",
                  n);
  return static_cast<int>(n);
}

}  // namespace

Group Group::world() {
  int initialized = 0;
  int finalized = 0;
  DNPO_MPI_CHECK(MPI_Initialized(&initialized));
  DNPO_MPI_CHECK(MPI_Finalized(&finalized));
  if (initialized == 0 || finalized != 0) {
    return lone();
  }
  int rank = 0;
  int size = 1;
  DNPO_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  DNPO_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  return {MPI_COMM_WORLD, rank, size};
}

Group Group::lone() {
  return {MPI_COMM_NULL, 0, 1};
}

std::string Group::broadcast(const std::string& value, int root) const {
  if (!parallel()) {
    return value;
  }
  auto length = static_cast<long long>(value.size());
  DNPO_MPI_CHECK(MPI_Bcast(&length, 1, MPI_LONG_LONG, root, comm_));
  std::string out = rank_ == root ? value : std::string(static_cast<std::size_t>(length), '\0');
  DNPO_MPI_CHECK(MPI_Bcast(
      out.data(), checked_count(static_cast<std::size_t>(length)), MPI_CHAR, root, comm_));
  return out;
}

std::vector<std::int64_t> Group::all_gather(const std::vector<std::int64_t>& local) const {
  if (!parallel()) {
    return local;
  }
  std::vector<std::int64_t> out(local.size() * static_cast<std::size_t>(size_));
  const int n = checked_count(local.size());
  DNPO_MPI_CHECK(MPI_Allgather(local.data(), n, MPI_INT64_T, out.data(), n, MPI_INT64_T, comm_));
  return out;
}

std::vector<std::vector<std::int64_t>> Group::gather(const std::vector<std::int64_t>& local,
                                                     int root) const {
  if (!parallel()) {
    return {local};
  }
  const int n = checked_count(local.size());
  std::vector<int> counts(static_cast<std::size_t>(size_));
  DNPO_MPI_CHECK(MPI_Gather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, root, comm_));
  std::vector<int> displs(counts.size());
  std::size_t total = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    displs[r] = checked_count(total);
    total += static_cast<std::size_t>(counts[r]);
  }
  std::vector<std::int64_t> flat(rank_ == root ? total : 0);
  DNPO_MPI_CHECK(MPI_Gatherv(local.data(),
                             n,
                             MPI_INT64_T,
                             flat.data(),
                             counts.data(),
                             displs.data(),
                             MPI_INT64_T,
                             root,
                             comm_));
  std::vector<std::vector<std::int64_t>> out;
  if (rank_ == root) {
    for (std::size_t r = 0; r < counts.size(); ++r) {
      const auto begin = flat.begin() + displs[r];
      out.emplace_back(begin, begin + counts[r]);
    }
  }
  return out;
}

std::int64_t Group::max(std::int64_t value) const {
  if (!parallel()) {
    return value;
  }
  std::int64_t out = 0;
  DNPO_MPI_CHECK(MPI_Allreduce(&value, &out, 1, MPI_INT64_T, MPI_MAX, comm_));
  return out;
}

void Group::barrier() const {
  if (parallel()) {
    DNPO_MPI_CHECK(MPI_Barrier(comm_));
  }
}

void Group::agree(const std::string& error) const {
  int first = error.empty() ? size_ : rank_;
  if (parallel()) {
    DNPO_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, comm_));
  }
  if (first == size_) {
    return;
  }
  throw CheckpointError(broadcast(error, first));
}

std::string capture_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return {};
}

// --- packing ---

void Packer::put(const std::string& s) {
  put(static_cast<std::int64_t>(s.size()));
  out_ += s;
}

void Packer::put(std::int64_t v) {
  out_.append(reinterpret_cast<const char*>(&v), sizeof v);
}

void Packer::put(double v) {
  out_.append(reinterpret_cast<const char*>(&v), sizeof v);
}

void Unpacker::take(void* dst, std::size_t n) {
  DNPO_INTERNAL_ASSERT(pos_ + n <= in_.size());
  std::memcpy(dst, in_.data() + pos_, n);
  pos_ += n;
}

std::string Unpacker::get_string() {
  const auto n = static_cast<std::size_t>(get_int());
  DNPO_INTERNAL_ASSERT(pos_ + n <= in_.size());
  std::string s = in_.substr(pos_, n);
  pos_ += n;
  return s;
}

std::int64_t Unpacker::get_int() {
  std::int64_t v = 0;
  take(&v, sizeof v);
  return v;
}

double Unpacker::get_double() {
  double v = 0;
  take(&v, sizeof v);
  return v;
}

}  // namespace dnpo::ckpt
