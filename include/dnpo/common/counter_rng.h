// Counter-based random draws: every number is a pure function of a key tuple and an index, so the
// same draw comes out whatever the world size, chunking or thread count (docs/algorithm.md,
// "Random draws"). No torch here; model/ fills tensors from these functions.
#pragma once

#include <cmath>
#include <cstdint>

namespace dnpo {

/// Stream ids keep independent uses of one key apart.
enum class RandomStream : std::uint64_t {
  kNoiseEps1 = 1,  ///< NPO model-loss noise ε1
  kNoiseEps2 = 2,  ///< NPO noise-loss noise ε2
  kSampling = 3,   ///< token sampling during generation
  kInit = 4,       ///< parameter initialisation
  kShuffle = 5,    ///< data order per epoch
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

/// The index-th 64 random bits of a key: SplitMix64's sequence started at the key.
constexpr std::uint64_t random_bits(std::uint64_t key, std::uint64_t index) {
  return mix64(key + index * 0x9E3779B97F4A7C15ULL);
}

/// Uniform in [0, 1) with 53 random bits: the index-th draw of a key.
inline double uniform01(std::uint64_t key, std::uint64_t index) {
  return static_cast<double>(random_bits(key, index) >> 11U) * 0x1.0p-53;
}

/// The two uniforms of Box–Muller pair p, as 24-bit floats: u1 in (0, 1] (log is finite),
/// u2 in [0, 1). model/random.cpp computes the same numbers vectorised.
inline void box_muller_uniforms(std::uint64_t key, std::uint64_t pair, float& u1, float& u2) {
  const auto bits1 = random_bits(key, 2 * pair);
  const auto bits2 = random_bits(key, 2 * pair + 1);
  u1 = static_cast<float>((bits1 >> 40U) + 1) * 0x1.0p-24F;
  u2 = static_cast<float>(bits2 >> 40U) * 0x1.0p-24F;
}

/// Standard normal: normals 2p and 2p+1 are r·cos θ and r·sin θ of Box–Muller pair p.
inline double standard_normal(std::uint64_t key, std::uint64_t index) {
  float u1 = 0;
  float u2 = 0;
  box_muller_uniforms(key, index / 2, u1, u2);
  constexpr float kTwoPi = 6.2831853F;
  const float r = std::sqrt(-2.0F * std::log(u1));
  const float theta = kTwoPi * u2;
  return index % 2 == 0 ? r * std::cos(theta) : r * std::sin(theta);
}

}  // namespace dnpo
