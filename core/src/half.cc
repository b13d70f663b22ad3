#include "weir/half.h"

#include <algorithm>
#include <limits>

namespace weir {
namespace {

// Encodes a finite f >= 0 in a float format with `mant` mantissa bits and exponent bias `bias`,
// rounding to nearest even (subnormals included). Returns the magnitude bits, or `overflow` when
// the rounded value exceeds `max`.
uint32_t RoundToFormat(float f, int mant, int bias, float max, uint32_t overflow) {
  if (f == 0.0f) return 0;
  int exp;
  std::frexp(f, &exp);  // f = frac * 2^exp, frac in [0.5, 1)
  // The value of the last mantissa bit: normals use their exponent, subnormals the minimum one.
  int ulp_exp = std::max(exp - 1, 1 - bias) - mant;
  float r = std::ldexp(std::nearbyint(std::ldexp(f, -ulp_exp)), ulp_exp);
  if (r > max) return overflow;
  if (r == 0.0f) return 0;
  std::frexp(r, &exp);
  int e = exp - 1 + bias;
  if (e < 1) return static_cast<uint32_t>(std::ldexp(r, bias - 1 + mant));  // subnormal
  uint32_t m = static_cast<uint32_t>(std::ldexp(r, mant - (exp - 1))) - (1u << mant);
  return (static_cast<uint32_t>(e) << mant) | m;
}

float FromFormat(uint32_t mag, int mant, int bias) {
  uint32_t e = mag >> mant;
  uint32_t m = mag & ((1u << mant) - 1);
  if (e == 0) return std::ldexp(static_cast<float>(m), 1 - bias - mant);
  return std::ldexp(static_cast<float>(m | (1u << mant)), static_cast<int>(e) - bias - mant);
}

}  // namespace

uint16_t f16::FromFloat(float f) {
  uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return 0x7e00;
  float a = std::fabs(f);
  if (std::isinf(a)) return sign | 0x7c00;
  return sign | static_cast<uint16_t>(RoundToFormat(a, 10, 15, 65504.0f, 0x7c00));
}

float f16::ToFloat(uint16_t h) {
  float sign = (h & 0x8000) ? -1.0f : 1.0f;
  uint32_t mag = h & 0x7fff;
  if ((mag >> 10) == 0x1f) {
    return (mag & 0x3ff) ? std::numeric_limits<float>::quiet_NaN()
                         : sign * std::numeric_limits<float>::infinity();
  }
  return sign * FromFormat(mag, 10, 15);
}

f8e4m3::f8e4m3(float f) {
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  if (std::isnan(f)) {
    bits = 0x7f;
    return;
  }
  // Saturate: e4m3 has no infinity; values past 448 clamp to 448 (0x7e).
  float a = std::min(std::fabs(f), 448.0f);
  bits = sign | static_cast<uint8_t>(RoundToFormat(a, 3, 7, 448.0f, 0x7e));
}

f8e4m3::operator float() const {
  float sign = (bits & 0x80) ? -1.0f : 1.0f;
  uint32_t mag = bits & 0x7f;
  if (mag == 0x7f) return std::numeric_limits<float>::quiet_NaN();
  return sign * FromFormat(mag, 3, 7);
}

f8e5m2::f8e5m2(float f) {
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  if (std::isnan(f)) {
    bits = 0x7f;
    return;
  }
  float a = std::fabs(f);
  if (std::isinf(a)) {
    bits = sign | 0x7c;
    return;
  }
  bits = sign | static_cast<uint8_t>(RoundToFormat(a, 2, 15, 57344.0f, 0x7c));
}

f8e5m2::operator float() const {
  float sign = (bits & 0x80) ? -1.0f : 1.0f;
  uint32_t mag = bits & 0x7f;
  if ((mag >> 2) == 0x1f) {
    return (mag & 3) ? std::numeric_limits<float>::quiet_NaN()
                     : sign * std::numeric_limits<float>::infinity();
  }
  return sign * FromFormat(mag, 2, 15);
}

}  // namespace weir
