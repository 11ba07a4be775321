// Kernels for ISA level "amx_int8": those of avx512_bf16, except that int8
// compute with several x rows multiplies on the AMX tile unit. Compiled with
// that level's -m flags only (see //common/kernels:kernels_amx_int8) and called only
// after dispatch checked the CPU and got the OS's permission to use the tile
// state (cpu_features.cc).
//
// One TDPBSSD multiplies up to 16 x rows by 16 W rows over one 32-block
// (16 x 32 activation bytes times 32 x 16 weight levels, exact int32 dots)
// in about 16 cycles. The scales change every block (group 32), so each
// block's dots leave the tile unit (a tile store) for a float epilogue on
// the vector pipes, y += s * d * dot (a convert, a multiply and an FMA per
// x row and 16 W rows), and the 4-bit codes are expanded to bytes once per
// block for all x rows. The multiply and the epilogue hardly overlap, so the
// VNNI kernels stay faster below kMinRows (bench/results/kernels.md).
#include <immintrin.h>

#include <cstdlib>
#include <new>

#include "common/kernels/kernels.h"
#include "common/kernels/kernels_dense16.h"
#include "common/kernels/kernels_simd.h"

namespace wq {
namespace kernels {
namespace {

// W rows per weight tile: two of the packed layout's row tiles, so that a
// tile row of 64 bytes is the 4-byte lanes of a chunk of both side by side.
constexpr int kPairRows = 2 * kTileRows;
// One 32-block of a pair in the tile unit's weight layout: 8 rows (column
// quads 0..7) of 16 lanes of 4 levels.
constexpr int kBlockTileRows = kBlock / 4;
constexpr int kTileRowBytes = kPairRows * 4;
constexpr int64_t kBlockTileBytes = kBlockTileRows * kTileRowBytes;

// From this many x rows the tile kernel is faster than the VNNI kernels
// (bench/results/kernels.md); below, the per-block tile store and epilogue
// cost more than the VNNI dots they save.
constexpr int64_t kMinRows = 10;

// Tile registers: two sets of accumulator C [x rows x 16 int32],
// activations A [x rows x 32 bytes] and weights B [8 x 64 bytes], so that
// one block's multiply runs while the previous one's epilogue does.
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
template <int kReg>
inline void TileLoadActivations(const int8_t* tile) {
  __asm__ volatile("tileloadd (%1,%2,1), %%tmm%c3" ::"m"(*reinterpret_cast<const int8_t(*)[kXChunkRows * kBlock]>(tile)),
                   "r"(tile), "r"(int64_t{kBlock}), "i"(kReg));
}
template <int kReg>
inline void TileLoadWeights(const uint8_t* block) {
  __asm__ volatile("tileloadd (%1,%2,1), %%tmm%c3" ::"m"(*reinterpret_cast<const uint8_t(*)[kBlockTileBytes]>(block)),
                   "r"(block), "r"(int64_t{kTileRowBytes}), "i"(kReg));
}
// The dots of a chunk's 16 x rows.
using Dots = int32_t[kXChunkRows][kPairRows];
template <int kReg>
inline void TileStoreDots(Dots* out) {
  __asm__ volatile("tilestored %%tmm%c2, (%1,%3,1)" : "=m"(*out) : "r"(out), "i"(kReg),
                   "r"(int64_t{sizeof((*out)[0])}));
}
// C += A * B with signed activations A and signed (sym) or unsigned (asym)
// weight levels B.
template <bool kUnsignedWeights, int kC, int kA, int kB>
inline void TileDot() {
  if constexpr (kUnsignedWeights) {
    __asm__ volatile("tdpbsud %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(kC), "i"(kA), "i"(kB));
  } else {
    __asm__ volatile("tdpbssd %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(kC), "i"(kA), "i"(kB));
  }
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
// zero-padded to whole chunks (kernels.h xq_tiles), a short chunk's extra
// rows multiply zeros, and the epilogue reads only its real rows.
class TileScope {
 public:
  TileScope() {
    TileConfig cfg;
    for (int set = 0; set < 2; ++set) {
      cfg.rows[set] = kXChunkRows;  // C
      cfg.colsb[set] = kPairRows * sizeof(int32_t);
      cfg.rows[2 + set] = kXChunkRows;  // A
      cfg.colsb[2 + set] = kBlock;
      cfg.rows[4 + set] = kBlockTileRows;  // B
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

// Groups of a W pair are expanded a slab at a time (about 16 blocks, 8 KiB:
// the slab and the activation rows it meets stay in L1), and every chunk of
// x rows runs over the slab before the next one is expanded.
int64_t SlabGroups(const QuantArgs& a) {
  return std::max<int64_t>(1, 16 / a.blocks_per_group);
}

// Per-thread working memory of AmxRows: a slab of weight tiles, the pair's
// 16 scales and (asym) scale * offset per group, and the accumulators of
// every x row.
struct PairBuffers {
  uint8_t* tiles;
  float* scales;
  float* offsets;
  float* acc;
};

PairBuffers MakePairBuffers(const QuantArgs& a) {
  const int64_t groups = a.packed->groups;
  const int64_t tile_bytes = SlabGroups(a) * a.blocks_per_group * kBlockTileBytes;
  const int64_t x_rows = (a.n + kXChunkRows - 1) / kXChunkRows * kXChunkRows;
  const int64_t floats = (2 * groups + x_rows) * kPairRows;
  uint8_t* p = ThreadBuffer(static_cast<size_t>(tile_bytes + floats * sizeof(float)));
  float* scales = reinterpret_cast<float*>(p + tile_bytes);
  return {p, scales, scales + groups * kPairRows, scales + 2 * groups * kPairRows};
}

// Expands groups [g0, g1) of the pair at `tile` into out.tiles (from its
// start) and their scales and offsets into out.scales / out.offsets (at
// their group). Levels as the tile unit reads them: sym formats signed
// (level - offset, so that no offset term is left), asym ones unsigned with
// the offset applied per group.
template <class Code, bool kAsym>
void ExpandSlab(const QuantArgs& a, int64_t tile, int64_t g0, int64_t g1, const PairBuffers& out) {
  using W = TilePairZmm;
  const PackedInt8Weights& p = *a.packed;
  // The pair's second tile, or (rows 8..15 being padding) the first again:
  // what those rows compute is never stored (AmxRows masks them).
  const bool second = tile + 1 < p.tiles;
  const int64_t next = second ? p.tile_stride : 0;
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
  auto store = [](uint8_t* to, __m512i v) { _mm512_store_si512(reinterpret_cast<__m512i*>(to), v); };
  const uint8_t* rec = p.tile(tile) + g0 * p.group_stride;
  uint8_t* tiles = out.tiles;
  for (int64_t g = g0; g < g1; ++g, rec += p.group_stride) {
    // The codes stream from memory once per pair: fetch ahead as the VNNI
    // kernels do (an address past the weights never faults).
    for (int64_t t = 0; t < (second ? 2 : 1); ++t) {
      const uintptr_t ahead = reinterpret_cast<uintptr_t>(rec) + t * next + kPrefetchGroups * p.group_stride;
      for (int64_t line = 0; line < p.group_stride; line += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(ahead + line), _MM_HINT_T0);
      }
    }
    for (int64_t b = 0; b < a.blocks_per_group; ++b, tiles += kBlockTileBytes) {
      // Tile row q holds column quad q (columns 4q .. 4q + 3).
      unpack.Block(rec + b * p.block_bytes, next, [&](int, __m512i code_bytes, int col) {
        store(tiles + kTileRowBytes * (col / 4), level(code_bytes));
      });
    }
    const __m512 s = GroupScales<W>(rec + p.scales_offset, next, p.scale_bytes);
    _mm512_store_ps(out.scales + g * kPairRows, s);
    if constexpr (kAsym) {
      const __m512 off = W::Add(W::Splat(static_cast<float>(a.int8_off_base)),
                                W::Zeros(rec + p.zeros_offset, next));
      _mm512_store_ps(out.offsets + g * kPairRows, W::Mul(s, off));
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

// Accumulates groups [g0, g1) of an expanded slab for the chunk of T x rows
// at i0 (T <= 16) into acc [T][16]: zeroed first when `first`.
template <bool kAsym, int T>
void ChunkTimesSlab(const QuantArgs& a, const PairBuffers& w, int64_t g0, int64_t g1, int64_t i0,
                    float* acc_out, bool first) {
  const int64_t chunk = i0 / kXChunkRows;
  const int8_t* xq = a.xq_tiles + chunk * a.blocks_per_row * kXChunkRows * kBlock;
  const float* xd = a.xd_chunks + chunk * a.blocks_per_row * kXChunkRows;
  const float* xs = a.xs_chunks + chunk * a.w->groups_per_row * kXChunkRows;
  const int64_t bpg = a.blocks_per_group;
  const int64_t b0 = g0 * bpg, b1 = g1 * bpg;
  alignas(64) Dots dots[2];
  __m512 acc[T];
#pragma GCC unroll 16
  for (int m = 0; m < T; ++m) {
    acc[m] = first ? _mm512_setzero_ps() : _mm512_load_ps(acc_out + m * kPairRows);
  }
  // Block b's multiply into tile set S.
  // Both inlined, or the accumulators would live in memory.
  auto issue = [&](auto set, int64_t b) __attribute__((always_inline)) {
    using S = TileSet<decltype(set)::value>;
    TileZero<S::kC>();
    TileLoadActivations<S::kA>(xq + b * kXChunkRows * kBlock);
    TileLoadWeights<S::kB>(w.tiles + (b - b0) * kBlockTileBytes);
    TileDot<kAsym, S::kC, S::kA, S::kB>();
  };
  // Its epilogue, y += s * d * dot, and the group's offset term after its
  // last block. The block's group and place in it are counted, not divided.
  int64_t g = g0, in_group = 0;
  auto finish = [&](auto set, int64_t b) __attribute__((always_inline)) {
    constexpr int kSet = decltype(set)::value;
    TileStoreDots<TileSet<kSet>::kC>(&dots[kSet]);
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
  using Set0 = std::integral_constant<int, 0>;
  using Set1 = std::integral_constant<int, 1>;
  int64_t b = b0;
  issue(Set0(), b);
  for (; b + 1 < b1; b += 2) {
    issue(Set1(), b + 1);
    finish(Set0(), b);
    if (b + 2 < b1) issue(Set0(), b + 2);
    finish(Set1(), b + 1);
  }
  if (b < b1) finish(Set0(), b);
#pragma GCC unroll 16
  for (int m = 0; m < T; ++m) _mm512_store_ps(acc_out + m * kPairRows, acc[m]);
}

template <class Code, bool kAsym>
void AmxRows(const QuantArgs& a, int64_t r0, int64_t r1) {
  const TileScope tiles;
  const PackedInt8Weights& p = *a.packed;
  const PairBuffers buffers = MakePairBuffers(a);
  const int64_t slab = SlabGroups(a);
  const int64_t rows = a.w->rows;
  const __m512 wscale = _mm512_set1_ps(a.int8_wscale);
  const int64_t end = std::min(p.tiles, (r1 + kTileRows - 1) / kTileRows);
  // r0 is a multiple of 16 (matmul.cc's row blocks), so pairs start at even tiles.
  for (int64_t tile = r0 / kTileRows; tile < end; tile += 2) {
    for (int64_t g0 = 0; g0 < p.groups; g0 += slab) {
      const int64_t g1 = std::min(p.groups, g0 + slab);
      ExpandSlab<Code, kAsym>(a, tile, g0, g1, buffers);
      if (g1 < p.groups) {
        PrefetchSlab(p, tile, g1, std::min(p.groups, g1 + slab));
      } else if (tile + 2 < end) {
        PrefetchSlab(p, tile + 2, 0, std::min(p.groups, slab));
      }
      for (int64_t i = 0; i < a.n; i += kXChunkRows) {
        const int x_rows = static_cast<int>(std::min<int64_t>(kXChunkRows, a.n - i));
        WithCount<kXChunkRows>(x_rows, [&](auto t_const) {
          ChunkTimesSlab<kAsym, decltype(t_const)::value>(a, buffers, g0, g1, i,
                                                          buffers.acc + i * kPairRows, g0 == 0);
        });
      }
    }
    const int64_t r = tile * kTileRows;
    const __mmask16 mask = static_cast<__mmask16>((1u << std::min<int64_t>(kPairRows, rows - r)) - 1);
    for (int64_t i = 0; i < a.n; ++i) {
      _mm512_mask_storeu_ps(a.y + i * rows + r, mask,
                            _mm512_mul_ps(_mm512_load_ps(buffers.acc + i * kPairRows), wscale));
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
  // The activation tiles are prepared from kMinRows x rows (matmul.cc).
  if (a.xq_tiles == nullptr) return Int8ByFormat<DotAmxHost>(a, r0, r1);
  DispatchTiledBits(a.bits, [&](auto code) {
    using Code = decltype(code);
    (a.asym ? AmxRows<Code, true> : AmxRows<Code, false>)(a, r0, r1);
  });
}

constexpr KernelTable MakeAmxTable() {
  KernelTable t = WithDense16<VecZmm>(MakeTable<VecZmm, DotAvx512Vnni>());
  t.quant_rows[static_cast<int>(ComputeDtype::kInt8)] = &AmxInt8Rows;
  t.int8_tile_min_rows = kMinRows;
  return t;
}

}  // namespace

const KernelTable& AmxInt8Kernels() {
  static constexpr KernelTable kTable = MakeAmxTable();
  return kTable;
}

}  // namespace kernels
}  // namespace wq
