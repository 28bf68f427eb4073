// Integers out of checkpoint JSON. nlohmann converts any number with a cast, and a float out of
// the target's range is undefined behaviour (fuzz_checkpoint found it), so a field that must be
// an integer is checked to be one, in range, first. Used by every blob a loop keeps in its
// checkpoints (train's position, selfplay's state).
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "dnpo/common/error.h"

namespace dnpo::train::detail {

/// `v` as an Int; CheckpointError naming `what` unless it is an integer that Int holds.
template <typename Int>
Int checked_integer(const nlohmann::json& v, const std::string& what) {
  bool fits = false;
  if (v.is_number_unsigned()) {
    fits = v.get<std::uint64_t>() <= static_cast<std::uint64_t>(std::numeric_limits<Int>::max());
  } else if (v.is_number_integer()) {
    fits = std::is_signed_v<Int> || v.get<std::int64_t>() >= 0;
  }
  if (!fits) {
    throw CheckpointError(what + ": expected an integer " + (std::is_signed_v<Int> ? "" : ">= 0 ") +
                          "that fits " + std::to_string(sizeof(Int) * 8) + " bits, got " +
                          v.dump());
  }
  return v.get<Int>();
}

}  // namespace dnpo::train::detail
