// bfloat16 and IEEE half (f16) <-> fp32, the one conversion the file reader,
// the writers, the scale encoding and the KV cache share.
#ifndef WQ_COMMON_BF16_H_
#define WQ_COMMON_BF16_H_

#include <cmath>
#include <cstdint>
#include <cstring>

namespace wq {

// Rounds to nearest even; NaN stays NaN (quieted, so truncation cannot turn
// it into an infinity).
inline uint16_t FloatToBf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if (std::isnan(x)) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

inline float Bf16ToFloat(uint16_t x) {
  const uint32_t u = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// IEEE binary16 -> fp32, exact (subnormals included; NaN and inf keep
// their payload).
inline float F16ToFloat(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000) << 16;
  const uint32_t exponent = (half >> 10) & 0x1f;
  uint32_t mantissa = half & 0x3ff;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {  // Normal: rebias 15 -> 127.
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // A subnormal half is a normal float: renormalise.
    int shift = 0;
    while ((mantissa & 0x400) == 0) {
      mantissa <<= 1;
      ++shift;
    }
    mantissa &= 0x3ff;
    bits = sign | (static_cast<uint32_t>(113 - shift) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// fp32 -> IEEE binary16, round to nearest even: beyond 65504 (from 65520 on)
// it is an infinity, below 2^-14 a subnormal or zero; NaN stays a quiet NaN.
// (F. Giesen's float_to_half_fast3_rtne; relies on the default rounding mode.)
inline uint16_t FloatToF16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  u &= 0x7fffffffu;
  if (u >= (143u << 23)) {  // >= 65536 (after rounding, inf) or NaN
    return sign | (u > 0x7f800000u ? 0x7e00 : 0x7c00);
  }
  if (u < (113u << 23)) {  // below 2^-14: adding 0.5 rounds to the subnormal grid
    constexpr uint32_t kMagicBits = ((127 - 15) + (23 - 10) + 1) << 23;
    float f, magic;
    std::memcpy(&f, &u, sizeof(f));
    std::memcpy(&magic, &kMagicBits, sizeof(magic));
    f += magic;
    uint32_t r;
    std::memcpy(&r, &f, sizeof(r));
    return sign | static_cast<uint16_t>(r - kMagicBits);
  }
  const uint32_t mantissa_odd = (u >> 13) & 1;
  u += (static_cast<uint32_t>(15 - 127) << 23) + 0xfff + mantissa_odd;
  return sign | static_cast<uint16_t>(u >> 13);
}

}  // namespace wq

#endif  // WQ_COMMON_BF16_H_
