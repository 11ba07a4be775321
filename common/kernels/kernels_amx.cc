// Kernels for the AMX ISA levels: those of avx512_bf16, except that with
// several x rows int8 compute (level "amx_int8") and also bf16 compute
// (level "amx_bf16", built with -mamx-bf16) multiply on the AMX tile unit.
// Compiled once per level with that level's -m flags only (see
// //common/kernels:kernels_amx_int8, kernels_amx_bf16), which also name its
// table function (WQ_ISA_TABLE), and called only after dispatch checked the
// CPU and got the OS's permission to use the tile state (cpu_features.cc).
//
// int8: one TDPBSSD multiplies up to 16 x rows by 16 W rows over one
// 32-block (16 x 32 activation bytes times 32 x 16 weight levels, exact
// int32 dots) in about 16 cycles. The scales change every block (group 32),
// so each block's dots leave the tile unit (a tile store) for a float
// epilogue on the vector pipes, y += s * d * dot (a convert, a multiply and
// an FMA per x row and 16 W rows), and the 4-bit codes are expanded to
// bytes once per block for all x rows. The multiply and the epilogue hardly
// overlap, so the VNNI kernels stay faster below kInt8MinRows
// (bench/results/kernels.md).
//
// bf16: one TDPBF16PS multiplies 16 x rows by 16 W rows over one 32-block
// (16 x 32 bf16 activations times 16 column pairs x 16 bf16 levels, fp32
// sums). bf16 activations carry no per-block scale, so the blocks of a
// group accumulate in the tile and leave it once per group, y += s * sum.
#include <immintrin.h>

#include <cstdlib>
#include <new>

#include "common/kernels/kernels.h"
#include "common/kernels/kernels_dense16.h"
#include "common/kernels/kernels_simd.h"

// Built with -mamx-bf16 (level amx_bf16): GCC spells the macro __AMX_BF16__,
// clang 14 (the sanitizer builds) __AMXBF16__.
#if defined(__AMX_BF16__) || defined(__AMXBF16__)
#define WQ_AMX_BF16 1
#endif

namespace wq {
namespace kernels {
namespace {

// W rows per weight tile: two of the packed layout's row tiles, so that a
// tile row of 64 bytes is the 4-byte lanes of a chunk of both side by side.
constexpr int kPairRows = 2 * kTileRows;
constexpr int kTileRowBytes = kPairRows * 4;

// From this many x rows the tile kernels are faster than the VNNI / bf16
// dot kernels (bench/results/kernels.md); below, the tile stores and
// epilogues cost more than the dots they save. bf16 stores once per group,
// not per block, and its dot kernels are slower than int8's.
constexpr int64_t kInt8MinRows = 10;
#ifdef WQ_AMX_BF16
constexpr int64_t kBf16MinRows = 4;
#endif

// Tile registers: two sets of accumulator C [x rows x 16 sums],
// activations A [x rows x one 32-block] and weights B [one 32-block of 16
// W rows], so that one multiply runs while the previous one's epilogue does.
template <int kSet>
struct TileSet {
  static constexpr int kC = kSet, kA = 2 + kSet, kB = 4 + kSet;
};

// GCC's tile intrinsics carry no memory operands (tileloadd would not be
// ordered after the stores of the weights it reads), and a "memory" clobber
// would keep the accumulators out of registers; these name the memory they
// touch instead.
template <int kReg>
inline void TileZero() {
  __asm__ volatile("tilezero %%tmm%c0" ::"i"(kReg));
}
// Tile register kReg from kRows rows of kRowBytes at `from`.
template <int kReg, int kRows, int kRowBytes>
inline void TileLoad(const void* from) {
  __asm__ volatile("tileloadd (%1,%2,1), %%tmm%c3" ::"m"(*reinterpret_cast<const uint8_t(*)[kRows * kRowBytes]>(from)),
                   "r"(from), "r"(int64_t{kRowBytes}), "i"(kReg));
}
// The sums of a chunk's 16 x rows (int32 dots or fp32 sums).
template <class T>
using Sums = T[kXChunkRows][kPairRows];
template <int kReg, class T>
inline void TileStore(Sums<T>* out) {
  __asm__ volatile("tilestored %%tmm%c2, (%1,%3,1)" : "=m"(*out) : "r"(out), "i"(kReg),
                   "r"(int64_t{sizeof((*out)[0])}));
}

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// The tile configuration for the duration of one AmxRows call: loaded at
// its start and released at its end, so that nothing is assumed about the
// thread's tile state in between calls (other code may have released or
// reconfigured it) and idle threads do not carry 8 KiB of tile state
// through context switches. Always 16 x rows: activation tiles are
// zero-padded to whole chunks (kernels.h xq_tiles, xb16_tiles), a short
// chunk's extra rows multiply zeros, and the epilogue reads only its real
// rows.
class TileScope {
 public:
  // A tiles of a_row_bytes per x row, B tiles of b_rows rows.
  TileScope(int a_row_bytes, int b_rows) {
    TileConfig cfg;
    for (int set = 0; set < 2; ++set) {
      cfg.rows[set] = kXChunkRows;  // C
      cfg.colsb[set] = kPairRows * 4;
      cfg.rows[2 + set] = kXChunkRows;  // A
      cfg.colsb[2 + set] = static_cast<uint16_t>(a_row_bytes);
      cfg.rows[4 + set] = static_cast<uint8_t>(b_rows);  // B
      cfg.colsb[4 + set] = kTileRowBytes;
    }
    // Not _tile_loadconfig: GCC 12 declares only 8 of its 64 bytes as read,
    // so the stores of the rest can be dropped as dead (then ldtilecfg faults).
    __asm__ volatile("ldtilecfg %0" ::"m"(cfg));
  }
  ~TileScope() { __asm__ volatile("tilerelease" ::); }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

// A per-thread buffer of at least `bytes`, 64-byte aligned, kept for the
// thread's lifetime.
uint8_t* ThreadBuffer(size_t bytes) {
  struct Buffer {
    uint8_t* data = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffer;
  if (buffer.size < bytes) {
    std::free(buffer.data);
    buffer.size = 0;
    const size_t size = (bytes + 63) / 64 * 64;
    buffer.data = static_cast<uint8_t*>(std::aligned_alloc(64, size));
    if (buffer.data == nullptr) throw std::bad_alloc();
    buffer.size = size;
  }
  return buffer.data;
}

// Groups of a W pair are expanded a slab at a time (about 16 blocks: the
// slab and the activation rows it meets stay in L1), and every chunk of x
// rows runs over the slab before the next one is expanded.
int64_t SlabGroups(const QuantArgs& a) {
  return std::max<int64_t>(1, 16 / a.blocks_per_group);
}

// Per-thread working memory of AmxRows: a slab of weight tiles, the pair's
// 16 scales and offset terms per group, and the accumulators of every x row.
struct PairBuffers {
  uint8_t* tiles;
  float* scales;
  float* offsets;
  float* acc;
};

PairBuffers MakePairBuffers(const QuantArgs& a, int64_t block_tile_bytes) {
  const int64_t groups = a.packed->groups;
  const int64_t tile_bytes = SlabGroups(a) * a.blocks_per_group * block_tile_bytes;
  const int64_t x_rows = (a.n + kXChunkRows - 1) / kXChunkRows * kXChunkRows;
  const int64_t floats = (2 * groups + x_rows) * kPairRows;
  uint8_t* p = ThreadBuffer(static_cast<size_t>(tile_bytes + floats * sizeof(float)));
  float* scales = reinterpret_cast<float*>(p + tile_bytes);
  return {p, scales, scales + groups * kPairRows, scales + 2 * groups * kPairRows};
}

// The pair's second tile's distance from the first, or (rows 8..15 being
// padding) 0: the first again, whose results AmxRows never stores.
int64_t SecondTileOffset(const PackedInt8Weights& p, int64_t tile) {
  return tile + 1 < p.tiles ? p.tile_stride : 0;
}

// The codes stream from memory once per pair: fetch ahead of group record
// `rec` as the VNNI kernels do (an address past the weights never faults).
void PrefetchAhead(const PackedInt8Weights& p, const uint8_t* rec, int64_t next) {
  for (int64_t t = 0; t < (next != 0 ? 2 : 1); ++t) {
    const uintptr_t ahead = reinterpret_cast<uintptr_t>(rec) + t * next + kPrefetchGroups * p.group_stride;
    for (int64_t line = 0; line < p.group_stride; line += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + line), _MM_HINT_T0);
    }
  }
}

// Prefetches the records of groups [g0, g1) of the pair at `tile` into L2.
// While the tile unit works on a slab no loads of W are in flight, so the
// next slab is fetched meanwhile (bench/results/kernels.md). Into L2, not L1:
// a slab is 80 lines, more than L1's fill buffers hold.
void PrefetchSlab(const PackedInt8Weights& p, int64_t tile, int64_t g0, int64_t g1) {
  for (int64_t t = tile; t < std::min(tile + 2, p.tiles); ++t) {
    const char* begin = reinterpret_cast<const char*>(p.tile(t) + g0 * p.group_stride);
    for (int64_t at = 0; at < (g1 - g0) * p.group_stride; at += 64) {
      _mm_prefetch(begin + at, _MM_HINT_T1);
    }
  }
}

inline void Store64(uint8_t* to, __m512i v) { _mm512_store_si512(reinterpret_cast<__m512i*>(to), v); }

// Runs issue(set, u) for units [u0, u1) (u0 < u1) on alternating tile sets
// and finish(set, u) once the next unit is issued, so that a unit's
// epilogue overlaps the next one's multiply. Inlined with its lambdas, or
// the accumulators they update would live in memory.
template <class Issue, class Finish>
__attribute__((always_inline)) inline void DoubleBuffered(int64_t u0, int64_t u1, Issue&& issue,
                                                          Finish&& finish) {
  using Set0 = std::integral_constant<int, 0>;
  using Set1 = std::integral_constant<int, 1>;
  int64_t u = u0;
  issue(Set0(), u);
  for (; u + 1 < u1; u += 2) {
    issue(Set1(), u + 1);
    finish(Set0(), u);
    if (u + 2 < u1) issue(Set0(), u + 2);
    finish(Set1(), u + 1);
  }
  if (u < u1) finish(Set0(), u);
}

// Expands groups [g0, g1) of the pair at `tile` into out.tiles (from its
// start): expand(codes, next, to) writes one 32-block's weight tile (codes
// of the first tile, `next` bytes on to the second's); the group's scales go
// to out.scales and, with `offsets`, scale * offset(record, next) to
// out.offsets (at their group).
template <class Expand, class Offset>
__attribute__((always_inline)) inline void ExpandGroups(const QuantArgs& a, int64_t tile, int64_t g0,
                                                        int64_t g1, int64_t block_tile_bytes,
                                                        bool offsets, const PairBuffers& out,
                                                        Expand&& expand, Offset&& offset) {
  using W = TilePairZmm;
  const PackedInt8Weights& p = *a.packed;
  const int64_t next = SecondTileOffset(p, tile);
  const uint8_t* rec = p.tile(tile) + g0 * p.group_stride;
  uint8_t* tiles = out.tiles;
  for (int64_t g = g0; g < g1; ++g, rec += p.group_stride) {
    PrefetchAhead(p, rec, next);
    for (int64_t b = 0; b < a.blocks_per_group; ++b, tiles += block_tile_bytes) {
      expand(rec + b * p.block_bytes, next, tiles);
    }
    const __m512 s = GroupScales<W>(rec + p.scales_offset, next, p.scale_bytes);
    _mm512_store_ps(out.scales + g * kPairRows, s);
    if (offsets) _mm512_store_ps(out.offsets + g * kPairRows, W::Mul(s, offset(rec, next)));
  }
}

// The T x rows' accumulators of a chunk: zero when `first`, else as stored.
template <int T>
__attribute__((always_inline)) inline void LoadAccumulators(const float* from, bool first,
                                                            __m512 (&acc)[T]) {
#pragma GCC unroll 16
  for (int m = 0; m < T; ++m) acc[m] = first ? _mm512_setzero_ps() : _mm512_load_ps(from + m * kPairRows);
}
template <int T>
__attribute__((always_inline)) inline void StoreAccumulators(const __m512 (&acc)[T], float* to) {
#pragma GCC unroll 16
  for (int m = 0; m < T; ++m) _mm512_store_ps(to + m * kPairRows, acc[m]);
}

// int8 compute: the tile unit's weight layout of a 32-block is 8 rows
// (column quads 0..7) of 16 lanes of 4 levels. Levels as the tile unit reads
// them: sym formats signed (level - offset, so that no offset term is left),
// asym ones unsigned with scale * offset applied per group.
template <class Code, bool kAsym>
struct Int8TileKernel {
  static constexpr int kARowBytes = kBlock;
  static constexpr int kBRows = kBlock / 4;
  static constexpr int64_t kBlockTileBytes = kBRows * kTileRowBytes;

  static float OutputScale(const QuantArgs& a) { return a.int8_wscale; }

  // Expands groups [g0, g1) of the pair at `tile` into out.tiles (from its
  // start) and their scales and offsets into out.scales / out.offsets (at
  // their group).
  static void ExpandSlab(const QuantArgs& a, int64_t tile, int64_t g0, int64_t g1,
                         const PairBuffers& out) {
    using W = TilePairZmm;
    const PackedInt8Weights& p = *a.packed;
    const int bias = kAsym ? 0 : a.int8_off_base;
    alignas(16) uint8_t table[16];
    for (int c = 0; c < 16; ++c) table[c] = static_cast<uint8_t>(a.ulevel[c] - bias);
    const __m512i lut = W::Table(table);
    const __m512i bias8 = W::Bytes(static_cast<char>(bias));
    const typename Code::template Int8Unpack<W> unpack{};
    // Levels through the table where Code has one, else code - bias.
    auto level = [&](__m512i code_bytes) {
      if constexpr (Code::kLevelTable) {
        return W::Lookup(lut, code_bytes);
      } else {
        return _mm512_sub_epi8(code_bytes, bias8);
      }
    };
    const __m512 off_base = W::Splat(static_cast<float>(a.int8_off_base));
    ExpandGroups(
        a, tile, g0, g1, kBlockTileBytes, kAsym, out,
        [&](const uint8_t* codes, int64_t next, uint8_t* to) __attribute__((always_inline)) {
          // Tile row q holds column quad q (columns 4q .. 4q + 3).
          unpack.Block(codes, next, [&](int, __m512i code_bytes, int col) {
            Store64(to + kTileRowBytes * (col / 4), level(code_bytes));
          });
        },
        [&](const uint8_t* rec, int64_t next) __attribute__((always_inline)) {
          return W::Add(off_base, W::Zeros(rec + p.zeros_offset, next));
        });
  }

  // Accumulates groups [g0, g1) of an expanded slab for the chunk of T x
  // rows at i0 (T <= 16) into acc [T][16]: zeroed first when `first`.
  template <int T>
  static void ChunkTimesSlab(const QuantArgs& a, const PairBuffers& w, int64_t g0, int64_t g1,
                             int64_t i0, float* acc_out, bool first) {
    const int64_t chunk = i0 / kXChunkRows;
    const int8_t* xq = a.xq_tiles + chunk * a.blocks_per_row * kXChunkRows * kBlock;
    const float* xd = a.xd_chunks + chunk * a.blocks_per_row * kXChunkRows;
    const float* xs = a.xs_chunks + chunk * a.w->groups_per_row * kXChunkRows;
    const int64_t bpg = a.blocks_per_group;
    const int64_t b0 = g0 * bpg, b1 = g1 * bpg;
    alignas(64) Sums<int32_t> dots[2];
    __m512 acc[T];
    LoadAccumulators(acc_out, first, acc);
    // Block b's multiply into tile set S.
    // Both inlined, or the accumulators would live in memory.
    auto issue = [&](auto set, int64_t b) __attribute__((always_inline)) {
      using S = TileSet<decltype(set)::value>;
      TileZero<S::kC>();
      TileLoad<S::kA, kXChunkRows, kARowBytes>(xq + b * kXChunkRows * kBlock);
      TileLoad<S::kB, kBRows, kTileRowBytes>(w.tiles + (b - b0) * kBlockTileBytes);
      if constexpr (kAsym) {  // signed activations, unsigned levels
        __asm__ volatile("tdpbsud %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(S::kC), "i"(S::kA), "i"(S::kB));
      } else {
        __asm__ volatile("tdpbssd %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(S::kC), "i"(S::kA), "i"(S::kB));
      }
    };
    // Its epilogue, y += s * d * dot, and the group's offset term after its
    // last block. The block's group and place in it are counted, not divided.
    int64_t g = g0, in_group = 0;
    auto finish = [&](auto set, int64_t b) __attribute__((always_inline)) {
      constexpr int kSet = decltype(set)::value;
      TileStore<TileSet<kSet>::kC>(&dots[kSet]);
      const __m512 s = _mm512_load_ps(w.scales + g * kPairRows);
      const float* d = xd + b * kXChunkRows;
#pragma GCC unroll 16
      for (int m = 0; m < T; ++m) {
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_load_si512(dots[kSet][m]));
        acc[m] = _mm512_fmadd_ps(dot, _mm512_mul_ps(s, _mm512_set1_ps(d[m])), acc[m]);
      }
      if (++in_group < bpg) return;
      if constexpr (kAsym) {
        const __m512 off = _mm512_load_ps(w.offsets + g * kPairRows);
#pragma GCC unroll 16
        for (int m = 0; m < T; ++m) {
          acc[m] = _mm512_fnmadd_ps(off, _mm512_set1_ps(xs[g * kXChunkRows + m]), acc[m]);
        }
      }
      in_group = 0;
      ++g;
    };
    DoubleBuffered(b0, b1, issue, finish);
    StoreAccumulators(acc, acc_out);
  }
};
#ifdef WQ_AMX_BF16
// bf16 compute (widths with bf16 pairs): the tile unit's weight layout of a
// 32-block is 16 rows (column pairs 0..15) of 16 lanes of 2 bf16 levels, as
// Bf16PairUnpack emits them from the level table. Levels go in without the
// zero point, which comes off per group (asym) as scale * zero * xs, as in
// FloatTile.
template <class Code>
struct Bf16TileKernel {
  static_assert(Code::kLevelTable, "bf16 pairs are looked up in the level table");
  static constexpr int kARowBytes = kBlock * 2;
  static constexpr int kBRows = kBlock / 2;
  static constexpr int64_t kBlockTileBytes = kBRows * kTileRowBytes;

  static float OutputScale(const QuantArgs&) { return 1.0f; }

  static void ExpandSlab(const QuantArgs& a, int64_t tile, int64_t g0, int64_t g1,
                         const PairBuffers& out) {
    using W = TilePairZmm;
    const PackedInt8Weights& p = *a.packed;
    const typename Code::template Bf16PairUnpack<W> unpack(a.lut);
    ExpandGroups(
        a, tile, g0, g1, kBlockTileBytes, a.asym, out,
        [&](const uint8_t* codes, int64_t next, uint8_t* to) __attribute__((always_inline)) {
          // Tile row q holds column pair q (columns 2q, 2q + 1).
          unpack.Block(codes, next, [&](int, __m512i pairs, int col) {
            Store64(to + kTileRowBytes * (col / 2), pairs);
          });
        },
        [&](const uint8_t* rec, int64_t next) __attribute__((always_inline)) {
          return W::Zeros(rec + p.zeros_offset, next);
        });
  }

  template <int T>
  static void ChunkTimesSlab(const QuantArgs& a, const PairBuffers& w, int64_t g0, int64_t g1,
                             int64_t i0, float* acc_out, bool first) {
    const int64_t chunk = i0 / kXChunkRows;
    const uint16_t* xb = a.xb16_tiles + chunk * a.blocks_per_row * kXChunkRows * kBlock;
    const float* xs = a.xs_chunks + chunk * a.w->groups_per_row * kXChunkRows;
    const int64_t bpg = a.blocks_per_group;
    alignas(64) Sums<float> sums[2];
    __m512 acc[T];
    LoadAccumulators(acc_out, first, acc);
    // Group g's blocks multiplied into tile set S.
    auto issue = [&](auto set, int64_t g) __attribute__((always_inline)) {
      using S = TileSet<decltype(set)::value>;
      TileZero<S::kC>();
      for (int64_t b = g * bpg; b < (g + 1) * bpg; ++b) {
        TileLoad<S::kA, kXChunkRows, kARowBytes>(xb + b * kXChunkRows * kBlock);
        TileLoad<S::kB, kBRows, kTileRowBytes>(w.tiles + (b - g0 * bpg) * kBlockTileBytes);
        __asm__ volatile("tdpbf16ps %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(S::kC), "i"(S::kA), "i"(S::kB));
      }
    };
    // Its epilogue: y += s * sum - s * zero * xs.
    auto finish = [&](auto set, int64_t g) __attribute__((always_inline)) {
      constexpr int kSet = decltype(set)::value;
      TileStore<TileSet<kSet>::kC>(&sums[kSet]);
      const __m512 s = _mm512_load_ps(w.scales + g * kPairRows);
#pragma GCC unroll 16
      for (int m = 0; m < T; ++m) acc[m] = _mm512_fmadd_ps(_mm512_load_ps(sums[kSet][m]), s, acc[m]);
      if (a.asym) {
        const __m512 szero = _mm512_load_ps(w.offsets + g * kPairRows);
#pragma GCC unroll 16
        for (int m = 0; m < T; ++m) {
          acc[m] = _mm512_fnmadd_ps(szero, _mm512_set1_ps(xs[g * kXChunkRows + m]), acc[m]);
        }
      }
    };
    DoubleBuffered(g0, g1, issue, finish);
    StoreAccumulators(acc, acc_out);
  }
};
#endif  // WQ_AMX_BF16

// Rows [r0, r1) on the tile unit, Kernel being Int8TileKernel or
// Bf16TileKernel.
template <class Kernel>
void AmxRows(const QuantArgs& a, int64_t r0, int64_t r1) {
  const TileScope tile_scope(Kernel::kARowBytes, Kernel::kBRows);
  const PackedInt8Weights& p = *a.packed;
  const PairBuffers buffers = MakePairBuffers(a, Kernel::kBlockTileBytes);
  const int64_t slab = SlabGroups(a);
  const int64_t rows = a.w->rows;
  const __m512 out_scale = _mm512_set1_ps(Kernel::OutputScale(a));
  const int64_t end = std::min(p.tiles, (r1 + kTileRows - 1) / kTileRows);
  // r0 is a multiple of 16 (matmul.cc's row blocks), so pairs start at even tiles.
  for (int64_t tile = r0 / kTileRows; tile < end; tile += 2) {
    for (int64_t g0 = 0; g0 < p.groups; g0 += slab) {
      const int64_t g1 = std::min(p.groups, g0 + slab);
      Kernel::ExpandSlab(a, tile, g0, g1, buffers);
      if (g1 < p.groups) {
        PrefetchSlab(p, tile, g1, std::min(p.groups, g1 + slab));
      } else if (tile + 2 < end) {
        PrefetchSlab(p, tile + 2, 0, std::min(p.groups, slab));
      }
      for (int64_t i = 0; i < a.n; i += kXChunkRows) {
        const int x_rows = static_cast<int>(std::min<int64_t>(kXChunkRows, a.n - i));
        WithCount<kXChunkRows>(x_rows, [&](auto t_const) {
          Kernel::template ChunkTimesSlab<decltype(t_const)::value>(
              a, buffers, g0, g1, i, buffers.acc + i * kPairRows, g0 == 0);
        });
      }
    }
    const int64_t r = tile * kTileRows;
    const __mmask16 mask = static_cast<__mmask16>((1u << std::min<int64_t>(kPairRows, rows - r)) - 1);
    for (int64_t i = 0; i < a.n; ++i) {
      _mm512_mask_storeu_ps(a.y + i * rows + r, mask,
                            _mm512_mul_ps(_mm512_load_ps(buffers.acc + i * kPairRows), out_scale));
    }
  }
  if (a.simd_cols < a.w->cols) {
    for (int64_t r = r0; r < r1; ++r) RefRows(a, r, a.simd_cols, true);
  }
}

// One x row on the VNNI kernels, streaming W as these CPUs do it best.
struct DotAmxHost : DotAvx512Vnni {
  static constexpr bool kStreamPairs = true;
};

void AmxInt8Rows(const QuantArgs& a, int64_t r0, int64_t r1) {
  // The activation tiles are prepared from kInt8MinRows x rows (matmul.cc).
  if (a.xq_tiles == nullptr) return Int8ByFormat<DotAmxHost>(a, r0, r1);
  DispatchTiledBits(a.bits, [&](auto code) {
    using Code = decltype(code);
    (a.asym ? AmxRows<Int8TileKernel<Code, true>> : AmxRows<Int8TileKernel<Code, false>>)(a, r0, r1);
  });
}

#ifdef WQ_AMX_BF16
void AmxBf16Rows(const QuantArgs& a, int64_t r0, int64_t r1) {
  // The activation tiles are prepared from kBf16MinRows x rows (matmul.cc);
  // widths without bf16 pairs and fewer x rows run the AVX512_BF16 kernels.
  bool tiled = false;
  if (a.xb16_tiles != nullptr) {
    DispatchTiledBits(a.bits, [&](auto code) {
      using Code = decltype(code);
      if constexpr (Code::kBf16Pairs) {
        AmxRows<Bf16TileKernel<Code>>(a, r0, r1);
        tiled = true;
      }
    });
  }
  if (!tiled) PackedFloatByBits<DotAvx512Vnni, true>(a, r0, r1);
}
#endif

constexpr KernelTable MakeAmxTable() {
  KernelTable t = WithDense16<VecZmm>(MakeTable<VecZmm, DotAvx512Vnni>());
  t.quant_rows[static_cast<int>(ComputeDtype::kInt8)] = &AmxInt8Rows;
  t.tile_min_rows[static_cast<int>(ComputeDtype::kInt8)] = kInt8MinRows;
#ifdef WQ_AMX_BF16
  t.quant_rows[static_cast<int>(ComputeDtype::kBf16)] = &AmxBf16Rows;
  t.tile_min_rows[static_cast<int>(ComputeDtype::kBf16)] = kBf16MinRows;
#endif
  return t;
}

}  // namespace

const KernelTable& WQ_ISA_TABLE() {
  static constexpr KernelTable kTable = MakeAmxTable();
  return kTable;
}

}  // namespace kernels
}  // namespace wq
