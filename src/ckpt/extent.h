// Checks of the sizes a checkpoint file declares (dataset extents, the checksum chunk size)
// before anything is allocated or read by them. Pure functions of the numbers libhdf5 returns,
// so unit tests and tests/fuzz can hand them whatever a damaged or hostile file could hold.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dnpo::ckpt::extent {

/// "[64, 64]"
template <typename Int>
std::string shape_str(const std::vector<Int>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    out += (i == 0 ? "" : ", ") + std::to_string(shape[i]);
  }
  return out + "]";
}

/// Elements of a shape that checked_shape (or the writer's checks) accepted: 0 for any shape
/// with a 0 extent, however large the others.
std::int64_t numel_of(const std::vector<std::int64_t>& shape);
/// ceil(numel / chunk_elems), for numel ≥ 0 and chunk_elems > 0, without overflow.
std::int64_t chunk_count(std::int64_t numel, std::int64_t chunk_elems);

/// The shape of a dataset of extents `dims` holding elem_bytes-byte elements, in a file of
/// file_bytes bytes. Throws CheckpointError naming `where` when an extent or the element count
/// does not fit int64, or when the data could not fit in the file: dnpo writes contiguous
/// datasets allocated at creation, so a larger extent is a damaged header, not a lot of data.
std::vector<std::int64_t> checked_shape(const std::vector<std::uint64_t>& dims,
                                        std::int64_t elem_bytes,
                                        std::uint64_t file_bytes,
                                        const std::string& where);

/// Throws CheckpointError naming `where` unless checksum dataset `crc_shape` holds one CRC per
/// chunk of a tensor of `shape`, and chunk_elems > 0.
void check_checksums(const std::vector<std::int64_t>& shape,
                     const std::vector<std::int64_t>& crc_shape,
                     std::int64_t chunk_elems,
                     const std::string& where);

}  // namespace dnpo::ckpt::extent
