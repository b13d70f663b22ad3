// Narrow floating-point formats stored as bits, with conversions to and from float.
//   bf16:   1 sign, 8 exponent, 7 mantissa (the top half of an f32); round to nearest even.
//   f16:    IEEE 754 binary16.
//   f8e4m3: 1-4-3, bias 7, no infinities, 0x7f/0xff = NaN, max 448 (OCP "E4M3FN"); saturating.
//   f8e5m2: 1-5-2, bias 15, IEEE-like with infinities, max 57344.
// fp8 types are for storage and GPU GEMMs; CPU kernels compute in f32.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace weir {

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  // Branch-free, so loops that narrow to bf16 vectorize.
  explicit bf16(float f) {
    uint32_t u = FloatBits(f);
    uint32_t rounded = (u + 0x7fff + ((u >> 16) & 1)) >> 16;  // round to nearest, ties to even
    uint32_t quiet_nan = (u >> 16) | 0x40;                    // keep a NaN a (quiet) NaN
    bits = static_cast<uint16_t>(f != f ? quiet_nan : rounded);
  }
  explicit operator float() const { return BitsFloat(static_cast<uint32_t>(bits) << 16); }
};

struct f16 {
  uint16_t bits = 0;
  f16() = default;
  explicit f16(float f) : bits(FromFloat(f)) {}
  explicit operator float() const { return ToFloat(bits); }

  static uint16_t FromFloat(float f);
  static float ToFloat(uint16_t h);
};

struct f8e4m3 {
  uint8_t bits = 0;
  f8e4m3() = default;
  explicit f8e4m3(float f);
  explicit operator float() const;
};

struct f8e5m2 {
  uint8_t bits = 0;
  f8e5m2() = default;
  explicit f8e5m2(float f);
  explicit operator float() const;
};

}  // namespace weir
