// Dense 16-bit float W (an unquantized bf16 or f16 checkpoint served as
// stored) times x, accumulated in fp32: kernels.h Dense16Args. Included by
// the per-ISA units after kernels_simd.h; anonymous namespace for the same
// reason as kernels_impl.h.
// bf16: x is rounded to bf16. With AVX512_BF16 one vdpbf16ps multiplies 32
// columns (adjacent pairs per fp32 lane, so W and x stay in natural order);
// without it W is widened to fp32 (a shift by 16) and multiplied by FMA with
// the bf16-rounded x, the same exact products in the same fp32 sums as the
// scalar reference up to reassociation.
// f16: W is widened to fp32 (F16C's vcvtph2ps, exact) and multiplied by FMA
// with x as it is: fp32 arithmetic on the stored weights.
#ifndef WQ_COMMON_KERNELS_DENSE_BF16_H_
#define WQ_COMMON_KERNELS_DENSE_BF16_H_

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "common/formats/bf16.h"
#include "common/kernels/kernels.h"
#include "common/kernels/kernels_impl.h"
#include "common/kernels/kernels_simd.h"

namespace wq {
namespace kernels {
namespace {

// V::kLanes bf16 values widened to V's fp32 lanes.
template <class V>
inline typename V::F WidenBf16(const uint16_t* p) {
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(p);
#ifdef __AVX512F__
  if constexpr (V::kLanes == 16) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes))), 16));
  } else
#endif
  {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes))), 16));
  }
}

// V::kLanes f16 values converted to V's fp32 lanes.
template <class V>
inline typename V::F WidenF16(const uint16_t* p) {
#ifdef __AVX512F__
  if constexpr (V::kLanes == 16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else
#endif
  {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
}

// One multiply-accumulate step over kCols columns: W widened to fp32 lanes
// and FMA with x as bf16-rounded floats.
template <class V>
struct WidenBf16Step {
  using Acc = typename V::F;
  using WVec = typename V::F;
  using XVec = typename V::F;
  static constexpr int kCols = V::kLanes;
  static constexpr int kNr = V::kNr;  // x rows in registers at once
  static Acc Zero() { return V::Zero(); }
  static WVec LoadW(const uint16_t* p) { return WidenBf16<V>(p); }
  // x at column k: as floats (xb, null for f16, is not read).
  static XVec LoadX(const float* xf, const uint16_t*, int64_t k) { return V::Load(xf + k); }
  static Acc Mac(Acc acc, WVec w, XVec x) { return V::Fma(w, x, acc); }
  static float Sum(Acc acc) { return V::Sum(acc); }
  static float Scalar(uint16_t w) { return Bf16ToFloat(w); }
};

// The same for f16 W and x as it is.
template <class V>
struct WidenF16Step : WidenBf16Step<V> {
  static typename V::F LoadW(const uint16_t* p) { return WidenF16<V>(p); }
  static float Scalar(uint16_t w) { return F16ToFloat(w); }
};

#ifdef __AVX512BF16__
// vdpbf16ps: 16 lanes, each adding the products of two adjacent columns.
struct Dpbf16Step {
  using Acc = __m512;
  using WVec = __m512bh;
  using XVec = __m512bh;
  static constexpr int kCols = 32;
  static constexpr int kNr = 4;  // 4 x 4 accumulators + 4 x + 1 w of 32 zmm
  static Acc Zero() { return _mm512_setzero_ps(); }
  static WVec LoadW(const uint16_t* p) {
    return reinterpret_cast<__m512bh>(_mm512_loadu_si512(p));
  }
  static XVec LoadX(const float*, const uint16_t* xb, int64_t k) {
    return reinterpret_cast<__m512bh>(_mm512_loadu_si512(xb + k));
  }
  static Acc Mac(Acc acc, WVec w, XVec x) { return _mm512_dpbf16_ps(acc, w, x); }
  static float Sum(Acc acc) { return _mm512_reduce_add_ps(acc); }
  static float Scalar(uint16_t w) { return Bf16ToFloat(w); }
};
#endif  // __AVX512BF16__

// out[j][t] = dot(w[j], x row t) over columns [0, len), len a multiple of
// S::kCols: R rows of W by NR rows of x in registers.
template <class S, int R, int NR>
inline void Dense16Micro(const uint16_t* const* w, const float* const* xf,
                           const uint16_t* const* xb, int64_t len, float (*out)[S::kNr]) {
  typename S::Acc acc[R][NR];
  #pragma GCC unroll 8
  for (int j = 0; j < R; ++j)
    #pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) acc[j][t] = S::Zero();
  for (int64_t k = 0; k < len; k += S::kCols) {
    typename S::XVec xv[NR];
    #pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) xv[t] = S::LoadX(xf[t], xb[t], k);
    #pragma GCC unroll 8
    for (int j = 0; j < R; ++j) {
      const typename S::WVec wv = S::LoadW(w[j] + k);
      #pragma GCC unroll 8
      for (int t = 0; t < NR; ++t) acc[j][t] = S::Mac(acc[j][t], wv, xv[t]);
    }
  }
  #pragma GCC unroll 8
  for (int j = 0; j < R; ++j)
    #pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) out[j][t] = S::Sum(acc[j][t]);
}

// y rows [r0, r1) of a dense 16-bit product; columns past the last whole
// S::kCols step in scalar fp32 as the reference does.
template <class S>
void Dense16Rows(const Dense16Args& a, int64_t r0, int64_t r1) {
  const int64_t len = a.cols / S::kCols * S::kCols;
  for (int64_t r = r0; r < r1; r += kRowBlock) {
    const int rb = static_cast<int>(std::min<int64_t>(kRowBlock, r1 - r));
    const uint16_t* wr[kRowBlock];
    for (int j = 0; j < rb; ++j) wr[j] = a.w + (r + j) * a.cols;
    for (int64_t i0 = 0; i0 < a.n; i0 += S::kNr) {
      const int nb = static_cast<int>(std::min<int64_t>(S::kNr, a.n - i0));
      const float* xf[S::kNr];
      const uint16_t* xb[S::kNr];
      for (int t = 0; t < nb; ++t) {
        xf[t] = a.xf + (i0 + t) * a.cols;
        xb[t] = a.xb16 != nullptr ? a.xb16 + (i0 + t) * a.cols : nullptr;
      }
      float out[kRowBlock][S::kNr];
      WithCount<kRowBlock>(rb, [&](auto r_const) {
        WithCount<S::kNr>(nb, [&](auto nr_const) {
          Dense16Micro<S, decltype(r_const)::value, decltype(nr_const)::value>(wr, xf, xb,
                                                                                 len, out);
        });
      });
      for (int j = 0; j < rb; ++j) {
        for (int t = 0; t < nb; ++t) {
          float s = out[j][t];
          for (int64_t k = len; k < a.cols; ++k) s += S::Scalar(wr[j][k]) * xf[t][k];
          a.y[(i0 + t) * a.rows + r + j] = s;
        }
      }
    }
  }
}

// The table with its dense 16-bit entries: bf16 by vdpbf16ps where this
// unit is compiled for AVX512_BF16, else widening to V's fp32 lanes; f16 by
// widening.
template <class V>
constexpr KernelTable WithDense16(KernelTable t) {
#ifdef __AVX512BF16__
  t.dense_bf16_rows = &Dense16Rows<Dpbf16Step>;
#else
  t.dense_bf16_rows = &Dense16Rows<WidenBf16Step<V>>;
#endif
  t.dense_f16_rows = &Dense16Rows<WidenF16Step<V>>;
  return t;
}

}  // namespace
}  // namespace kernels
}  // namespace wq

#endif  // WQ_COMMON_KERNELS_DENSE_BF16_H_
