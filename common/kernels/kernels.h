// Internal interface between the dispatcher (matmul.cc) and the per-ISA
// kernel translation units (kernels_*.cc). Not for use outside common/.
#ifndef WQ_COMMON_KERNELS_H_
#define WQ_COMMON_KERNELS_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/formats/compute_dtype.h"
#include "common/kernels/cpu_features.h"
#include "common/kernels/int8_tiles.h"
#include "common/formats/quant_format.h"

namespace wq {
namespace kernels {

// x rows per chunk of the activations' tile copies (QuantArgs xd_chunks,
// xs_chunks, xq_tiles, xb16_tiles): the rows of one AMX activation tile.
inline constexpr int kXChunkRows = 16;

// Deleter of an anonymous mapping of `bytes`.
struct Unmapper {
  size_t bytes = 0;
  void operator()(uint8_t* p) const;
};

// W re-laid out for the int8-compute kernels (int8_tiles.h), built once per
// weight (PackInt8Weights) or mapped from an artifact that stores it. The
// fp32 and bf16 kernels read it too.
struct PackedInt8Weights : Int8TileGeometry {
  PackedInt8Weights() = default;
  explicit PackedInt8Weights(const Int8TileGeometry& geometry) : Int8TileGeometry(geometry) {}
  const uint8_t* base = nullptr;  // bytes() bytes.
  // base's memory when packed in this process; empty when base points into
  // a mapped artifact that outlives this object.
  std::unique_ptr<uint8_t, Unmapper> owned;
  const uint8_t* tile(int64_t t) const { return base + t * tile_stride; }
};

// Everything a kernel needs about one MatMulQuantized call: the weights, the
// per-format facts derived once from the QuantFormat row, and the activations
// prepared (once per call, portable code) for the compute dtype.
//
// Activation layout: per x row, columns are split into groups and each group
// into 32-blocks (the last one of a group may be short), in the natural
// column order for every compute dtype (the packed weights are arranged for
// the activations instead).
struct QuantArgs {
  const QuantizedMatrixView* w = nullptr;
  ComputeDtype compute = ComputeDtype::kFp32;
  int bits = 0;
  bool asym = false;
  bool affine = false;    // level[c] == level[0] + c (integer formats).
  float level0 = 0.0f;    // level[0] when affine.
  // level[c] (bf16-rounded for kBf16), for widths with a level table.
  float lut[16] = {};
  // int8 compute: code -> unsigned 8-bit level u; sum (level - zero) * a ==
  // int8_wscale * sum (u - off) * a with off = int8_off_base + zero.
  uint8_t ulevel[256] = {};
  int int8_off_base = 0;
  float int8_wscale = 1.0f;
  // Columns [0, simd_cols) are whole groups of whole 32-blocks that ISA
  // kernels handle; the rest (or all, when 0) goes to RefRows.
  int64_t simd_cols = 0;
  int64_t blocks_per_group = 0;
  int64_t blocks_per_row = 0;

  int64_t n = 0;
  const float* x = nullptr;    // [n, cols] as given.
  float* y = nullptr;          // [n, rows].
  const float* xf = nullptr;   // [n, cols] fp32 (kFp32) / bf16-rounded (kBf16).
  const uint16_t* xb16 = nullptr;  // [n, cols] bf16 bits, natural order.
  const int8_t* xq = nullptr;  // [n, cols] int8 activations.
  const float* xd = nullptr;   // [n, blocks_per_row] int8 block scales.
  const int32_t* xsa = nullptr;  // [n, blocks_per_row] sums of xq per block.
  // [n, groups]: the group's sum of activations as the compute dtype sees
  // them: int8, sum over blocks of xd * xsa; fp32 / bf16, of xf.
  const float* xs = nullptr;
  // Set for tile kernels only (PrepareCall's `tiles`), else null:
  // xd (int8) and xs again per chunk of kXChunkRows x rows, transposed
  // ([chunk][block or group][kXChunkRows], zero past n), so that a tile
  // kernel reads every row's value at a constant offset from one pointer;
  // and xq (int8) or xb16 (bf16) as activation tiles, per chunk of
  // kXChunkRows rows and per 32-block the chunk's rows' 32 values one
  // after another (zero past n and past a short block):
  // [chunk][blocks_per_row][kXChunkRows][kBlock].
  const float* xd_chunks = nullptr;
  const float* xs_chunks = nullptr;
  const int8_t* xq_tiles = nullptr;
  const uint16_t* xb16_tiles = nullptr;
  // W's tiles, which every SIMD kernel reads.
  const PackedInt8Weights* packed = nullptr;
};

// Storage behind the activation pointers of a QuantArgs.
struct ActivationBuffers {
  std::vector<float> xf;
  std::vector<uint16_t> xb16;
  std::vector<int8_t> xq;
  std::vector<float> xd;
  std::vector<int32_t> xsa;
  std::vector<float> xs;
  std::vector<float> xd_chunks;
  std::vector<float> xs_chunks;
  std::vector<int8_t> xq_tiles;
  std::vector<uint16_t> xb16_tiles;
};

// Quantizes `blocks` whole 32-blocks of x to int8 (absmax / 127, round half
// to even): q[32 * b + j], scale d[b] and sum of q sum[b].
using QuantizeBlocksFn = void (*)(const float* x, int64_t blocks, int8_t* q,
                                  float* d, int32_t* sum);
void QuantizeBlocksRef(const float* x, int64_t blocks, int8_t* q, float* d,
                       int32_t* sum);

// Fills the format facts of `a` (from the QuantFormat row) and simd_cols for
// `compute` (kInt8 falls back to kFp32 where it cannot represent the format).
void DescribeCall(const QuantizedMatrixView& w, ComputeDtype compute,
                  QuantArgs* a);

// Fills `a` for one MatMulQuantized call: DescribeCall, then the activations
// prepared for a.compute (whole int8 blocks through `quantize`; with
// `tiles`, int8 or bf16 activations also as the tile kernels' copies).
void PrepareCall(const QuantizedMatrixView& w, const float* x, int64_t n,
                 float* y, ComputeDtype compute, QuantizeBlocksFn quantize, bool tiles,
                 QuantArgs* a, ActivationBuffers* buffers);

// The int8 kernels' layout of W (a from DescribeCall with compute kInt8 and
// simd_cols > 0).
Int8TileGeometry Int8TileLayout(const QuantArgs& a);
// Writes W's tiles to out[0, layout.bytes()), which must be zeroed (the
// padding rows of a ragged last tile stay zero).
void WriteInt8Tiles(const QuantArgs& a, const PackedInt8Weights& layout, uint8_t* out);
// The inverse for columns [0, a.simd_cols): codes [rows, row_bytes], scales
// and, asym only, zeros [rows, groups_per_row] of the real rows.
void ReadInt8Tiles(const QuantArgs& a, const PackedInt8Weights& tiles, uint8_t* codes,
                   float* scales, uint8_t* zeros);
// Int8TileLayout and WriteInt8Tiles into memory of its own.
PackedInt8Weights PackInt8Weights(const QuantArgs& a);
// W's tiles (Int8TileLayout(a).bytes() at `tiles`) copied into memory of
// its own.
PackedInt8Weights CopyInt8Tiles(const QuantArgs& a, const uint8_t* tiles);

// Writes y[i, row] for all i, covering columns [col_begin, cols) where
// col_begin is a group boundary, in the scalar reference arithmetic of
// a.compute; `accumulate` adds to y instead of storing.
void RefRows(const QuantArgs& a, int64_t row, int64_t col_begin,
             bool accumulate);

// One dense 16-bit float product y[n, rows] = x · W^T (matmul.h MatMulBf16,
// MatMulF16): W as bf16 or f16 bits [rows, cols]; x [n, cols] as floats
// (xf) — for bf16 rounded to bf16 once per call and also as bits (xb16), for
// f16 as given (xb16 null).
struct Dense16Args {
  const uint16_t* w = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t n = 0;
  const float* xf = nullptr;
  const uint16_t* xb16 = nullptr;
  float* y = nullptr;
};

// y rows [r0, r1) of that product in the scalar reference arithmetic: the
// exact products of the widened W and xf summed in fp32, column after column.
void DenseBf16RowsRef(const Dense16Args& a, int64_t r0, int64_t r1);
void DenseF16RowsRef(const Dense16Args& a, int64_t r0, int64_t r1);

// C = op(A) · op(B) in fp32, as BLAS sgemm with alpha 1 and beta 0: all
// row-major, op(A) [m, k] (A [k, m] when trans_a), op(B) [k, n] (B [n, k]
// when trans_b), leading dimensions in floats.
struct GemmF32Args {
  bool trans_a = false;
  bool trans_b = false;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  const float* a = nullptr;
  int64_t lda = 0;
  const float* b = nullptr;
  int64_t ldb = 0;
  float* c = nullptr;
  int64_t ldc = 0;
};

// Columns [c0, c1) of that product by Eigen built with baseline flags
// (kernels_gemm.h).
void GemmF32ColsRef(const GemmF32Args& g, int64_t c0, int64_t c1);

struct KernelTable {
  // y rows [r0, r1) of a quantized matmul (r0 a multiple of 2 * kTileRows,
  // matmul.cc's row blocks); nullptr entries fall back to the scalar
  // reference. Each reads W from a.packed.
  void (*quant_rows[kNumComputeDtypes])(const QuantArgs& a, int64_t r0,
                                        int64_t r1);
  // Per compute dtype: from this many x rows its entry runs tile kernels,
  // which read QuantArgs' chunked copies of the activations; 0: never.
  int64_t tile_min_rows[kNumComputeDtypes];
  // y[:, r0:r1] = x · W[r0:r1]^T for dense fp32 W; nullptr: reference.
  void (*f32_rows)(const float* w, int64_t rows, int64_t cols, const float* x,
                   int64_t n, float* y, int64_t r0, int64_t r1);
  QuantizeBlocksFn quantize_blocks;
  // Rows [r0, r1) of a dense bf16 / f16 product (kernels_dense16.h).
  void (*dense_bf16_rows)(const Dense16Args& a, int64_t r0, int64_t r1);
  void (*dense_f16_rows)(const Dense16Args& a, int64_t r0, int64_t r1);
  // Columns [c0, c1) of a dense fp32 GEMM by Eigen built for the ISA.
  void (*gemm_f32_cols)(const GemmF32Args& g, int64_t c0, int64_t c1);
};

// One per row of KERNEL_ISAS, each defined by a unit compiled for its ISA
// only (kernels_isa.cc, or the row's own source).
#define WQ_KERNEL_ISA(id, name, table, cpu_features) const KernelTable& table();
#include "common/kernels/isa_rows.inc"
#undef WQ_KERNEL_ISA

}  // namespace kernels
}  // namespace wq

#endif  // WQ_COMMON_KERNELS_H_
