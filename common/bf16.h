// bfloat16 <-> fp32, the one conversion the file reader, the scale encoding
// and the KV cache share.
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

}  // namespace wq

#endif  // WQ_COMMON_BF16_H_
