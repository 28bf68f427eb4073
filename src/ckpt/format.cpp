// Shared checks and chunk checksums of the checkpoint format.
#include "format.h"

#include <algorithm>
#include <limits>
#include <unordered_set>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <zlib.h>

#include "dnpo/common/error.h"

// Checksums are of the stored (little-endian) bytes, computed from memory.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "ckpt assumes a little-endian host");

namespace dnpo::ckpt::format {
namespace {

std::string describe(const TensorSlice& t) {
  return detail::concat(t.name, " ", shape_str(t.shape), " ", c10::toString(t.dtype));
}

}  // namespace

void check_name(const std::string& name, const char* what, const std::string& where) {
  DNPO_CHECK_WITH(
      CheckpointError,
      !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos,
      "{}: invalid {} name '{}'; expected a non-empty name without '/'",
      where,
      what,
      name);
}

void check_slices(const StateDict& state, const std::string& where) {
  std::unordered_set<std::string> seen;
  for (const auto& t : state.tensors) {
    check_name(t.name, "tensor", where);
    const std::string at = where + ", tensor " + t.name;
    DNPO_CHECK_WITH(CheckpointError, seen.insert(t.name).second, "{}: listed twice", at);
    DNPO_CHECK_WITH(CheckpointError,
                    t.dtype == at::kFloat || t.dtype == at::kLong,
                    "{}: unsupported dtype {}; expected Float or Long",
                    at,
                    t.dtype);
    DNPO_CHECK_WITH(CheckpointError,
                    std::all_of(t.shape.begin(), t.shape.end(), [](auto d) { return d >= 0; }),
                    "{}: negative dimension in shape {}",
                    at,
                    shape_str(t.shape));
    if (t.numel() > 0) {
      DNPO_CHECK_WITH(CheckpointError,
                      t.data.device().is_cpu() && t.data.dim() == 1 && t.data.is_contiguous() &&
                          t.data.scalar_type() == t.dtype,
                      "{}: slice data must be a contiguous 1-D CPU tensor of {}; got {} {} on {}",
                      at,
                      t.dtype,
                      t.data.sizes(),
                      t.data.scalar_type(),
                      t.data.device());
    }
    DNPO_CHECK_WITH(CheckpointError,
                    t.offset >= 0 && t.offset + t.numel() <= t.global_numel(),
                    "{}: slice [{}, {}) lies outside the tensor of shape {} ({} elements)",
                    at,
                    t.offset,
                    t.offset + t.numel(),
                    shape_str(t.shape),
                    t.global_numel());
  }
}

std::string compare_with_root(const Group& group,
                              const StateDict& state,
                              const std::string& where) {
  std::string mine;
  for (const auto& t : state.tensors) {
    mine += describe(t) + "\n";
  }
  const std::string root = group.broadcast(mine, 0);
  if (root == mine) {
    return {};
  }
  std::istringstream a(root);
  std::istringstream b(mine);
  std::string line_a;
  std::string line_b;
  for (int entry = 0;; ++entry) {
    const bool has_a = static_cast<bool>(std::getline(a, line_a));
    const bool has_b = static_cast<bool>(std::getline(b, line_b));
    if (!has_a || !has_b || line_a != line_b) {
      return detail::decorate_error(
          detail::concat(where,
                         ": ranks disagree on the tensor list at entry ",
                         entry,
                         ": rank 0 has '",
                         has_a ? line_a : "(end)",
                         "', this rank has '",
                         has_b ? line_b : "(end)",
                         "'; every rank must pass the same tensors in the same order"),
          __FILE__,
          __LINE__);
    }
  }
}

std::uint32_t crc32_of(const void* data, std::int64_t bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto* p = static_cast<const Bytef*>(data);
  constexpr std::int64_t kStep = std::int64_t{1} << 30;  // zlib lengths are 32-bit
  for (std::int64_t done = 0; done < bytes; done += kStep) {
    crc = crc32(crc, p + done, static_cast<uInt>(std::min(kStep, bytes - done)));
  }
  return static_cast<std::uint32_t>(crc);
}

std::uint32_t crc32_join(std::uint32_t a, std::uint32_t b, std::int64_t b_bytes) {
  static_assert(sizeof(z_off_t) >= 8, "zlib built without 64-bit offsets");
  return static_cast<std::uint32_t>(crc32_combine(a, b, static_cast<z_off_t>(b_bytes)));
}

std::vector<ChunkPiece> chunk_pieces(const void* data,
                                     std::int64_t offset,
                                     std::int64_t count,
                                     std::int64_t elem_size,
                                     std::int64_t chunk_elems) {
  std::vector<ChunkPiece> pieces;
  if (count == 0) {
    return pieces;
  }
  const std::int64_t end = offset + count;
  for (std::int64_t c = offset / chunk_elems; c * chunk_elems < end; ++c) {
    const std::int64_t lo = std::max(offset, c * chunk_elems);
    const std::int64_t hi = std::min(end, (c + 1) * chunk_elems);
    pieces.push_back({c, lo - c * chunk_elems, hi - lo, 0});
  }
  const auto* bytes = static_cast<const char*>(data);
  at::parallel_for(0, static_cast<std::int64_t>(pieces.size()), 1, [&](auto begin, auto stop) {
    for (auto i = begin; i < stop; ++i) {
      auto& p = pieces[static_cast<std::size_t>(i)];
      const std::int64_t first = p.chunk * chunk_elems + p.start - offset;
      p.crc = crc32_of(bytes + first * elem_size, p.count * elem_size);
    }
  });
  return pieces;
}

}  // namespace dnpo::ckpt::format
