// What the writer and the reader share: the file layout's names, checks of a StateDict's slices,
// and chunk checksums (zlib CRC-32 of the stored little-endian bytes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dnpo/ckpt/state_dict.h"
#include "extent.h"
#include "group.h"

namespace dnpo::ckpt::format {

inline constexpr const char* kTensors = "tensors";
inline constexpr const char* kChecksums = "checksums";
inline constexpr const char* kAttributes = "attributes";
inline constexpr const char* kBlobs = "blobs";
/// Largest string attribute (HDF5 keeps attributes in 64 KiB object-header messages).
inline constexpr std::size_t kMaxStringBytes = 60000;

using extent::chunk_count;
using extent::numel_of;
using extent::shape_str;

/// Throws CheckpointError unless `name` can be an HDF5 link name (non-empty, no '/', not "."
/// or "..").
void check_name(const std::string& name, const char* what, const std::string& where);
/// Local checks of every slice: valid unique names, fp32/int64, shapes ≥ 0, data CPU contiguous
/// 1-D of the dtype (when non-empty), [offset, offset + numel) inside the tensor.
void check_slices(const StateDict& state, const std::string& where);
/// collective: "" when this rank's tensor list (names, shapes, dtypes, order) is rank 0's, else
/// the first difference (for Group::agree).
std::string compare_with_root(const Group& group, const StateDict& state, const std::string& where);

/// CRC-32 of `bytes` bytes (any size).
std::uint32_t crc32_of(const void* data, std::int64_t bytes);
/// CRC-32 of A‖B from crc(A), crc(B) and B's length.
std::uint32_t crc32_join(std::uint32_t a, std::uint32_t b, std::int64_t b_bytes);

/// The part of checksum chunk `chunk` that a slice holds: elements [start, start + count) of
/// the chunk, and their CRC.
struct ChunkPiece {
  std::int64_t chunk = 0;
  std::int64_t start = 0;
  std::int64_t count = 0;
  std::uint32_t crc = 0;
};
/// The pieces of every chunk that elements [offset, offset + count) of a flattened tensor touch,
/// CRCs computed from data (those elements, elem_size bytes each), in parallel over chunks.
std::vector<ChunkPiece> chunk_pieces(const void* data,
                                     std::int64_t offset,
                                     std::int64_t count,
                                     std::int64_t elem_size,
                                     std::int64_t chunk_elems);

}  // namespace dnpo::ckpt::format
