// Transcendentals for kernels. std::exp is a libm call per element, which the compiler cannot
// vectorize; FastExp is branch-free float arithmetic that it can, accurate to about 2 ulp (the
// Cephes expf polynomial on x − n·ln2, scaled by 2^n built from the exponent bits).
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace weir {

inline float FastExp(float x) {
  constexpr float kMax = 88.3762626647949f, kMin = -87.3365447504019f;
  float clamped = std::min(std::max(x, kMin), kMax);
  // n = round(x / ln2) by adding and subtracting 1.5·2^23 (round to nearest, no libm call).
  constexpr float kRound = 12582912.0f;
  float n = (clamped * 1.44269504088896341f + kRound) - kRound;
  // r = x − n·ln2 in two parts, so r keeps its low bits.
  float r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  float y = p * scale;
  y = x < kMin ? 0.0f : y;  // underflow (and −∞, a masked score) is exactly 0
  y = x > kMax ? INFINITY : y;
  return x != x ? x : y;  // NaN stays NaN
}

// exp in the accumulator type of a kernel: FastExp for float, std::exp for double (gradient
// checks want the exact function).
template <typename A>
inline A Exp(A x) {
  if constexpr (std::is_same_v<A, float>) {
    return FastExp(x);
  } else {
    return std::exp(x);
  }
}

}  // namespace weir
