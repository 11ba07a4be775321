// Vector traits for kernels_impl.h: fp32 lanes (V*) and int8 dot products
// (Dot*). Included only by the per-ISA units (kernels_isa.cc,
// kernels_amx.cc); the anonymous namespace keeps
// each unit's copies private (see kernels_impl.h).
#ifndef WQ_COMMON_KERNELS_SIMD_H_
#define WQ_COMMON_KERNELS_SIMD_H_

#include <immintrin.h>

#include <cstdint>

#include "common/kernels/kernels_impl.h"

namespace wq {
namespace kernels {
namespace {

// AVX2 + FMA: 8 fp32 lanes.
struct VecYmm {
  using F = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kNr = 2;  // 16 ymm registers: 4x2 accumulators.
  static F Zero() { return _mm256_setzero_ps(); }
  static F Set1(float v) { return _mm256_set1_ps(v); }
  static F Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F Fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F Add(F a, F b) { return _mm256_add_ps(a, b); }
  static F Sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F Mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static float Sum(F v) { return Hsum256(v); }
};

#ifdef __AVX512F__
// AVX-512: 16 fp32 lanes.
struct VecZmm {
  using F = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kNr = 3;  // 32 zmm registers: 4x3 accumulators.
  static F Zero() { return _mm512_setzero_ps(); }
  static F Set1(float v) { return _mm512_set1_ps(v); }
  static F Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F Fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F Add(F a, F b) { return _mm512_add_ps(a, b); }
  static F Sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F Mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static float Sum(F v) { return _mm512_reduce_add_ps(v); }
};
#endif  // __AVX512F__

// AVX2: vpmaddubsw needs an unsigned operand and saturates int16 pairs, so
// weights are biased to s8 (u - 128) and the sign moves onto the activation:
// |w| * sign(a, w) <= 128 * 127 * 2 fits int16.
// kNt: rows of x per int8 tile (kernels_impl.h Int8Tile), sized so that
// the 2 x kNt accumulators and the decode temporaries fit the register file
// (16 ymm, 32 with AVX-512). DotX4(acc, w, x4): acc + the 4-byte dot
// products of w with the 4 activation bytes at x4, broadcast.
// kWide: a second kernel register type covering two row tiles
// (kernels_impl.h TilePairZmm), named Wide. kStreamPairs: one x row runs
// on Wide too, with prefetch (kernels_impl.h Int8Rows).
struct DotAvx2 {
  static constexpr bool kSignedWeights = true;
  static constexpr bool kWide = false;
  static constexpr bool kStreamPairs = false;
  static constexpr int kNt = 4;
  static __m256i DotX4(__m256i acc, __m256i w, const int8_t* x4) {
    const __m256i a = BroadcastX4(x4);
    const __m256i p =
        _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(a, w));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
  }
};

#ifdef __AVXVNNI__
struct DotAvxVnni {
  static constexpr bool kSignedWeights = false;
  static constexpr bool kWide = false;
  static constexpr bool kStreamPairs = false;
  static constexpr int kNt = 5;
  static __m256i DotX4(__m256i acc, __m256i w, const int8_t* x4) {
    return _mm256_dpbusd_avx_epi32(acc, w, BroadcastX4(x4));
  }
};
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
struct DotAvx512Vnni {
  static constexpr bool kSignedWeights = false;
  static constexpr bool kWide = true;
  static constexpr bool kStreamPairs = false;
  using Wide = TilePairZmm;
  static constexpr int kNt = 8;
  static __m256i DotX4(__m256i acc, __m256i w, const int8_t* x4) {
    __asm__("vpdpbusd %2%{1to8%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*reinterpret_cast<const int32_t*>(x4)));
    return acc;
  }
};
#endif

}  // namespace
}  // namespace kernels
}  // namespace wq

#endif  // WQ_COMMON_KERNELS_SIMD_H_
