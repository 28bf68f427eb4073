// Declared sizes, checked; see extent.h.
#include "extent.h"

#include <algorithm>
#include <limits>

#include "dnpo/common/error.h"

namespace dnpo::ckpt::extent {
std::int64_t numel_of(const std::vector<std::int64_t>& shape) {
  // An empty shape may carry extents whose product overflows (checked_shape lets them through).
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) {
    return 0;
  }
  std::int64_t n = 1;
  for (const auto d : shape) {
    n *= d;
  }
  return n;
}

std::int64_t chunk_count(std::int64_t numel, std::int64_t chunk_elems) {
  return numel / chunk_elems + (numel % chunk_elems != 0 ? 1 : 0);
}

std::vector<std::int64_t> checked_shape(const std::vector<std::uint64_t>& dims,
                                        std::int64_t elem_bytes,
                                        std::uint64_t file_bytes,
                                        const std::string& where) {
  // Every product stays ≤ file_bytes (< 2^63 for any real file) before the next multiply. An
  // empty dataset holds no data whatever its other extents say.
  const std::uint64_t limit =
      std::min<std::uint64_t>(file_bytes, std::numeric_limits<std::int64_t>::max());
  const bool empty = std::find(dims.begin(), dims.end(), 0) != dims.end();
  bool fits = elem_bytes > 0;
  if (fits && !empty) {
    std::uint64_t bytes = static_cast<std::uint64_t>(elem_bytes);
    fits = bytes <= limit;
    for (std::size_t i = 0; fits && i < dims.size(); ++i) {
      fits = bytes <= limit / dims[i];
      bytes *= dims[i];
    }
  }
  for (const auto d : dims) {  // and every extent a valid int64
    fits = fits && d <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  }
  DNPO_CHECK_WITH(CheckpointError,
                  fits,
                  "{}: dataset extents {} of {}-byte elements do not fit in the file's {} bytes; "
                  "the file is damaged",
                  where,
                  shape_str(dims),
                  elem_bytes,
                  file_bytes);
  return {dims.begin(), dims.end()};
}

void check_checksums(const std::vector<std::int64_t>& shape,
                     const std::vector<std::int64_t>& crc_shape,
                     std::int64_t chunk_elems,
                     const std::string& where) {
  DNPO_CHECK_WITH(
      CheckpointError, chunk_elems > 0, "{}: bad chunk_elems {}; expected > 0", where, chunk_elems);
  const std::int64_t n_chunks = chunk_count(numel_of(shape), chunk_elems);
  DNPO_CHECK_WITH(CheckpointError,
                  crc_shape == std::vector<std::int64_t>{n_chunks},
                  "{}: checksum dataset has shape {}; expected [{}]",
                  where,
                  shape_str(crc_shape),
                  n_chunks);
}

}  // namespace dnpo::ckpt::extent
