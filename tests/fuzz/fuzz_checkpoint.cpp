// What dnpo itself reads out of a checkpoint file (libhdf5's own parsing is not the target): the
// training loop's "loop" blob, the self-play loop's "selfplay" blob, and the sizes the file
// declares (dataset extents checked against the file's size, checksum chunking). The first byte
// picks the part, the rest is its input. Accepted blobs must round-trip exactly.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../../src/ckpt/extent.h"
#include "../../src/selfplay/selfplay_state.h"
#include "dnpo/data/tokenizer.h"
#include "dnpo/train/loop_position.h"
#include "fuzz_common.h"

namespace {

using dnpo::fuzz::expect_clean;
using dnpo::fuzz::require;

void loop_blob(const std::string& text) {
  expect_clean([&] {
    const auto p = dnpo::train::parse_loop_position(text, "fuzz.h5");
    const auto again =
        dnpo::train::parse_loop_position(dnpo::train::loop_position_text(p), "fuzz.h5");
    require(dnpo::train::loop_position_text(again) == dnpo::train::loop_position_text(p),
            "an accepted loop blob round-trips");
    require(p.steps_done >= 0 && p.steps_done <= p.total_steps, "steps done within the stage");
  });
}

void selfplay_blob(const std::string& text) {
  static const dnpo::data::ByteTokenizer tokenizer;
  expect_clean([&] {
    dnpo::selfplay::detail::LoopState state({"q0", "q1", "q2"});
    dnpo::selfplay::detail::restore_state(text, "fuzz.h5", tokenizer, state);
    const auto dumped = dnpo::selfplay::detail::state_json(state).dump();
    dnpo::selfplay::detail::LoopState again({"q0", "q1", "q2"});
    dnpo::selfplay::detail::restore_state(dumped, "fuzz.h5", tokenizer, again);
    require(dnpo::selfplay::detail::state_json(again).dump() == dumped,
            "an accepted self-play blob round-trips");
  });
}

// Little-endian integers from the front of the input, zero past its end.
struct Cursor {
  const std::uint8_t* data;
  std::size_t size;
  std::uint64_t take(std::size_t bytes) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < bytes && i < size; ++i) {
      v |= static_cast<std::uint64_t>(data[i]) << (8 * i);
    }
    const std::size_t used = bytes < size ? bytes : size;
    data += used;
    size -= used;
    return v;
  }
};

void extents(Cursor in) {
  const auto elem_bytes = static_cast<std::int64_t>(in.take(1) % 9);  // 0..8, 0 is invalid
  const auto file_bytes = in.take(8);
  std::vector<std::uint64_t> dims(in.take(1) % 6);
  for (auto& d : dims) {
    d = in.take(8);
  }
  std::vector<std::uint64_t> crc_dims(in.take(1) % 3);
  for (auto& d : crc_dims) {
    d = in.take(8);
  }
  const auto chunk_elems = static_cast<std::int64_t>(in.take(8));
  expect_clean([&] {
    const auto shape = dnpo::ckpt::extent::checked_shape(dims, elem_bytes, file_bytes, "fuzz.h5");
    const long double bytes = static_cast<long double>(dnpo::ckpt::extent::numel_of(shape)) *
                              static_cast<long double>(elem_bytes);
    require(bytes <= static_cast<long double>(file_bytes), "accepted data fits in the file");
    const auto crc_shape =
        dnpo::ckpt::extent::checked_shape(crc_dims, 4, file_bytes, "fuzz.h5 checksums");
    dnpo::ckpt::extent::check_checksums(shape, crc_shape, chunk_elems, "fuzz.h5");
    const auto chunks = static_cast<__int128>(crc_shape.at(0));
    const auto numel = static_cast<__int128>(dnpo::ckpt::extent::numel_of(shape));
    require(chunks * chunk_elems >= numel && (chunks == 0 || (chunks - 1) * chunk_elems < numel),
            "one checksum per chunk");
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) {
    return 0;
  }
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0:
      loop_blob(body);
      break;
    case 1:
      selfplay_blob(body);
      break;
    default:
      extents(Cursor{data + 1, size - 1});
      break;
  }
  return 0;
}
