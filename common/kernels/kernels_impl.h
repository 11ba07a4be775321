// Kernel bodies shared by the per-ISA translation units. Each (kernels_isa.cc
// per row of KERNEL_ISAS, kernels_amx.cc) builds its KernelTable with
// MakeTable<V, Q>(), V a vector-traits struct (float lanes) and Q an int8
// dot traits struct, both from kernels_simd.h; the weight codes unpack as
// their width's CodeTraits (code_traits.h) say.
//
// Everything here is in an anonymous namespace on purpose: each unit is
// compiled with different -m flags, so its instantiations must stay private to
// it (a shared inline symbol could let the linker keep an AVX-512 copy for an
// AVX2 caller). Only AVX2 intrinsics are used outside the traits, except in
// the blocks guarded by the AVX-512 feature macros of the unit's -m flags.
#ifndef WQ_COMMON_KERNELS_IMPL_H_
#define WQ_COMMON_KERNELS_IMPL_H_

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "common/kernels/code_traits.h"
#include "common/kernels/kernels.h"
#include "common/kernels/kernels_gemm.h"

namespace wq {
namespace kernels {
namespace {

// Loops over the R rows of a row block (and the NR rows of x) carry `#pragma
// GCC unroll`: rolled, GCC keeps the per-row accumulator arrays in memory and
// the kernels run at a quarter of their speed.

// Rows of W handled together: their accumulators hide FMA latency and share
// the activation loads.
constexpr int kRowBlock = 4;

// malloc-backed float scratch (no std:: container instantiated per ISA).
class Scratch {
 public:
  explicit Scratch(int64_t count)
      : p_(static_cast<float*>(std::aligned_alloc(
            64, static_cast<size_t>((count * 4 + 63) / 64 * 64)))) {}
  ~Scratch() { std::free(p_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* get() const { return p_; }

 private:
  float* p_;
};

// Calls f(std::integral_constant<int, k>) for the runtime k in [1, kMax].
template <int kMax, typename F>
inline void WithCount(int k, F&& f) {
  if constexpr (kMax >= 1) {
    if (k == kMax) return f(std::integral_constant<int, kMax>());
    WithCount<kMax - 1>(k, f);
  }
}

inline float Hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// ---------------------------------------------------------------------------
// fp32 microkernel: out[j][t] = dot(w[j][0:len), x[t][0:len)), len a multiple
// of V::kLanes. R rows of W x NR rows of x in registers.
template <class V, int R, int NR>
inline void Micro(const float* const* w, const float* const* x, int64_t len,
                  float (*out)[V::kNr]) {
  typename V::F acc[R][NR];
  #pragma GCC unroll 8
  for (int j = 0; j < R; ++j)
    #pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) acc[j][t] = V::Zero();
  for (int64_t k = 0; k < len; k += V::kLanes) {
    typename V::F xv[NR];
    #pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) xv[t] = V::Load(x[t] + k);
    #pragma GCC unroll 8
    for (int j = 0; j < R; ++j) {
      const typename V::F wv = V::Load(w[j] + k);
      #pragma GCC unroll 8
      for (int t = 0; t < NR; ++t) acc[j][t] = V::Fma(wv, xv[t], acc[j][t]);
    }
  }
  #pragma GCC unroll 8
  for (int j = 0; j < R; ++j)
    #pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) out[j][t] = V::Sum(acc[j][t]);
}

// y[i, r0 + j] = dot(w[j], x[i]) over [0, len) for j < rb, all i < n, where w
// holds rb row pointers (rb <= kRowBlock) and x rows have stride ldx.
template <class V>
void TileTimesX(const float* const* w, int rb, const float* x, int64_t ldx,
                int64_t n, int64_t len, float* y, int64_t ldy, int64_t r0) {
  const float* xr[V::kNr];
  for (int64_t i0 = 0; i0 < n; i0 += V::kNr) {
    const int nb = static_cast<int>(std::min<int64_t>(V::kNr, n - i0));
    for (int t = 0; t < nb; ++t) xr[t] = x + (i0 + t) * ldx;
    float out[kRowBlock][V::kNr];
    WithCount<kRowBlock>(rb, [&](auto r_const) {
      WithCount<V::kNr>(nb, [&](auto nr_const) {
        Micro<V, decltype(r_const)::value, decltype(nr_const)::value>(
            w, xr, len, out);
      });
    });
    for (int j = 0; j < rb; ++j)
      for (int t = 0; t < nb; ++t) y[(i0 + t) * ldy + r0 + j] = out[j][t];
  }
}

template <class V>
void F32Rows(const float* w, int64_t rows, int64_t cols, const float* x,
             int64_t n, float* y, int64_t r0, int64_t r1) {
  const int64_t len = cols / V::kLanes * V::kLanes;
  for (int64_t r = r0; r < r1; r += kRowBlock) {
    const int rb = static_cast<int>(std::min<int64_t>(kRowBlock, r1 - r));
    const float* wr[kRowBlock];
    for (int j = 0; j < rb; ++j) wr[j] = w + (r + j) * cols;
    TileTimesX<V>(wr, rb, x, cols, n, len, y, rows, r);
    if (len == cols) continue;
    for (int64_t i = 0; i < n; ++i) {
      for (int j = 0; j < rb; ++j) {
        float s = 0.0f;
        for (int64_t k = len; k < cols; ++k) s += wr[j][k] * x[i * cols + k];
        y[i * rows + r + j] += s;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// int8 compute over PackedInt8Weights (kernels.h): u8 (or, for
// Q::kSignedWeights, u8 - 128 as s8) weight levels times s8 activations,
// exact int32 dots per 32-block, then per group
// y += s * (sum_b d_b * dot_b) - s * off * xs_g.
// One 32-bit lane per W row, so a dot with 4 broadcast activation bytes
// advances every row of the register by 4 columns and the float epilogue
// runs once per register of rows and block. T rows of x share each decoded
// chunk.

// The 4 activation bytes at x4 in every dword lane. EVEX vpdpbusd takes them
// as an embedded broadcast operand instead ({1to16}), which GCC does not emit
// from intrinsics, so those kernels say it in asm: a separate vpbroadcastd
// costs a vector pipe slot (bench/results/kernels.md).
inline __m256i BroadcastX4(const int8_t* x4) {
  int32_t v;
  std::memcpy(&v, x4, 4);
  return _mm256_set1_epi32(v);
}

// Registers of one row tile (8 rows, ymm), for every ISA level.
template <class Q>
struct TileYmm {
  using I = __m256i;
  using F = __m256;
  static constexpr int kTiles = 1;
  static constexpr int kNt = Q::kNt;
  static constexpr int kBf16Nt = Q::kNt;
  static I Codes(const uint8_t* p, int64_t) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static I Table(const uint8_t* t16) {
    return _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(t16)));
  }
  static I Bytes(char v) { return _mm256_set1_epi8(v); }
  static I And(I a, I b) { return _mm256_and_si256(a, b); }
  static I Xor(I a, I b) { return _mm256_xor_si256(a, b); }
  static I High4(I v) { return _mm256_srli_epi16(v, 4); }
  static I Lookup(I table, I u) { return _mm256_shuffle_epi8(table, u); }
  static I ZeroI() { return _mm256_setzero_si256(); }
  static I AddI(I a, I b) { return _mm256_add_epi32(a, b); }
  static I DotX4(I acc, I w, const int8_t* x4) { return Q::DotX4(acc, w, x4); }
  static F Float(I v) { return _mm256_cvtepi32_ps(v); }
  static F Splat(float v) { return _mm256_set1_ps(v); }
  static F ZeroF() { return _mm256_setzero_ps(); }
  static F Add(F a, F b) { return _mm256_add_ps(a, b); }
  static F Mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F Fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F Fnma(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  static F Scales(const uint8_t* p, int64_t) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  }
  // bf16 bits to fp32: a shift into the high half.
  static F ScalesBf16(const uint8_t* p, int64_t) {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  }
  static F Zeros(const uint8_t* p, int64_t) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  // For the float kernels (FloatTile): 32-bit lane shifts and masks, and
  // the 16 levels looked up by a lane's low 4 bits (higher bits ignored).
  template <int kShift>
  static I Shr32(I v) { return _mm256_srli_epi32(v, kShift); }
  static I Dwords(int v) { return _mm256_set1_epi32(v); }
  struct Levels {
    __m256 lo, hi;
  };
  static Levels LevelTable(const float* lut) {
    return {_mm256_loadu_ps(lut), _mm256_loadu_ps(lut + 8)};
  }
  static F Level(const Levels& t, I idx) {
#ifdef __AVX512VL__
    return _mm256_permutex2var_ps(t.lo, idx, t.hi);
#else
    // Bit 3 of the index picks the table half: moved to the sign bit for blendv.
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.lo, idx),
                            _mm256_permutevar8x32_ps(t.hi, idx),
                            _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
#endif
  }
#ifdef __AVX512BF16__
  // Native bf16 (FloatTile kBf16Dot): 16-bit shifts, bytes reordered within
  // each lane, bf16 levels by a word's low 4 bits, and the pair dot product.
  template <int kShift>
  static I Shr16(I v) { return _mm256_srli_epi16(v, kShift); }
  static I Shuffle(I v, I pattern) { return _mm256_shuffle_epi8(v, pattern); }
  static I Bf16Levels(const uint16_t* table32) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table32));
  }
  static I Bf16Level(I table, I idx) { return _mm256_permutexvar_epi16(idx, table); }
  static F DotBf16(F acc, I w, const uint16_t* x2) {
    int32_t pair;
    std::memcpy(&pair, x2, 4);
    return _mm256_dpbf16_ps(acc, reinterpret_cast<__m256bh>(w),
                            reinterpret_cast<__m256bh>(_mm256_set1_epi32(pair)));
  }
#endif
  // The first `count` lanes to y.
  static void Store(float* y, F v, int64_t count) {
    if (count == kTileRows) return _mm256_storeu_ps(y, v);
    alignas(32) float out[kTileRows];
    _mm256_store_ps(out, v);
    for (int64_t j = 0; j < count; ++j) y[j] = out[j];
  }
};

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512DQ__)
// Two consecutive row tiles in one zmm (16 rows): each broadcast activation
// dword and each float epilogue op serves twice the rows, and vpdpbusd zmm
// does twice the work of ymm per instruction on CPUs with a full 512-bit
// datapath.
struct TilePairZmm {
  using I = __m512i;
  using F = __m512;
  static constexpr int kTiles = 2;
  static constexpr int kNt = 8;
  // x rows per FloatTile with bf16 dots: 12 share each decoded column and
  // give 12 independent vdpbf16ps chains (6 cycles latency at 2 per cycle
  // here); GEMM 10-30 % faster than with 8 (bench/results/speed_families.md).
  static constexpr int kBf16Nt = 12;
  static I Codes(const uint8_t* p, int64_t tile_stride) {
    return _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + tile_stride)), 1);
  }
  static I Table(const uint8_t* t16) {
    return _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(t16)));
  }
  static I Bytes(char v) { return _mm512_set1_epi8(v); }
  static I And(I a, I b) { return _mm512_and_si512(a, b); }
  static I Xor(I a, I b) { return _mm512_xor_si512(a, b); }
  static I High4(I v) { return _mm512_srli_epi16(v, 4); }
  static I Lookup(I table, I u) { return _mm512_shuffle_epi8(table, u); }
  static I ZeroI() { return _mm512_setzero_si512(); }
  static I AddI(I a, I b) { return _mm512_add_epi32(a, b); }
  static I DotX4(I acc, I w, const int8_t* x4) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0"
            : "+v"(acc)
            : "v"(w), "m"(*reinterpret_cast<const int32_t*>(x4)));
    return acc;
  }
  static F Float(I v) { return _mm512_cvtepi32_ps(v); }
  static F Splat(float v) { return _mm512_set1_ps(v); }
  static F ZeroF() { return _mm512_setzero_ps(); }
  static F Add(F a, F b) { return _mm512_add_ps(a, b); }
  static F Mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F Fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F Fnma(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  static F Scales(const uint8_t* p, int64_t tile_stride) {
    return _mm512_insertf32x8(
        _mm512_castps256_ps512(_mm256_loadu_ps(reinterpret_cast<const float*>(p))),
        _mm256_loadu_ps(reinterpret_cast<const float*>(p + tile_stride)), 1);
  }
  static F ScalesBf16(const uint8_t* p, int64_t tile_stride) {
    const __m256i bits = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + tile_stride)), 1);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }
  static F Zeros(const uint8_t* p, int64_t tile_stride) {
    const __m128i z = _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)),
                                         _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + tile_stride)));
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(z));
  }
  template <int kShift>
  static I Shr32(I v) { return _mm512_srli_epi32(v, kShift); }
  static I Dwords(int v) { return _mm512_set1_epi32(v); }
  using Levels = __m512;
  static Levels LevelTable(const float* lut) { return _mm512_loadu_ps(lut); }
  static F Level(const Levels& t, I idx) { return _mm512_permutexvar_ps(idx, t); }
#ifdef __AVX512BF16__
  template <int kShift>
  static I Shr16(I v) { return _mm512_srli_epi16(v, kShift); }
  static I Shuffle(I v, I pattern) { return _mm512_shuffle_epi8(v, pattern); }
  // 32 words: vpermw zmm reads a word's low 5 bits.
  static I Bf16Levels(const uint16_t* table32) { return _mm512_loadu_si512(table32); }
  static I Bf16Level(I table, I idx) { return _mm512_permutexvar_epi16(idx, table); }
  static F DotBf16(F acc, I w, const uint16_t* x2) {
    int32_t pair;
    std::memcpy(&pair, x2, 4);
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(w),
                            reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair)));
  }
#endif
  static void Store(float* y, F v, int64_t count) {
    _mm512_mask_storeu_ps(y, static_cast<__mmask16>((1u << count) - 1), v);
  }
};
#endif

// A group record's scales for W's register of rows (fp32, or bf16 bits
// when scale_bytes is 2; int8_tiles.h TileScalesF32, TileScalesBf16).
template <class W>
inline typename W::F GroupScales(const uint8_t* p, int64_t tile_stride, int64_t scale_bytes) {
  return scale_bytes == 2 ? W::ScalesBf16(p, tile_stride) : W::Scales(p, tile_stride);
}

// With several x rows the hardware prefetcher falls behind on the weights,
// so GEMMs prefetch this many group records ahead (bench/results/kernels.md).
// Whether one x row needs it depends on the CPU (Q::kStreamPairs).
constexpr int64_t kPrefetchGroups = 8;

// W::kTiles row tiles from `tile` times x rows i0 .. i0 + T, their codes
// unpacked as Code (code_traits.h) says; kLut: codes go through the level
// table; kPrefetchOneRow: prefetch W for one x row too. Not inlined into
// the loops over tiles and x rows: their live values left GCC too few
// registers for this loop (bench/results/structure_before_after.md).
template <class W, bool kSignedWeights, class Code, bool kLut, int T, bool kOneBlockGroups,
          bool kPrefetchOneRow>
[[gnu::noinline]] void Int8Tile(const QuantArgs& a, int64_t tile, int64_t i0) {
  using I = typename W::I;
  using F = typename W::F;
  // Independent accumulator chains per x row: a block's 8 dots in one chain
  // would wait on each other's latency when few x rows interleave.
  constexpr int kChains = T >= 4 ? 1 : (T >= 2 ? 2 : 4);
  const PackedInt8Weights& p = *a.packed;
  const int64_t cols = a.w->cols;
  const int bias = kSignedWeights ? 128 : 0;
  alignas(16) uint8_t table[16];
  for (int c = 0; c < 16; ++c) table[c] = a.ulevel[c] ^ bias;
  const I lut = W::Table(table);
  const typename Code::template Int8Unpack<W> unpack{};
  const I flip = W::Bytes(static_cast<char>(bias));
  const F off_base = W::Splat(static_cast<float>(a.int8_off_base - bias));
  const int8_t* xq[T];
  const float* xd[T];
  const float* xs[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    xq[t] = a.xq + (i0 + t) * cols;
    xd[t] = a.xd + (i0 + t) * a.blocks_per_row;
    xs[t] = a.xs + (i0 + t) * a.w->groups_per_row;
  }
  // Weight bytes for one broadcast activation dword: levels as u8 (^ bias).
  auto level = [&](I u) {
    if constexpr (kLut) return W::Lookup(lut, u);
    return W::Xor(u, flip);
  };
  F acc[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[t] = W::ZeroF();
  // Loop invariants in locals, not reloaded through `a` every group.
  const uint8_t* rec = p.tile(tile);
  const int64_t stride = p.tile_stride;
  const int64_t blocks = kOneBlockGroups ? 1 : a.blocks_per_group;
  const int64_t group_size = a.w->group_size;
  const bool asym = a.asym;
  for (int64_t g = 0; g < p.groups; ++g, rec += p.group_stride) {
    if (i0 == 0 && (a.n > 1 || kPrefetchOneRow)) {
      for (int tt = 0; tt < W::kTiles; ++tt) {
        // An address, not a pointer: near the end it lies past the weights
        // (a prefetch never faults).
        const uintptr_t ahead = reinterpret_cast<uintptr_t>(rec) + tt * stride +
                                kPrefetchGroups * p.group_stride;
        for (int64_t line = 0; line < p.group_stride; line += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(ahead + line), _MM_HINT_T0);
        }
      }
    }
    F gsum[T];
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* codes = rec + b * p.block_bytes;
      const int64_t k0 = g * group_size + b * kBlock;
      const int64_t bi = g * blocks + b;
      I dot[T][kChains];
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t)
#pragma GCC unroll 4
        for (int h = 0; h < kChains; ++h) dot[t][h] = W::ZeroI();
      // Step s (of 8 per block) feeds chain s % kChains.
      unpack.Block(codes, stride, [&](int s, I code_bytes, int col) {
        const I wv = level(code_bytes);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          auto& d = dot[t][s % kChains];
          d = W::DotX4(d, wv, xq[t] + k0 + col);
        }
      });
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
#pragma GCC unroll 4
        for (int h = 1; h < kChains; ++h) dot[t][0] = W::AddI(dot[t][0], dot[t][h]);
        const F d = W::Splat(xd[t][bi]);
        const F f = W::Float(dot[t][0]);
        gsum[t] = b == 0 ? W::Mul(f, d) : W::Fma(f, d, gsum[t]);
      }
    }
    const F s = GroupScales<W>(rec + p.scales_offset, stride, p.scale_bytes);
    F off = off_base;
    if (asym) off = W::Add(off, W::Zeros(rec + p.zeros_offset, stride));
    const F soff = W::Mul(s, off);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      acc[t] = W::Fma(s, gsum[t], acc[t]);
      acc[t] = W::Fnma(soff, W::Splat(xs[t][g]), acc[t]);
    }
  }
  const int64_t r = tile * kTileRows;
  const int64_t count = std::min<int64_t>(W::kTiles * kTileRows, a.w->rows - r);
  // The level table's scale, common to all groups, once at the end (it is
  // 1 for integer formats): a register live through the loop would spill.
  const F wscale = W::Splat(a.int8_wscale);
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    W::Store(a.y + (i0 + t) * a.w->rows + r, W::Mul(acc[t], wscale), count);
  }
}

// Calls tile(rows, one_block_groups, i0) for the rows of x in chunks of up
// to kMaxRows from i0, rows (the chunk's) and one_block_groups
// (a.blocks_per_group == 1) as integral constants. Group size 32 (one block
// per group, the common case) gets a straight-line group body, which GCC
// schedules far better than the block loop (bench/results/kernels.md).
template <int kMaxRows, typename F>
void ForXChunks(const QuantArgs& a, F&& tile) {
  for (int64_t i = 0; i < a.n; i += kMaxRows) {
    const int nt = static_cast<int>(std::min<int64_t>(kMaxRows, a.n - i));
    WithCount<kMaxRows>(nt, [&](auto rows) {
      if (a.blocks_per_group == 1) return tile(rows, std::true_type(), i);
      tile(rows, std::false_type(), i);
    });
  }
}

// Tiles [first, first + W::kTiles) times all rows of x; the tiles' codes stay
// in L1/L2 across the rows of x.
template <class W, bool kSignedWeights, class Code, bool kLut, bool kPrefetchOneRow>
void Int8Tiles(const QuantArgs& a, int64_t first) {
  ForXChunks<W::kNt>(a, [&](auto rows, auto one_block, int64_t i) {
    Int8Tile<W, kSignedWeights, Code, kLut, decltype(rows)::value, decltype(one_block)::value,
             kPrefetchOneRow>(a, first, i);
  });
}

// Q::Wide (when defined) covers two tiles per register: used for every
// whole pair of tiles in [r0, r1) when x has several rows (compute bound),
// the ymm kernel for a last single tile. One x row (memory bound) streams
// W as Q::kStreamPairs says, whichever streamed faster on that CPU
// (bench/results/kernels.md).
template <class Q, class Code, bool kLut>
void Int8Rows(const QuantArgs& a, int64_t r0, int64_t r1) {
  const int64_t tiles = (a.w->rows + kTileRows - 1) / kTileRows;
  const int64_t end = std::min(tiles, (r1 + kTileRows - 1) / kTileRows);
  int64_t tile = r0 / kTileRows;
  if constexpr (Q::kWide) {
    for (; (a.n >= 2 || Q::kStreamPairs) && tile + 1 < end; tile += 2) {
      Int8Tiles<typename Q::Wide, Q::kSignedWeights, Code, kLut, Q::kStreamPairs>(a, tile);
    }
  }
  for (; tile < end; ++tile) {
    Int8Tiles<TileYmm<Q>, Q::kSignedWeights, Code, kLut, Q::kStreamPairs>(a, tile);
  }
  if (a.simd_cols < a.w->cols) {
    for (int64_t r = r0; r < r1; ++r) RefRows(a, r, a.simd_cols, true);
  }
}

// Codebooks (a.affine false) go through the level table; widths without
// one run affine formats only (DescribeCall).
template <class Q>
void Int8ByFormat(const QuantArgs& a, int64_t r0, int64_t r1) {
  DispatchTiledBits(a.bits, [&](auto code) {
    using Code = decltype(code);
    if constexpr (Code::kLevelTable) {
      if (!a.affine) return Int8Rows<Q, Code, true>(a, r0, r1);
    }
    Int8Rows<Q, Code, false>(a, r0, r1);
  });
}

// ---------------------------------------------------------------------------
// fp32 / bf16 compute over PackedInt8Weights: the int8 kernels' tiles and
// prefetch, decoded in registers. A lane is a W row, so one level-table
// lookup decodes a column of 8 (ymm) or 16 (zmm) rows and one FMA per x row
// accumulates it with the broadcast activation: W::kNt x rows share each
// decoded column (prefill: the decode is amortized over them), and the
// tiles' codes stay in L1/L2 across the chunks of x rows. Levels go in without the
// zero point, which comes off per group as zero * xs (the group's sum of
// activations); codes of a width without a level table count from level0,
// added back the same way. kBf16Dot (AVX512_BF16, widths with kBf16Pairs):
// the levels as bf16 pairs of adjacent columns and vdpbf16ps with the
// broadcast activation pair, half the lookups and dot instructions of fp32.

// Group records the float kernels prefetch ahead: their decode takes longer
// per record, so a line must be asked for earlier (bench/results/kernels.md).
constexpr int64_t kFloatPrefetchGroups = 2 * kPrefetchGroups;

template <class W, class Code, bool kBf16Dot, int T, bool kOneBlockGroups>
void FloatTile(const QuantArgs& a, int64_t tile, int64_t i0) {
  using I = typename W::I;
  using F = typename W::F;
  // Independent FMA chains per x row, as in Int8Tile.
  constexpr int kChains = T >= 4 ? 1 : (T >= 2 ? 2 : 4);
  const PackedInt8Weights& p = *a.packed;
  const int64_t cols = a.w->cols;
  const int64_t groups_per_row = a.w->groups_per_row;
  const auto unpack = [&] {
    if constexpr (kBf16Dot) {
      return typename Code::template Bf16PairUnpack<W>(a.lut);
    } else {
      return typename Code::template FloatUnpack<W>(a.lut);
    }
  }();
  const float* x[T];
  [[maybe_unused]] const uint16_t* xb[T];
  const float* xs[T];
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) {
    x[t] = a.xf + (i0 + t) * cols;
    // x as bf16 bits exists only for bf16 compute.
    xb[t] = a.xb16 != nullptr ? a.xb16 + (i0 + t) * cols : nullptr;
    xs[t] = a.xs + (i0 + t) * groups_per_row;
  }
  // Added to each level of a group, times xs: level0 (when the codes count
  // from it) minus the zero.
  const float from_codes = Code::kLevelTable ? 0.0f : a.level0;
  const bool offsets = a.asym || from_codes != 0.0f;
  const F level0 = W::Splat(from_codes);
  F acc[T];
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) acc[t] = W::ZeroF();
  const uint8_t* rec = p.tile(tile);
  const int64_t stride = p.tile_stride;
  for (int64_t g = 0; g < p.groups; ++g, rec += p.group_stride) {
    if (i0 == 0) {
      for (int tt = 0; tt < W::kTiles; ++tt) {
        const uintptr_t ahead = reinterpret_cast<uintptr_t>(rec) + tt * stride +
                                kFloatPrefetchGroups * p.group_stride;
        for (int64_t line = 0; line < p.group_stride; line += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(ahead + line), _MM_HINT_T0);
        }
      }
    }
    F gsum[T][kChains];
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 4
      for (int h = 0; h < kChains; ++h) gsum[t][h] = W::ZeroF();
    const int64_t blocks = kOneBlockGroups ? 1 : a.blocks_per_group;
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* codes = rec + b * p.block_bytes;
      const int64_t k0 = g * a.w->group_size + b * kBlock;
      // Step s feeds chain s % kChains.
      if constexpr (kBf16Dot) {
        unpack.Block(codes, stride, [&](int s, I pairs, int col) {
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) {
            auto& sum = gsum[t][s % kChains];
            sum = W::DotBf16(sum, pairs, xb[t] + k0 + col);
          }
        });
      } else {
        unpack.Block(codes, stride, [&](int s, F levels, int col) {
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) {
            auto& sum = gsum[t][s % kChains];
            sum = W::Fma(levels, W::Splat(x[t][k0 + col]), sum);
          }
        });
      }
    }
    const F s = GroupScales<W>(rec + p.scales_offset, stride, p.scale_bytes);
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
#pragma GCC unroll 4
      for (int h = 1; h < kChains; ++h) gsum[t][0] = W::Add(gsum[t][0], gsum[t][h]);
      acc[t] = W::Fma(s, gsum[t][0], acc[t]);
    }
    if (offsets) {
      const F off = a.asym ? W::Fnma(W::Splat(1.0f),
                                      W::Zeros(rec + p.zeros_offset, stride),
                                      level0)
                           : level0;
      const F soff = W::Mul(s, off);
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) acc[t] = W::Fma(soff, W::Splat(xs[t][g]), acc[t]);
    }
  }
  const int64_t r = tile * kTileRows;
  const int64_t count = std::min<int64_t>(W::kTiles * kTileRows, a.w->rows - r);
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) W::Store(a.y + (i0 + t) * a.w->rows + r, acc[t], count);
}

// Tiles [first, first + W::kTiles) times all rows of x, W::kNt (bf16
// dots: W::kBf16Nt) at a time.
template <class W, class Code, bool kBf16Dot>
void FloatTiles(const QuantArgs& a, int64_t first) {
  ForXChunks<kBf16Dot ? W::kBf16Nt : W::kNt>(a, [&](auto rows, auto one_block, int64_t i) {
    FloatTile<W, Code, kBf16Dot, decltype(rows)::value, decltype(one_block)::value>(a, first, i);
  });
}

// Rows [r0, r1) of the float kernels on tiles: pairs of tiles in Q::Wide's
// registers where Q has them (decoding is compute heavy, so wide registers
// pay for one x row too), a last single tile in ymm.
template <class Q, class Code, bool kBf16Dot>
void PackedFloatRows(const QuantArgs& a, int64_t r0, int64_t r1) {
  const int64_t tiles = (a.w->rows + kTileRows - 1) / kTileRows;
  const int64_t end = std::min(tiles, (r1 + kTileRows - 1) / kTileRows);
  int64_t tile = r0 / kTileRows;
  if constexpr (Q::kWide) {
    for (; tile + 1 < end; tile += 2) FloatTiles<typename Q::Wide, Code, kBf16Dot>(a, tile);
  }
  for (; tile < end; ++tile) FloatTiles<TileYmm<Q>, Code, kBf16Dot>(a, tile);
  if (a.simd_cols < a.w->cols) {
    for (int64_t r = r0; r < r1; ++r) RefRows(a, r, a.simd_cols, true);
  }
}

// kBf16Dot where the width has bf16 pairs.
template <class Q, bool kBf16Dot>
void PackedFloatByBits(const QuantArgs& a, int64_t r0, int64_t r1) {
  DispatchTiledBits(a.bits, [&](auto code) {
    using Code = decltype(code);
    PackedFloatRows<Q, Code, kBf16Dot && Code::kBf16Pairs>(a, r0, r1);
  });
}

// QuantizeBlocksRef's arithmetic: the same fp32 operations per element, so
// the results are identical.
inline void QuantizeBlocksSimd(const float* x, int64_t blocks, int8_t* q,
                               float* d, int32_t* sum) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i lim = _mm256_set1_epi32(127);
  for (int64_t b = 0; b < blocks; ++b, x += kBlock, q += kBlock) {
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(x + 8 * i);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float absmax = _mm_cvtss_f32(m);
    const __m256 inv = _mm256_set1_ps(absmax > 0.0f ? 127.0f / absmax : 0.0f);
    __m256i qi[4];
    __m256i total = _mm256_setzero_si256();
    for (int i = 0; i < 4; ++i) {
      // Current rounding mode: to nearest even, as std::nearbyint.
      qi[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));
      qi[i] = _mm256_max_epi32(_mm256_min_epi32(qi[i], lim), _mm256_sub_epi32(_mm256_setzero_si256(), lim));
      total = _mm256_add_epi32(total, qi[i]);
    }
    // Pack int32 -> int8; packs work per 128-bit lane, so restore the order.
    const __m256i w01 = _mm256_packs_epi32(qi[0], qi[1]);
    const __m256i w23 = _mm256_packs_epi32(qi[2], qi[3]);
    const __m256i bytes = _mm256_permutevar8x32_epi32(
        _mm256_packs_epi16(w01, w23), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), bytes);
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    d[b] = absmax / 127.0f;
    sum[b] = _mm_cvtsi128_si32(s);
  }
}

template <class V, class Q>
constexpr KernelTable MakeTable() {
  KernelTable t{};
  // bf16 without native bf16 dot products, or of a width without bf16
  // pairs: fp32 FMAs on bf16-rounded a.lut and a.xf, products exact in fp32.
  constexpr bool kBf16Dot =
#ifdef __AVX512BF16__
      true;
#else
      false;
#endif
  t.quant_rows[static_cast<int>(ComputeDtype::kFp32)] = &PackedFloatByBits<Q, false>;
  t.quant_rows[static_cast<int>(ComputeDtype::kBf16)] = &PackedFloatByBits<Q, kBf16Dot>;
  t.quant_rows[static_cast<int>(ComputeDtype::kInt8)] = &Int8ByFormat<Q>;
  t.f32_rows = &F32Rows<V>;
  t.quantize_blocks = &QuantizeBlocksSimd;
  t.gemm_f32_cols = &GemmF32ColsEigen;
  return t;
}

}  // namespace
}  // namespace kernels
}  // namespace wq

#endif  // WQ_COMMON_KERNELS_IMPL_H_
