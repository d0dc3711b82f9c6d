// SplitMix64 (Steele, Lea & Flood 2014), the counter-based mixer the federated code draws its
// reproducible per-(seed, round, client, element) randomness from.
#pragma once

#include <cstdint>

namespace cleave::federated {

// The SplitMix64 step and finalizer: Mix(base + i * kSplitMixGamma) is element i of the
// stream at `base`, so any element can be drawn without the ones before it.
constexpr uint64_t kSplitMixGamma = 0x9e3779b97f4a7c15ULL;
inline uint64_t SplitMix64(uint64_t x) {
  x += kSplitMixGamma;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The top 53 bits of `bits` as a double uniform in [0, 1).
inline double Uniform01(uint64_t bits) { return (bits >> 11) * (1.0 / 9007199254740992.0); }

}  // namespace cleave::federated
