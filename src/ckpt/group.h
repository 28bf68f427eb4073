// The processes taking part in a checkpoint operation: MPI_COMM_WORLD when MPI is running, else
// one lone process (tools, unit tests). Only what ckpt/ needs: broadcast, gathers, maxima, and
// agree(), which turns a rank-local error into the same exception on every rank.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <mpi.h>

namespace dnpo::ckpt {

class Group {
 public:
  /// MPI_COMM_WORLD when MPI is initialised and not finalised, else a lone process.
  static Group world();
  /// This process alone (serial HDF5), whatever MPI's state.
  static Group lone();

  int rank() const {
    return rank_;
  }
  int size() const {
    return size_;
  }
  /// True when files are opened through MPI-IO (an MPI communicator is in use).
  bool parallel() const {
    return comm_ != MPI_COMM_NULL;
  }
  MPI_Comm comm() const {
    return comm_;
  }

  // collective: every rank of the group, same order.
  /// Rank root's bytes on every rank.
  std::string broadcast(const std::string& value, int root = 0) const;
  /// Every rank's vector (all of the same length n), concatenated in rank order (size()·n).
  std::vector<std::int64_t> all_gather(const std::vector<std::int64_t>& local) const;
  /// Every rank's vector (any lengths) at root, in rank order; empty elsewhere.
  std::vector<std::vector<std::int64_t>> gather(const std::vector<std::int64_t>& local,
                                                int root = 0) const;
  std::int64_t max(std::int64_t value) const;
  void barrier() const;
  /// Throws CheckpointError on every rank when any rank's `error` is non-empty; the message is
  /// that of the lowest such rank.
  void agree(const std::string& error) const;

 private:
  Group(MPI_Comm comm, int rank, int size) : comm_(comm), rank_(rank), size_(size) {}
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
};

/// Runs fn and returns the message of any exception it throws ("" when none): for checks whose
/// outcome may differ between ranks, followed by Group::agree().
std::string capture_error(const std::function<void()>& fn);

/// Length-prefixed packing of strings and numbers (to broadcast small replicated state).
class Packer {
 public:
  void put(const std::string& s);
  void put(std::int64_t v);
  void put(double v);
  const std::string& bytes() const {
    return out_;
  }

 private:
  std::string out_;
};

class Unpacker {
 public:
  explicit Unpacker(const std::string& bytes) : in_(bytes) {}
  std::string get_string();
  std::int64_t get_int();
  double get_double();

 private:
  void take(void* dst, std::size_t n);
  const std::string& in_;
  std::size_t pos_ = 0;
};

}  // namespace dnpo::ckpt
