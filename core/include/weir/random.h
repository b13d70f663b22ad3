// Counter-based randomness: a value that depends only on (seed, position), so results do not
// change with batch boundaries, threads or resumption.
#pragma once

#include <cstdint>

namespace weir {

// SplitMix64's finalizer: a well-mixed 64-bit hash.
inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A uniform double in [0, 1) from a hash.
inline double UnitInterval(uint64_t hash) { return static_cast<double>(hash >> 11) * 0x1.0p-53; }

}  // namespace weir
