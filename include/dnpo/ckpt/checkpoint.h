// Checkpoints as single parallel-HDF5 files (MPI-IO): save a StateDict with each rank writing
// its slices, load any slicing on any world size, verify checksums, list contents, and manage a
// checkpoint directory (atomic commit, `latest` pointer, retention, auto-resume). Knows nothing
// of models or training. File layout (format version 1, readable by any HDF5 tool, e.g. h5py):
//   /                   attributes format_version, code_version, git_sha, world_size, chunk_elems
//   /tensors/<name>     one dataset per logical tensor, full shape, fp32 or int64 little-endian
//   /checksums/<name>   uint32 (ceil(numel / chunk_elems),): CRC-32 (zlib) of each chunk of
//                       chunk_elems elements of the flattened tensor's stored bytes
//   /attributes         the StateDict's strings, ints and floats, as scalar attributes
//   /blobs/<name>       uint8 datasets, each with a crc32 attribute
// Collective calls involve every rank of MPI_COMM_WORLD when MPI is initialised, else the lone
// process. Errors throw CheckpointError naming the file, the tensor and what is wrong; an error
// found on one rank is raised on every rank.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dnpo/ckpt/state_dict.h"

namespace dnpo::ckpt {

inline constexpr std::int64_t kFormatVersion = 1;
/// Elements per checksum chunk (4 MiB of fp32).
inline constexpr std::int64_t kChecksumChunkElems = std::int64_t{1} << 20;

// --- single files ---

/// collective: writes `state` to `path`: into `path`.tmp through MPI-IO, then fsync and rename,
/// so `path` is either the previous file or the complete new one. Every rank passes the same
/// tensor list (names, shapes, dtypes, same order); the ranks' slices of each tensor must tile
/// it exactly. Attributes and blobs are rank 0's. Checksums are computed from the ranks' memory:
/// each rank CRCs the parts of chunks it holds; rank 0 joins them (crc32_combine).
void save(const std::string& path, const StateDict& state);

/// collective: every tensor (this rank's even_slice() of it), every attribute and blob.
/// Verifies the checksums of the chunks read.
[[nodiscard]] StateDict load(const std::string& path);

/// collective: fills each slice of `wanted` in place (its data must be allocated: numel elements
/// of the dtype; StateDict::add_request makes one) with [offset, offset + numel) of the stored
/// tensor, and replaces wanted's attributes and blobs with the file's. Every rank asks for the
/// same tensors (names, shapes, dtypes, same order) but any slices. Checks that each tensor is
/// present with the expected shape and dtype and the checksums of every chunk a slice touches
/// (reading the rest of partly covered chunks).
void load_into(const std::string& path, StateDict& wanted);

/// collective: reads every chunk of every tensor (split over the ranks) and every blob and checks
/// their checksums; throws CheckpointError naming the first damaged tensor, chunk and file.
void verify(const std::string& path);

/// Not collective (any one process): a human-readable listing of names, shapes, dtypes, bytes,
/// attributes and blobs. Reads metadata only.
[[nodiscard]] std::string inspect(const std::string& path);

// --- checkpoint directories: <dir>/<name>.h5, <dir>/<name>.keep, <dir>/latest ---
// Names order chronologically as strings (checkpoint_name() pads the index).

/// "ckpt-000000120" for index 120.
[[nodiscard]] std::string checkpoint_name(std::int64_t index);
[[nodiscard]] std::string checkpoint_path(const std::string& dir, const std::string& name);

struct CommitOptions {
  bool keep = false;  ///< never pruned (e.g. an iteration's final checkpoint): <name>.keep marker
  int keep_last = 3;  ///< prune to the newest keep_last (plus kept ones and `latest`); 0 = never
};

/// collective: creates `dir`, writes <dir>/<name>.h5 with save() (the .keep marker first), then
/// rank 0 points `latest` at it (write aside, fsync, rename) and prunes. Returns the path.
std::string commit_checkpoint(const std::string& dir,
                              const std::string& name,
                              const StateDict& state,
                              const CommitOptions& options = {});

/// One process: replaces <dir>/latest by a file holding `name` (write aside, fsync, rename).
void write_latest(const std::string& dir, const std::string& name);
/// The name `latest` holds, or nullopt when it is missing or empty.
[[nodiscard]] std::optional<std::string> read_latest(const std::string& dir);
/// Checkpoint names in `dir` (files <name>.h5), oldest first.
[[nodiscard]] std::vector<std::string> list_checkpoints(const std::string& dir);

/// One process (rank 0): deletes all but the newest keep_last checkpoints, those with a .keep
/// marker and the one `latest` names; also deletes leftover <name>.h5.tmp files of interrupted
/// saves. Returns the deleted paths.
std::vector<std::string> prune_checkpoints(const std::string& dir, int keep_last);

struct ResumePoint {
  std::string name;
  std::string path;
  std::vector<std::string> damaged;  ///< newer checkpoints skipped, each "path: why"
};

/// collective: the checkpoint to resume from: the one `latest` names if it verifies, else the
/// newest (by name) that verifies; each damaged one is logged as a warning with its path and
/// listed. nullopt when `dir` holds no valid checkpoint.
[[nodiscard]] std::optional<ResumePoint> find_latest_valid(const std::string& dir);

}  // namespace dnpo::ckpt
