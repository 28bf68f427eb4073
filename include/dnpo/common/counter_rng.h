// Counter-based random draws: every number is a pure function of a key tuple and an index, so the
// same draw comes out whatever the world size, chunking or thread count (DESIGN.md, ALGORITHM.md §3).
// No torch here; model/ fills tensors from these functions.
#pragma once

#include <cmath>
#include <cstdint>

namespace dnpo {

/// Stream ids keep independent uses of one key apart.
enum class RandomStream : std::uint64_t {
  kNoiseEps1 = 1,   ///< NPO model-loss noise ε1
  kNoiseEps2 = 2,   ///< NPO noise-loss noise ε2
  kSampling = 3,    ///< token sampling during generation
  kInit = 4,        ///< parameter initialisation
  kShuffle = 5,     ///< data order per epoch
};

/// SplitMix64 finaliser: a bijective 64-bit mixer with good avalanche.
constexpr std::uint64_t mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30U)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27U)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31U);
}

/// Folds one more field into a key (order matters).
constexpr std::uint64_t fold_key(std::uint64_t key, std::uint64_t field) {
  return mix64(key ^ mix64(field + 0x632BE59BD9B4E019ULL));
}

/// Key of the draws for one (seed, iteration, step, global sample, position, stream).
constexpr std::uint64_t draw_key(std::uint64_t seed,
                                 std::uint64_t iteration,
                                 std::uint64_t step,
                                 std::uint64_t sample,
                                 std::uint64_t position,
                                 RandomStream stream) {
  std::uint64_t key = mix64(seed);
  key = fold_key(key, iteration);
  key = fold_key(key, step);
  key = fold_key(key, sample);
  key = fold_key(key, position);
  return fold_key(key, static_cast<std::uint64_t>(stream));
}

/// Uniform in [0, 1) with 53 random bits: the index-th draw of a key.
inline double uniform01(std::uint64_t key, std::uint64_t index) {
  return static_cast<double>(mix64(key ^ mix64(index)) >> 11U) * 0x1.0p-53;
}

/// Standard normal via Box–Muller on draws (2·index, 2·index+1); index-th normal of a key.
inline double standard_normal(std::uint64_t key, std::uint64_t index) {
  const double u1 = 1.0 - uniform01(key, 2 * index);  // (0, 1]: log is finite
  const double u2 = uniform01(key, 2 * index + 1);
  constexpr double kTwoPi = 6.283185307179586;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(kTwoPi * u2);
}

}  // namespace dnpo
