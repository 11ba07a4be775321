#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <type_traits>

#include <sys/mman.h>

#include "common/formats/bf16.h"
#include "common/io/parallel.h"
#include "common/kernels/code_traits.h"
#include "common/kernels/kernels.h"
#include "common/kernels/kernels_gemm.h"
#include "tbb/blocked_range.h"

namespace wq {
namespace kernels {
namespace {

// Reference: decoded weights held at once, independent of group size.
constexpr int64_t kDecodeChunk = 256;

// Round to nearest even bf16, returned as the fp32 value.
inline float RoundBf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u = (u + 0x7fff + ((u >> 16) & 1)) & 0xffff0000u;
  std::memcpy(&v, &u, 4);
  return v;
}

inline uint16_t Bf16Bits(float rounded) {
  uint32_t u;
  std::memcpy(&u, &rounded, 4);
  return static_cast<uint16_t>(u >> 16);
}

// Calls f(block index, block begin, block end) for the 32-blocks of group g.
template <typename F>
void ForEachBlock(const QuantArgs& a, int64_t g, F&& f) {
  const int64_t gs = g * a.w->group_size;
  const int64_t ge = std::min(gs + a.w->group_size, a.w->cols);
  for (int64_t b = 0; gs + b * kBlock < ge; ++b) {
    f(g * a.blocks_per_group + b, gs + b * kBlock,
      std::min(gs + (b + 1) * kBlock, ge));
  }
}

// One block of len <= kBlock columns: q, its scale and its sum.
void QuantizeBlock(const float* x, int64_t len, int8_t* q, float* d,
                   int32_t* sum) {
  float amax = 0.0f;
  for (int64_t j = 0; j < len; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  int32_t total = 0;
  for (int64_t j = 0; j < len; ++j) {
    const int v = std::clamp(static_cast<int>(std::nearbyint(x[j] * inv)), -127, 127);
    q[j] = static_cast<int8_t>(v);
    total += v;
  }
  *d = amax / 127.0f;
  *sum = total;
}

// x rows (a prefill chunk) from which activation preparation runs in
// parallel over rows: serially it was a visible share of the matmul
// (bench/results/kernels.md).
constexpr int64_t kParallelPrepareRows = 8;

// Row i's group sums xs and activations x (one element per column) in the
// tile kernels' chunked copies (kernels.h QuantArgs::xs_chunks and
// xq_tiles / xb16_tiles).
template <class T>
void CopyToTiles(const QuantArgs& a, int64_t i, const float* xs, const T* x, float* xs_chunks,
                 T* x_tiles) {
  const int64_t groups = a.w->groups_per_row;
  const int64_t chunk = i / kXChunkRows, lane = i % kXChunkRows;
  float* xs_chunk = xs_chunks + chunk * groups * kXChunkRows + lane;
  for (int64_t g = 0; g < groups; ++g) xs_chunk[g * kXChunkRows] = xs[g];
  constexpr int64_t kTileValues = kXChunkRows * kBlock;
  T* row_tiles = x_tiles + chunk * a.blocks_per_row * kTileValues + lane * kBlock;
  for (int64_t g = 0; g < groups; ++g) {
    ForEachBlock(a, g, [&](int64_t b, int64_t bs, int64_t be) {
      std::memcpy(row_tiles + b * kTileValues, x + bs, (be - bs) * sizeof(T));
    });
  }
}

// Row i of the int8 activations: xq, xd, xsa and xs, and with `tiles` its
// places in the chunked copies (kernels.h QuantArgs::xd_chunks, xq_tiles).
void PrepareInt8Row(const QuantArgs& a, QuantizeBlocksFn quantize, bool tiles, int64_t i,
                    ActivationBuffers* p) {
  const QuantizedMatrixView& w = *a.w;
  const int64_t cols = w.cols;
  const int64_t groups = w.groups_per_row;
  const int64_t bpr = a.blocks_per_row;
  const float* x = a.x + i * cols;
  int8_t* xq = p->xq.data() + i * cols;
  float* xd = p->xd.data() + i * bpr;
  int32_t* xsa = p->xsa.data() + i * bpr;
  float* xs = p->xs.data() + i * groups;
  if (w.group_size % kBlock == 0 && cols % w.group_size == 0) {
    quantize(x, bpr, xq, xd, xsa);  // Whole blocks: the row in one call.
  } else {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t gs = g * w.group_size;
      const int64_t len = std::min<int64_t>(w.group_size, cols - gs);
      const int64_t b0 = g * a.blocks_per_group;
      const int64_t full = len / kBlock;
      quantize(x + gs, full, xq + gs, xd + b0, xsa + b0);
      if (len % kBlock != 0) {
        const int64_t at = gs + full * kBlock;
        QuantizeBlock(x + at, len % kBlock, xq + at, xd + b0 + full, xsa + b0 + full);
      }
    }
  }
  for (int64_t g = 0; g < groups; ++g) {
    float sum = 0.0f;
    ForEachBlock(a, g, [&](int64_t b, int64_t, int64_t) { sum += xd[b] * static_cast<float>(xsa[b]); });
    xs[g] = sum;
  }
  if (!tiles) return;
  const int64_t chunk = i / kXChunkRows, lane = i % kXChunkRows;
  float* xd_chunk = p->xd_chunks.data() + chunk * bpr * kXChunkRows + lane;
  for (int64_t b = 0; b < bpr; ++b) xd_chunk[b * kXChunkRows] = xd[b];
  CopyToTiles(a, i, xs, xq, p->xs_chunks.data(), p->xq_tiles.data());
}

// Row i of the fp32 / bf16 activations: xf, xs and for bf16 xb16, and with
// `tiles` (bf16) its places in the chunked copies.
void PrepareFloatRow(const QuantArgs& a, bool tiles, int64_t i, ActivationBuffers* p) {
  const int64_t cols = a.w->cols;
  const int64_t groups = a.w->groups_per_row;
  const bool bf16 = a.compute == ComputeDtype::kBf16;
  const float* x = a.x + i * cols;
  float* xf = p->xf.data() + i * cols;
  uint16_t* xb16 = bf16 ? p->xb16.data() + i * cols : nullptr;
  float* xs = p->xs.data() + i * groups;
  for (int64_t g = 0; g < groups; ++g) {
    float sum = 0.0f;
    ForEachBlock(a, g, [&](int64_t, int64_t bs, int64_t be) {
      for (int64_t k = bs; k < be; ++k) {
        const float v = bf16 ? RoundBf16(x[k]) : x[k];
        xf[k] = v;
        if (bf16) xb16[k] = Bf16Bits(v);
        sum += v;
      }
    });
    xs[g] = sum;
  }
  if (tiles) CopyToTiles(a, i, xs, xb16, p->xs_chunks.data(), p->xb16_tiles.data());
}

// Runs prepare(i) for every x row, in parallel from kParallelPrepareRows.
template <class F>
void ForEachXRow(int64_t n, F&& prepare) {
  if (n < kParallelPrepareRows) {
    for (int64_t i = 0; i < n; ++i) prepare(i);
    return;
  }
  ParallelFor(tbb::blocked_range<int64_t>(0, n), [&](const tbb::blocked_range<int64_t>& range) {
    for (int64_t i = range.begin(); i < range.end(); ++i) prepare(i);
  });
}

void PrepareActivations(QuantizeBlocksFn quantize, bool tiles, QuantArgs* a,
                        ActivationBuffers* p) {
  const int64_t cols = a->w->cols;
  const int64_t groups = a->w->groups_per_row;
  const int64_t n = a->n;
  // Tile copies exist for int8 and bf16; zero past n, as the tile kernels
  // read whole chunks.
  tiles = tiles && a->compute != ComputeDtype::kFp32;
  const int64_t chunk_rows = (n + kXChunkRows - 1) / kXChunkRows * kXChunkRows;
  if (tiles) p->xs_chunks.assign(chunk_rows * groups, 0.0f);
  p->xs.resize(n * groups);
  if (a->compute == ComputeDtype::kInt8) {
    p->xq.resize(n * cols);
    p->xd.resize(n * a->blocks_per_row);
    p->xsa.resize(n * a->blocks_per_row);
    if (tiles) {
      p->xd_chunks.assign(chunk_rows * a->blocks_per_row, 0.0f);
      p->xq_tiles.assign(chunk_rows * a->blocks_per_row * kBlock, 0);
    }
    ForEachXRow(n, [&](int64_t i) { PrepareInt8Row(*a, quantize, tiles, i, p); });
  } else {
    p->xf.resize(n * cols);
    if (a->compute == ComputeDtype::kBf16) p->xb16.resize(n * cols);
    if (tiles) p->xb16_tiles.assign(chunk_rows * a->blocks_per_row * kBlock, 0);
    ForEachXRow(n, [&](int64_t i) { PrepareFloatRow(*a, tiles, i, p); });
  }
  a->xf = p->xf.data();
  a->xb16 = p->xb16.data();
  a->xq = p->xq.data();
  a->xd = p->xd.data();
  a->xsa = p->xsa.data();
  a->xs = p->xs.data();
  const bool int8 = a->compute == ComputeDtype::kInt8;
  a->xs_chunks = tiles ? p->xs_chunks.data() : nullptr;
  a->xd_chunks = tiles && int8 ? p->xd_chunks.data() : nullptr;
  a->xq_tiles = tiles && int8 ? p->xq_tiles.data() : nullptr;
  a->xb16_tiles = tiles && !int8 ? p->xb16_tiles.data() : nullptr;
}

// Fills the per-format facts of `a` from the QuantFormat row; returns false
// when int8 compute cannot represent the format (asym codebooks).
bool DescribeFormat(const QuantizedMatrixView& w, QuantArgs* a) {
  const QuantFormat& f = GetQuantFormat(w.spec.type);
  const absl::Span<const float> levels = f.levels(w.spec.scheme);
  a->bits = f.bits;
  a->asym = w.spec.scheme == QuantScheme::kAsym;
  a->affine = true;
  for (size_t c = 0; c < levels.size(); ++c) {
    a->affine = a->affine && levels[c] == levels[0] + static_cast<float>(c);
  }
  a->level0 = levels[0];
  // Codes past the table (fp4_e2m1's 16th) never occur in valid matrices.
  for (size_t c = 0; c < std::min<size_t>(16, levels.size()); ++c) {
    a->lut[c] = a->compute == ComputeDtype::kBf16 ? RoundBf16(levels[c])
                                                  : levels[c];
  }
  if (a->affine) {
    for (size_t c = 0; c < levels.size(); ++c) a->ulevel[c] = c;
    a->int8_off_base = static_cast<int>(-levels[0]);
    a->int8_wscale = 1.0f;
  } else {
    float amax = 0.0f;
    for (float l : levels) amax = std::fmax(amax, std::fabs(l));
    for (size_t c = 0; c < levels.size(); ++c) {
      a->ulevel[c] = static_cast<uint8_t>(
          std::nearbyint(levels[c] * 127.0f / amax) + 128.0f);
    }
    a->int8_off_base = 128;
    a->int8_wscale = amax / 127.0f;
  }
  return a->affine || !a->asym;
}

}  // namespace

void QuantizeBlocksRef(const float* x, int64_t blocks, int8_t* q, float* d,
                       int32_t* sum) {
  for (int64_t b = 0; b < blocks; ++b) {
    QuantizeBlock(x + b * kBlock, kBlock, q + b * kBlock, d + b, sum + b);
  }
}

void DescribeCall(const QuantizedMatrixView& w, ComputeDtype compute,
                  QuantArgs* a) {
  a->w = &w;
  a->compute = compute;
  if (!DescribeFormat(w, a)) {
    a->compute = ComputeDtype::kFp32;
    DescribeFormat(w, a);
  }
  a->blocks_per_group = (w.group_size + kBlock - 1) / kBlock;
  a->blocks_per_row = a->blocks_per_group * w.groups_per_row;
  // The one fallback for codes the SIMD kernels do not unpack (code_traits.h):
  // a width without tiles, or levels that need a table it has none for.
  bool simd_codes = false;
  DispatchBits(a->bits, [&](auto code) {
    using Code = decltype(code);
    if constexpr (Code::kTiled) simd_codes = Code::kLevelTable || a->affine;
  });
  const bool simd_format = simd_codes && w.group_size % kBlock == 0;
  a->simd_cols = simd_format ? w.cols / w.group_size * w.group_size : 0;
}

void PrepareCall(const QuantizedMatrixView& w, const float* x, int64_t n,
                 float* y, ComputeDtype compute, QuantizeBlocksFn quantize, bool tiles,
                 QuantArgs* a, ActivationBuffers* buffers) {
  DescribeCall(w, compute, a);
  a->n = n;
  a->x = x;
  a->y = y;
  PrepareActivations(quantize, tiles, a, buffers);
}

void Unmapper::operator()(uint8_t* p) const { ::munmap(p, bytes); }

namespace {

// Anonymous memory, populated up front: faults inside the packing loop made
// loads slower, huge pages too (bench/results/kernels.md).
std::unique_ptr<uint8_t, Unmapper> MapPopulated(size_t bytes) {
  const size_t length = std::max<size_t>(bytes, 1);
  void* p = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();  // As any allocation would.
#ifdef MADV_POPULATE_WRITE
  ::madvise(p, length, MADV_POPULATE_WRITE);  // Linux >= 5.14; else faults on use.
#endif
  return std::unique_ptr<uint8_t, Unmapper>(static_cast<uint8_t*>(p), Unmapper{length});
}

}  // namespace

Int8TileGeometry Int8TileLayout(const QuantArgs& a) {
  const QuantizedMatrixView& w = *a.w;
  Int8TileGeometry geometry;
  DispatchTiledBits(a.bits, [&](auto code) {
    geometry = Int8TileGeometryFor<decltype(code)::kBits>(
        w.rows, a.simd_cols / w.group_size, a.blocks_per_group,
        w.spec.scale_encoding == ScaleEncoding::kBf16, w.spec.scheme == QuantScheme::kAsym);
  });
  return geometry;
}

namespace {

// Visits every group record of the tiles at `base` (in parallel over
// tiles): visit(rec, r0, rows, g) with rec the record of group g of the tile
// whose first row of W is r0 and which holds `rows` real rows.
template <typename Byte, typename Visit>
void ForEachTileGroup(const QuantArgs& a, const PackedInt8Weights& p, Byte* base,
                      const Visit& visit) {
  ParallelFor(tbb::blocked_range<int64_t>(0, p.tiles),
              [&](const tbb::blocked_range<int64_t>& range) {
                for (int64_t t = range.begin(); t < range.end(); ++t) {
                  const int64_t r0 = t * kTileRows;
                  const int64_t rows = std::min<int64_t>(kTileRows, a.w->rows - r0);
                  Byte* rec = base + t * p.tile_stride;
                  for (int64_t g = 0; g < p.groups; ++g, rec += p.group_stride) {
                    visit(rec, r0, rows, g);
                  }
                }
              });
}

// The chunks of block b of a group record (TileCodeChunk holds bytes only,
// so any address is aligned for it).
template <typename Byte>
auto* BlockChunks(Byte* rec, const PackedInt8Weights& p, int64_t b) {
  using Chunk = std::conditional_t<std::is_const_v<Byte>, const TileCodeChunk, TileCodeChunk>;
  return reinterpret_cast<Chunk*>(rec + b * p.block_bytes);
}

template <class Code>
void WriteTiles(const QuantArgs& a, const PackedInt8Weights& p, uint8_t* out) {
  const QuantizedMatrixView& w = *a.w;
  ForEachTileGroup(a, p, out, [&](uint8_t* rec, int64_t r0, int64_t rows, int64_t g) {
    for (int64_t b = 0; b < a.blocks_per_group; ++b) {
      TileCodeChunk* chunk = BlockChunks(rec, p, b);
      const int64_t byte = (g * a.blocks_per_group + b) * Code::kRowBlockBytes;
      for (int64_t j = 0; j < rows; ++j) {
        uint8_t lane_bytes[Code::kRowBlockBytes];
        Code::RowToTileLanes(w.codes + (r0 + j) * w.row_bytes + byte, lane_bytes);
        for (int64_t c = 0; c < Code::TileBlock::kChunks; ++c) {
          std::memcpy(chunk[c].lane[j], lane_bytes + kLaneBytes * c, kLaneBytes);
        }
      }
    }
    // Padding rows keep zero scales and zero points.
    auto index = [&](int64_t j) { return (r0 + j) * w.groups_per_row + g; };
    if (p.scale_bytes == sizeof(TileScalesBf16::bits[0])) {
      TileScalesBf16 scales{};
      // Exact: the scales are bf16 values.
      for (int64_t j = 0; j < rows; ++j) scales.bits[j] = FloatToBf16(w.scales[index(j)]);
      std::memcpy(rec + p.scales_offset, &scales, sizeof(scales));
    } else {
      TileScalesF32 scales{};
      for (int64_t j = 0; j < rows; ++j) scales.scale[j] = w.scales[index(j)];
      std::memcpy(rec + p.scales_offset, &scales, sizeof(scales));
    }
    if (w.zeros == nullptr) return;
    TileZeros zeros{};
    for (int64_t j = 0; j < rows; ++j) zeros.zero[j] = w.zeros[index(j)];
    std::memcpy(rec + p.zeros_offset, &zeros, sizeof(zeros));
  });
}

template <class Code>
void ReadTiles(const QuantArgs& a, const PackedInt8Weights& p, uint8_t* codes, float* scales,
               uint8_t* zeros) {
  const QuantizedMatrixView& w = *a.w;
  ForEachTileGroup(a, p, p.base, [&](const uint8_t* rec, int64_t r0, int64_t rows, int64_t g) {
    for (int64_t b = 0; b < a.blocks_per_group; ++b) {
      const TileCodeChunk* chunk = BlockChunks(rec, p, b);
      const int64_t byte = (g * a.blocks_per_group + b) * Code::kRowBlockBytes;
      for (int64_t j = 0; j < rows; ++j) {
        uint8_t lane_bytes[Code::kRowBlockBytes];
        for (int64_t c = 0; c < Code::TileBlock::kChunks; ++c) {
          std::memcpy(lane_bytes + kLaneBytes * c, chunk[c].lane[j], kLaneBytes);
        }
        Code::TileLanesToRow(lane_bytes, codes + (r0 + j) * w.row_bytes + byte);
      }
    }
    auto index = [&](int64_t j) { return (r0 + j) * w.groups_per_row + g; };
    if (p.scale_bytes == sizeof(TileScalesBf16::bits[0])) {
      TileScalesBf16 tile_scales;
      std::memcpy(&tile_scales, rec + p.scales_offset, sizeof(tile_scales));
      for (int64_t j = 0; j < rows; ++j) scales[index(j)] = Bf16ToFloat(tile_scales.bits[j]);
    } else {
      TileScalesF32 tile_scales;
      std::memcpy(&tile_scales, rec + p.scales_offset, sizeof(tile_scales));
      for (int64_t j = 0; j < rows; ++j) scales[index(j)] = tile_scales.scale[j];
    }
    if (zeros == nullptr) return;
    TileZeros tile_zeros;
    std::memcpy(&tile_zeros, rec + p.zeros_offset, sizeof(tile_zeros));
    for (int64_t j = 0; j < rows; ++j) zeros[index(j)] = tile_zeros.zero[j];
  });
}

}  // namespace

void WriteInt8Tiles(const QuantArgs& a, const PackedInt8Weights& p, uint8_t* out) {
  DispatchTiledBits(a.bits, [&](auto code) { WriteTiles<decltype(code)>(a, p, out); });
}

void ReadInt8Tiles(const QuantArgs& a, const PackedInt8Weights& p, uint8_t* codes,
                   float* scales, uint8_t* zeros) {
  DispatchTiledBits(a.bits, [&](auto code) { ReadTiles<decltype(code)>(a, p, codes, scales, zeros); });
}

namespace {

// W's tile layout with memory of its own, zeroed (fresh anonymous memory
// reads as zero, as WriteInt8Tiles wants).
PackedInt8Weights OwnedInt8Tiles(const QuantArgs& a) {
  PackedInt8Weights p(Int8TileLayout(a));
  p.owned = MapPopulated(static_cast<size_t>(p.bytes()));
  p.base = p.owned.get();
  return p;
}

}  // namespace

PackedInt8Weights CopyInt8Tiles(const QuantArgs& a, const uint8_t* tiles) {
  PackedInt8Weights p = OwnedInt8Tiles(a);
  ParallelFor(tbb::blocked_range<int64_t>(0, p.tiles), [&](const tbb::blocked_range<int64_t>& r) {
    const int64_t offset = r.begin() * p.tile_stride;
    std::memcpy(p.owned.get() + offset, tiles + offset,
                static_cast<size_t>((r.end() - r.begin()) * p.tile_stride));
  });
  return p;
}

PackedInt8Weights PackInt8Weights(const QuantArgs& a) {
  PackedInt8Weights p = OwnedInt8Tiles(a);
  WriteInt8Tiles(a, p, p.owned.get());
  return p;
}

void RefRows(const QuantArgs& a, int64_t row, int64_t col_begin,
             bool accumulate) {
  const QuantizedMatrixView& w = *a.w;
  const int64_t rows = w.rows;
  const int64_t cols = w.cols;
  float* y = a.y;
  if (!accumulate) {
    for (int64_t i = 0; i < a.n; ++i) y[i * rows + row] = 0.0f;
  }
  if (a.compute == ComputeDtype::kFp32) {
    float buf[kDecodeChunk];
    for (int64_t k0 = col_begin; k0 < cols; k0 += kDecodeChunk) {
      const int64_t len = std::min(kDecodeChunk, cols - k0);
      DequantizeRowRange(w, row, k0, k0 + len, buf);
      for (int64_t i = 0; i < a.n; ++i) {
        const float* xi = a.x + i * cols + k0;
        float sum = 0.0f;
        for (int64_t k = 0; k < len; ++k) sum += buf[k] * xi[k];
        y[i * rows + row] += sum;
      }
    }
    return;
  }
  const uint8_t* codes = w.codes + row * w.row_bytes;
  const float* scales = w.scales + row * w.groups_per_row;
  const uint8_t* zeros = w.zeros ? w.zeros + row * w.groups_per_row : nullptr;
  const absl::Span<const float> levels =
      GetQuantFormat(w.spec.type).levels(w.spec.scheme);
  for (int64_t g = col_begin / w.group_size; g < w.groups_per_row; ++g) {
    const float zero = zeros ? static_cast<float>(zeros[g]) : 0.0f;
    for (int64_t i = 0; i < a.n; ++i) {
      float gsum = 0.0f;
      float offset = 0.0f;  // int8: off * sum of the group's activations.
      ForEachBlock(a, g, [&](int64_t b, int64_t bs, int64_t be) {
        if (a.compute == ComputeDtype::kBf16) {
          for (int64_t k = bs; k < be; ++k) {
            const float level = RoundBf16(levels[CodeAt(codes, k, a.bits)]);
            gsum += (level - zero) * a.xf[i * cols + k];
          }
          return;
        }
        int32_t dot = 0;
        for (int64_t k = bs; k < be; ++k) {
          dot += a.ulevel[CodeAt(codes, k, a.bits)] * a.xq[i * cols + k];
        }
        gsum += a.xd[i * a.blocks_per_row + b] * static_cast<float>(dot);
      });
      if (a.compute == ComputeDtype::kInt8) {
        offset = (a.int8_off_base + zero) * a.xs[i * w.groups_per_row + g];
      }
      const float s = scales[g] *
                      (a.compute == ComputeDtype::kInt8 ? a.int8_wscale : 1.0f);
      y[i * rows + row] += s * (gsum - offset);
    }
  }
}

namespace {

template <float (*Widen)(uint16_t)>
void Dense16RowsRef(const Dense16Args& a, int64_t r0, int64_t r1) {
  for (int64_t i = 0; i < a.n; ++i) {
    const float* x = a.xf + i * a.cols;
    for (int64_t r = r0; r < r1; ++r) {
      const uint16_t* w = a.w + r * a.cols;
      float s = 0.0f;
      for (int64_t k = 0; k < a.cols; ++k) s += Widen(w[k]) * x[k];
      a.y[i * a.rows + r] = s;
    }
  }
}

}  // namespace

void DenseBf16RowsRef(const Dense16Args& a, int64_t r0, int64_t r1) {
  Dense16RowsRef<Bf16ToFloat>(a, r0, r1);
}

void DenseF16RowsRef(const Dense16Args& a, int64_t r0, int64_t r1) {
  Dense16RowsRef<F16ToFloat>(a, r0, r1);
}

void GemmF32ColsRef(const GemmF32Args& g, int64_t c0, int64_t c1) {
  GemmF32ColsEigen(g, c0, c1);
}

}  // namespace kernels
}  // namespace wq
