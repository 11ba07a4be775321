// Matrix-multiply kernels for linear layers. The entry points dispatch at run
// time to the fastest kernels this CPU supports (see cpu_features.h); with
// WQ_ISA=scalar they run the portable reference code.
#ifndef WQ_COMMON_MATMUL_H_
#define WQ_COMMON_MATMUL_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/types/span.h"
#include "common/formats/compute_dtype.h"
#include "common/formats/quant_format.h"
#include "common/kernels/int8_tiles.h"

namespace wq {
namespace kernels {
struct PackedInt8Weights;
}  // namespace kernels

// W re-laid out once for the kernels of one compute dtype (kernels.h).
using PackedWeights = kernels::PackedInt8Weights;

// y[n, rows] = x[n, cols] · W^T for dense fp32 W [rows, cols], all row-major.
void MatMulF32(const float* w, int64_t rows, int64_t cols, const float* x,
               int64_t n, float* y);

// C = op(A) · op(B) in fp32, as BLAS sgemm with alpha 1 and beta 0: all
// row-major, op(A) [m, k] (A stored [k, m] when trans_a), op(B) [k, n] (B
// stored [n, k] when trans_b), leading dimensions in floats. Eigen built for
// this CPU's kernel ISA, split over the caller's arena in column blocks of a
// fixed width, so the result does not depend on the thread count. For the
// calibration algorithms' dense products (TEQ's training).
void GemmF32(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
             int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc);

// Same with a dense bfloat16 W (bits, [rows, cols] row-major), as an
// unquantized bf16 checkpoint stores it: x is rounded to bf16 (nearest even)
// and the exact products are summed in fp32 — with vdpbf16ps where the CPU
// has AVX512_BF16, else by widening W to fp32 (kernels_dense16.h).
void MatMulBf16(const uint16_t* w, int64_t rows, int64_t cols, const float* x, int64_t n,
                float* y);

// Same with a dense IEEE half W (an f16 checkpoint as stored): W widened to
// fp32 (exact) and multiplied with x as it is, in fp32 — the arithmetic of the
// checkpoint converted to fp32, without the copy.
void MatMulF16(const uint16_t* w, int64_t rows, int64_t cols, const float* x, int64_t n,
               float* y);

// Same with a quantized W. Decodes W a bounded chunk at a time (never the whole
// fp32 matrix); `w` must be valid (see ValidateQuantizedMatrixView).
//
// `compute` picks the arithmetic (kFp32 matches the reference up to
// reassociation). kBf16 rounds x and the levels to bf16 (round to nearest
// even) and accumulates in fp32. kInt8 quantizes x per 32-block of each
// group to int8 (absmax / 127, round half to even) and multiplies integer
// weight levels exactly; codebook levels are first rounded to int8 with
// max |level| -> 127 (an extra ~0.4% relative weight error), and int8 needs
// an integer format or a sym scheme (otherwise it computes in fp32).
//
// `packed`, from PackWeights(w, compute), saves re-laying out W per call;
// without it the kernels that need a packed W build one for the call.
void MatMulQuantized(const QuantizedMatrixView& w, const float* x, int64_t n,
                     float* y, ComputeDtype compute = ComputeDtype::kFp32,
                     const PackedWeights* packed = nullptr);

// One product of MatMulQuantizedShared: y = x · W^T, W = *w.
struct QuantizedProduct {
  const QuantizedMatrixView* w = nullptr;
  float* y = nullptr;
  const PackedWeights* packed = nullptr;
};

// Whether two weights read the same prepared activations: same in_features,
// format and group size.
bool SharesActivations(const QuantizedMatrixView& a, const QuantizedMatrixView& b);

// Several products of one x, as MatMulQuantized each, in one parallel pass:
// one activation preparation and one fork-join instead of one per weight (a
// decoder block's q/k/v and gate/up projections). Every weight must share
// activations with the first (SharesActivations).
void MatMulQuantizedShared(absl::Span<const QuantizedProduct> products, const float* x,
                           int64_t n, ComputeDtype compute = ComputeDtype::kFp32);

// The layout MatMulQuantized's kernels want for (w, compute) on this CPU, or
// nullptr when they read the view as it is (the scalar reference). Holds no
// pointer into w. The int8 tiles for every compute dtype, which the kernels
// then read instead of the view's codes, scales and zeros (except columns
// past whole groups of 32-blocks: see Int8TileGeometryOf).
std::shared_ptr<const PackedWeights> PackWeights(const QuantizedMatrixView& w,
                                                 ComputeDtype compute);

// Whether PackWeights(w, compute) holds all of w on this CPU, so that
// MatMulQuantized with it never reads w's codes, scales or zeros (which may
// then be null): the columns are whole groups of whole 32-blocks.
bool PackedCoversView(const QuantizedMatrixView& w, ComputeDtype compute);

// Bytes of a packed weight: what the kernels read per product.
int64_t PackedBytes(const PackedWeights& packed);

// The arithmetic MatMulQuantized really uses for (w, compute): kInt8 falls
// back to kFp32 for formats it cannot represent (asym codebooks).
ComputeDtype EffectiveCompute(const QuantizedMatrixView& w, ComputeDtype compute);

// The int8 kernels' layout of w (int8_tiles.h) as an artifact can store it,
// so that loading maps it instead of packing. It depends on w's format and
// shape only. nullopt when w cannot be stored that way: its format has no
// int8 kernel, or its columns are not whole groups of whole 32-blocks.
std::optional<kernels::Int8TileGeometry> Int8TileGeometryOf(const QuantizedMatrixView& w);
// w in that layout, Int8TileGeometryOf(w)->bytes() bytes.
std::string Int8Tiles(const QuantizedMatrixView& w);
// The packed weights of (w, compute) from `tiles` when MatMulQuantized's
// kernels read that layout on this CPU, else nullptr: read in place (tiles
// must outlive the result) or, with `copy`, copied into memory of their
// own. w gives the shape and spec; its pointers are not read.
std::shared_ptr<const PackedWeights> MapInt8Tiles(const QuantizedMatrixView& w,
                                                  ComputeDtype compute, const uint8_t* tiles,
                                                  bool copy = false);
// w's codes, scales and zeros back from its tile layout
// (Int8TileGeometryOf(shape)->bytes() bytes at `tiles`): `shape` gives rows,
// cols and spec, its pointers are not read. Exact: Int8Tiles then this gives
// the same matrix.
QuantizedMatrix FromInt8Tiles(const QuantizedMatrixView& shape, const uint8_t* tiles);

}  // namespace wq

#endif  // WQ_COMMON_MATMUL_H_
