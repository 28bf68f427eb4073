// save(): one parallel HDF5 file per checkpoint. Every rank writes its slices (collective MPI-IO);
// rank 0 writes the joined checksums, the attributes and the blobs; then the atomic commit
// (fsync of the .tmp file, rename, fsync of the directory). No reading here.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iomanip>
#include <map>
#include <sstream>
#include <type_traits>

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include "dnpo/ckpt/checkpoint.h"
#include "dnpo/common/env.h"
#include "dnpo/common/error.h"
#include "format.h"
#include "group.h"
#include "h5.h"

#ifndef DNPO_GIT_SHA
#define DNPO_GIT_SHA "unknown"
#endif
#ifndef DNPO_CODE_VERSION
#define DNPO_CODE_VERSION "unknown"
#endif

namespace dnpo::ckpt {
namespace {

struct BlobMeta {
  std::string name;
  std::int64_t size = 0;
  std::int64_t crc = 0;
};

/// Rank 0's attributes and blob sizes/checksums, known to every rank (HDF5 metadata is written
/// collectively, so every rank must create the same objects with the same values).
struct Replicated {
  std::map<std::string, std::string> strings;
  std::map<std::string, std::int64_t> ints;
  std::map<std::string, double> floats;
  std::vector<BlobMeta> blobs;
};

void check_replicated(const StateDict& state, const std::string& where) {
  std::map<std::string, int> keys;
  for (const auto& [key, value] : state.strings) {
    format::check_name(key, "attribute", where);
    DNPO_CHECK_WITH(CheckpointError,
                    value.size() <= format::kMaxStringBytes,
                    "{}, attribute {}: string of {} bytes; expected at most {}; hint: store large "
                    "values in StateDict::blobs",
                    where,
                    key,
                    value.size(),
                    format::kMaxStringBytes);
    ++keys[key];
  }
  for (const auto& [key, value] : state.ints) {
    format::check_name(key, "attribute", where);
    ++keys[key];
  }
  for (const auto& [key, value] : state.floats) {
    format::check_name(key, "attribute", where);
    ++keys[key];
  }
  for (const auto& [key, count] : keys) {
    DNPO_CHECK_WITH(
        CheckpointError,
        count == 1,
        "{}, attribute {}: set in more than one of strings/ints/floats; keys must be unique",
        where,
        key);
  }
  for (const auto& [name, bytes] : state.blobs) {
    format::check_name(name, "blob", where);
  }
}

/// One attribute map: its size, then its (key, value) pairs in key order; unpack_map reads it.
template <typename Value>
void pack_map(Packer& p, const std::map<std::string, Value>& map) {
  p.put(static_cast<std::int64_t>(map.size()));
  for (const auto& [key, value] : map) {
    p.put(key);
    p.put(value);
  }
}

template <typename Value>
std::map<std::string, Value> unpack_map(Unpacker& u) {
  std::map<std::string, Value> map;
  for (auto n = u.get_int(); n > 0; --n) {
    auto key = u.get_string();
    if constexpr (std::is_same_v<Value, std::string>) {
      map[key] = u.get_string();
    } else if constexpr (std::is_same_v<Value, std::int64_t>) {
      map[key] = u.get_int();
    } else {
      static_assert(std::is_same_v<Value, double>, "attributes are strings, ints or floats");
      map[key] = u.get_double();
    }
  }
  return map;
}

std::string pack(const StateDict& state) {
  Packer p;
  pack_map(p, state.strings);
  pack_map(p, state.ints);
  pack_map(p, state.floats);
  p.put(static_cast<std::int64_t>(state.blobs.size()));
  for (const auto& [name, bytes] : state.blobs) {
    p.put(name);
    p.put(static_cast<std::int64_t>(bytes.size()));
    p.put(static_cast<std::int64_t>(
        format::crc32_of(bytes.data(), static_cast<std::int64_t>(bytes.size()))));
  }
  return p.bytes();
}

Replicated unpack(const std::string& bytes) {
  Unpacker u(bytes);
  Replicated r;
  r.strings = unpack_map<std::string>(u);
  r.ints = unpack_map<std::int64_t>(u);
  r.floats = unpack_map<double>(u);
  for (auto n = u.get_int(); n > 0; --n) {
    BlobMeta b;
    b.name = u.get_string();
    b.size = u.get_int();
    b.crc = u.get_int();
    r.blobs.push_back(std::move(b));
  }
  return r;
}

/// Checks that the ranks' slices of each tensor tile it (same verdict on every rank: all see
/// the same table); returns the largest slice of each tensor.
std::vector<std::int64_t> check_tiling(const Group& group,
                                       const StateDict& state,
                                       const std::string& where) {
  std::vector<std::int64_t> mine;
  for (const auto& t : state.tensors) {
    mine.push_back(t.offset);
    mine.push_back(t.numel());
  }
  const auto all = group.all_gather(mine);
  const std::size_t stride = mine.size();
  std::vector<std::int64_t> max_counts;
  for (std::size_t i = 0; i < state.tensors.size(); ++i) {
    const auto& t = state.tensors[i];
    std::vector<std::pair<std::int64_t, std::int64_t>> slices;  // (offset, numel) by rank
    for (int r = 0; r < group.size(); ++r) {
      const std::size_t at = static_cast<std::size_t>(r) * stride + 2 * i;
      slices.emplace_back(all[at], all[at + 1]);
    }
    std::ostringstream listing;
    for (std::size_t r = 0; r < slices.size(); ++r) {
      listing << (r == 0 ? "" : ", ") << "rank " << r << " [" << slices[r].first << ", "
              << slices[r].first + slices[r].second << ")";
    }
    auto sorted = slices;
    std::sort(sorted.begin(), sorted.end());
    std::int64_t next = 0;
    std::int64_t largest = 0;
    for (const auto& [offset, numel] : sorted) {
      if (numel == 0) {
        continue;
      }
      DNPO_CHECK_WITH(CheckpointError,
                      offset == next,
                      "{}, tensor {}: the ranks' slices do not tile it ({}); expected contiguous, "
                      "non-overlapping slices covering [0, {})",
                      where,
                      t.name,
                      listing.str(),
                      t.global_numel());
      next = offset + numel;
      largest = std::max(largest, numel);
    }
    DNPO_CHECK_WITH(CheckpointError,
                    next == t.global_numel(),
                    "{}, tensor {}: the ranks' slices cover [0, {}) ({}); expected [0, {})",
                    where,
                    t.name,
                    next,
                    listing.str(),
                    t.global_numel());
    max_counts.push_back(largest);
  }
  return max_counts;
}

/// collective: every rank's CRCs of the chunk pieces it holds, joined in offset order on rank 0
/// into one CRC per chunk (crc32_combine); empty vectors on the other ranks.
std::vector<std::vector<std::uint32_t>> join_checksums(const Group& group, const StateDict& state) {
  std::vector<std::int64_t> mine;  // (tensor, chunk, start, count, crc) per piece
  for (std::size_t i = 0; i < state.tensors.size(); ++i) {
    const auto& t = state.tensors[i];
    const auto elem = static_cast<std::int64_t>(c10::elementSize(t.dtype));
    const void* data = t.numel() > 0 ? t.data.data_ptr() : nullptr;
    for (const auto& p :
         format::chunk_pieces(data, t.offset, t.numel(), elem, kChecksumChunkElems)) {
      mine.insert(mine.end(),
                  {static_cast<std::int64_t>(i), p.chunk, p.start, p.count, std::int64_t{p.crc}});
    }
  }
  const auto gathered = group.gather(mine);
  std::vector<std::vector<std::uint32_t>> crcs(state.tensors.size());
  if (group.rank() != 0) {
    return crcs;
  }
  std::vector<std::vector<format::ChunkPiece>> pieces(state.tensors.size());
  for (const auto& from_rank : gathered) {
    for (std::size_t k = 0; k + 5 <= from_rank.size(); k += 5) {
      pieces[static_cast<std::size_t>(from_rank[k])].push_back(
          {from_rank[k + 1],
           from_rank[k + 2],
           from_rank[k + 3],
           static_cast<std::uint32_t>(from_rank[k + 4])});
    }
  }
  for (std::size_t i = 0; i < state.tensors.size(); ++i) {
    const auto& t = state.tensors[i];
    const auto elem = static_cast<std::int64_t>(c10::elementSize(t.dtype));
    auto& ps = pieces[i];
    std::sort(ps.begin(), ps.end(), [](const auto& a, const auto& b) {
      return a.chunk != b.chunk ? a.chunk < b.chunk : a.start < b.start;
    });
    const std::int64_t n_chunks = format::chunk_count(t.global_numel(), kChecksumChunkElems);
    crcs[i].assign(static_cast<std::size_t>(n_chunks), 0);
    std::int64_t chunk = -1;
    std::int64_t next = 0;
    for (const auto& p : ps) {
      if (p.chunk != chunk) {
        DNPO_INTERNAL_ASSERT(p.chunk == chunk + 1 && p.start == 0);
        chunk = p.chunk;
        crcs[i][static_cast<std::size_t>(chunk)] = p.crc;
      } else {
        DNPO_INTERNAL_ASSERT(p.start == next);
        auto& crc = crcs[i][static_cast<std::size_t>(chunk)];
        crc = format::crc32_join(crc, p.crc, p.count * elem);
      }
      next = p.start + p.count;
    }
    DNPO_INTERNAL_ASSERT(chunk + 1 == n_chunks);
  }
  return crcs;
}

h5::Id make_group(hid_t file, const char* name, bool track_order, const std::string& where) {
  const h5::Id gcpl(DNPO_H5_CHECK(H5Pcreate(H5P_GROUP_CREATE), where));
  if (track_order) {
    DNPO_H5_CHECK(
        H5Pset_link_creation_order(gcpl.get(), H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED),
        where);
  }
  return h5::Id(DNPO_H5_CHECK(H5Gcreate2(file, name, H5P_DEFAULT, gcpl.get(), H5P_DEFAULT), where));
}

h5::Id make_dataset(hid_t loc,
                    const std::string& name,
                    hid_t type,
                    const std::vector<std::int64_t>& shape,
                    const std::string& where) {
  // Contiguous, allocated at creation, never filled (every element is written).
  const h5::Id dcpl(DNPO_H5_CHECK(H5Pcreate(H5P_DATASET_CREATE), where));
  DNPO_H5_CHECK(H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY), where);
  DNPO_H5_CHECK(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER), where);
  const h5::Id space = h5::make_space(shape);
  return h5::Id(DNPO_H5_CHECK(
      H5Dcreate2(loc, name.c_str(), type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
      where));
}

/// After a failed write (a full disk, usually): rank 0 truncates the file, giving its blocks back,
/// so that HDF5's closing flush of the metadata it still holds can succeed and the file is
/// released. (A file whose close fails stays in HDF5's tables, and HDF5's clean-up at MPI_Finalize
/// or exit then crashes on it.)
void release_failed_file(h5::Id& file, const std::string& path, const Group& group) {
  if (group.rank() == 0) {
    (void)::truncate(path.c_str(), 0);
  }
  group.barrier();
  try {
    file.close("checkpoint " + path);
  } catch (const CheckpointError&) {  // a file system that refuses even that: nothing more to do
  }
}

// Writes of a checkpoint file that agree across ranks. A write can fail on some ranks only (a
// full disk under MPI-IO fails the aggregators): small datasets go by independent MPI-IO, whose
// first error waits in `pending`; the ranks agree on it before the next collective write and
// before the flush, so all of them leave together.
class AgreedWrites {
 public:
  explicit AgreedWrites(const Group& group)
      : group_(group),
        collective_(h5::transfer_plist(group)),
        independent_(h5::transfer_plist(group, false)) {}

  void write(std::int64_t bytes, const std::function<void(hid_t)>& op) {
    if (bytes < h5::kCollectiveMinBytes) {
      if (pending_.empty()) {
        pending_ = capture_error([&] { op(independent_.get()); });
      }
      return;
    }
    group_.agree(pending_);
    group_.agree(capture_error([&] { op(collective_.get()); }));
  }

  /// collective: the pending error, then the flush, agreed on.
  void flush(hid_t file, const std::string& where) {
    group_.agree(pending_);
    group_.agree(capture_error([&] { DNPO_H5_CHECK(H5Fflush(file, H5F_SCOPE_GLOBAL), where); }));
  }

 private:
  const Group& group_;
  h5::Id collective_, independent_;
  std::string pending_;
};

// Every tensor's slices, and rank 0's checksums of its chunks.
void write_tensors(hid_t f,
                   const Group& group,
                   const StateDict& state,
                   const std::vector<std::int64_t>& max_counts,
                   const std::vector<std::vector<std::uint32_t>>& crcs,
                   AgreedWrites& writes,
                   const std::string& where) {
  const bool root = group.rank() == 0;
  const h5::Id tensors = make_group(f, format::kTensors, true, where);
  const h5::Id checksums = make_group(f, format::kChecksums, true, where);
  for (std::size_t i = 0; i < state.tensors.size(); ++i) {
    const auto& t = state.tensors[i];
    const std::string at = where + ", tensor " + t.name;
    const h5::Id data = make_dataset(tensors.get(), t.name, h5::file_type(t.dtype), t.shape, at);
    const auto bytes = t.global_numel() * static_cast<std::int64_t>(c10::elementSize(t.dtype));
    writes.write(bytes, [&](hid_t xfer) {
      h5::write_flat(data.get(),
                     t.dtype,
                     t.offset,
                     t.numel(),
                     t.numel() > 0 ? t.data.data_ptr() : nullptr,
                     max_counts[i],
                     xfer,
                     at);
    });
    const std::int64_t n_chunks = format::chunk_count(t.global_numel(), kChecksumChunkElems);
    const h5::Id crc = make_dataset(checksums.get(), t.name, H5T_STD_U32LE, {n_chunks}, at);
    writes.write(n_chunks * 4, [&](hid_t xfer) {
      h5::write_small_from_root(
          crc.get(), H5T_NATIVE_UINT32, root ? crcs[i].data() : nullptr, n_chunks, root, xfer, at);
    });
  }
}

// Rank 0's attributes and blobs.
void write_attributes_and_blobs(hid_t f,
                                const Group& group,
                                const StateDict& state,
                                const Replicated& rep,
                                AgreedWrites& writes,
                                const std::string& where) {
  const bool root = group.rank() == 0;
  const h5::Id attrs = make_group(f, format::kAttributes, false, where);
  for (const auto& [key, value] : rep.strings) {
    h5::write_attr(attrs.get(), key, value, detail::concat(where, ", attribute ", key));
  }
  for (const auto& [key, value] : rep.ints) {
    h5::write_attr(attrs.get(), key, value, detail::concat(where, ", attribute ", key));
  }
  for (const auto& [key, value] : rep.floats) {
    h5::write_attr(attrs.get(), key, value, detail::concat(where, ", attribute ", key));
  }
  const h5::Id blobs = make_group(f, format::kBlobs, false, where);
  for (const auto& b : rep.blobs) {
    const std::string at = where + ", blob " + b.name;
    const h5::Id data = make_dataset(blobs.get(), b.name, H5T_STD_U8LE, {b.size}, at);
    h5::write_attr(data.get(), "crc32", b.crc, at);
    writes.write(b.size, [&](hid_t xfer) {
      h5::write_flat(data.get(),
                     at::kByte,
                     0,
                     root ? b.size : 0,
                     root ? state.blobs.at(b.name).data() : nullptr,
                     b.size,
                     xfer,
                     at);
    });
  }
}

void write_file(const std::string& file_path,
                const Group& group,
                const StateDict& state,
                const Replicated& rep,
                const std::vector<std::int64_t>& max_counts,
                const std::vector<std::vector<std::uint32_t>>& crcs,
                const std::string& where) {
  h5::Id file = h5::create_file(file_path, group);
  try {
    const hid_t f = file.get();
    h5::write_attr(f, "format_version", kFormatVersion, where);
    h5::write_attr(f, "code_version", std::string(DNPO_CODE_VERSION), where);
    h5::write_attr(f, "git_sha", std::string(DNPO_GIT_SHA), where);
    h5::write_attr(f, "world_size", std::int64_t{group.size()}, where);
    h5::write_attr(f, "chunk_elems", kChecksumChunkElems, where);
    AgreedWrites writes(group);
    write_tensors(f, group, state, max_counts, crcs, writes, where);
    write_attributes_and_blobs(f, group, state, rep, writes, where);
    writes.flush(f, where);
  } catch (const CheckpointError&) {
    release_failed_file(file, file_path, group);
    throw;
  }
  file.close(where);
}

void fsync_path(const std::string& path, bool directory) {
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): POSIX open
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  DNPO_CHECK_WITH(
      CheckpointError, fd >= 0, "cannot open {} to fsync it: {}", path, std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  DNPO_CHECK_WITH(CheckpointError, rc == 0, "fsync of {} failed: {}", path, std::strerror(err));
}

/// Rank 0: makes the complete temporary file durable, then atomically the checkpoint.
void commit(const std::string& tmp, const std::string& path, const std::string& where) {
  const auto fail = env::get(env::kTestCkptFail);
  DNPO_CHECK_WITH(CheckpointError,
                  !(fail && *fail == "before_rename"),
                  "{}: simulated crash before the rename ({}=before_rename); {} stays behind",
                  where,
                  env::kTestCkptFail,
                  tmp);
  fsync_path(tmp, false);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  DNPO_CHECK_WITH(
      CheckpointError, !ec, "{}: cannot rename {} to {}: {}", where, tmp, path, ec.message());
  const auto parent = std::filesystem::path(path).parent_path();
  fsync_path(parent.empty() ? std::string(".") : parent.string(), true);
}

/// "0.13 MB", "16.8 MB", "34.9 GB"
std::string megabytes(std::uintmax_t bytes) {
  std::ostringstream out;
  const double mb = static_cast<double>(bytes) / 1e6;
  out << std::fixed;
  if (mb >= 1000) {
    out << std::setprecision(1) << mb / 1000 << " GB";
  } else {
    out << std::setprecision(mb < 1 ? 2 : 1) << mb << " MB";
  }
  return out.str();
}

/// Bytes a checkpoint of `state` takes, on the safe side: the data, plus 4 KiB per dataset and
/// 256 KiB for HDF5's metadata (which takes under 1 KiB per dataset).
std::uintmax_t file_bytes(const StateDict& state, const Replicated& rep) {
  std::uintmax_t bytes = (std::uintmax_t{1} << 18U) +
                         (2 * state.tensors.size() + rep.blobs.size()) * (std::uintmax_t{1} << 12U);
  for (const auto& t : state.tensors) {
    bytes += static_cast<std::uintmax_t>(t.global_numel()) * c10::elementSize(t.dtype);
  }
  for (const auto& b : rep.blobs) {
    bytes += static_cast<std::uintmax_t>(b.size);
  }
  return bytes;
}

/// "<dir> has 1.5 MB free of 100 MB for a checkpoint of about 2 MB", or "" if it cannot tell;
/// *full: less room than that, or (after a failed write) next to none.
std::string room_note(const std::filesystem::path& dir, std::uintmax_t needed, bool* full) {
  std::error_code ec;
  const auto space = std::filesystem::space(dir, ec);
  *full = false;
  if (ec) {
    return "";
  }
  *full = space.available < std::max<std::uintmax_t>(needed, 1U << 16U);
  return detail::concat(dir.string(),
                        " has ",
                        megabytes(space.available),
                        " free of ",
                        megabytes(space.capacity),
                        " for a checkpoint of about ",
                        megabytes(needed));
}

std::filesystem::path dir_of(const std::string& path) {
  const auto parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? std::filesystem::path(".") : parent;
}

/// After a failed write of `tmp`: the room the file system has left (a full disk is the usual
/// cause, and HDF5's MPI-IO errors do not say so); then rank 0 deletes the partial file.
std::string after_failed_write(const Group& group, const std::string& tmp, std::uintmax_t needed) {
  bool full = false;
  const auto room = room_note(dir_of(tmp), needed, &full);
  if (group.rank() == 0) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
  }
  return detail::concat(full ? "the disk is full: " : "",
                        room,
                        room.empty() ? "" : "; ",
                        "the partial file is deleted, earlier checkpoints and `latest` are "
                        "untouched. ");
}

}  // namespace

void save(const std::string& path, const StateDict& state) {
  h5::quiet();
  const Group group = Group::world();
  const std::string where = "checkpoint " + path;

  // --- checks, the same verdict on every rank before any collective HDF5 call ---
  group.agree(capture_error([&] {
    format::check_slices(state, where);
    if (group.rank() == 0) {
      check_replicated(state, where);
    }
  }));
  group.agree(format::compare_with_root(group, state, where));
  const auto max_counts = check_tiling(group, state, where);
  const Replicated rep =
      unpack(group.broadcast(group.rank() == 0 ? pack(state) : std::string(), 0));

  // --- room for it: a full disk is said before anything is written (rank 0 sees the file
  // system every rank writes to) ---
  // (A disk that fills up during a collective HDF5 flush can leave the ranks waiting on each other
  // inside HDF5; data writes are agreed on below, so they fail together.)
  const std::uintmax_t needed = file_bytes(state, rep);
  const auto test_fail = env::get(env::kTestCkptFail);
  const bool check_room = !(test_fail && *test_fail == "no_space_check");
  group.agree(group.rank() != 0 || !check_room ? std::string() : capture_error([&] {
    bool full = false;
    const auto room = room_note(dir_of(path), needed, &full);
    DNPO_CHECK_WITH(CheckpointError,
                    !full,
                    "{}: the disk is full: {}; nothing is written, earlier checkpoints and "
                    "`latest` are untouched",
                    where,
                    room);
  }));

  // --- write aside, then commit ---
  const auto crcs = join_checksums(group, state);
  const std::string tmp = path + ".tmp";
  try {
    write_file(tmp, group, state, rep, max_counts, crcs, where);
  } catch (const CheckpointError& e) {
    throw CheckpointError(detail::concat(where,
                                         ": writing it failed: ",
                                         after_failed_write(group, tmp, needed),
                                         "Cause: ",
                                         e.what()));
  }
  group.agree(group.rank() == 0 ? capture_error([&] { commit(tmp, path, where); }) : "");
}

}  // namespace dnpo::ckpt
