// Internal interface between the dispatcher (matmul.cc) and the per-ISA
// kernel translation units (kernels_*.cc). Not for use outside common/.
#ifndef WQ_COMMON_KERNELS_H_
#define WQ_COMMON_KERNELS_H_

#include <cstdint>
#include <vector>

#include "common/compute_dtype.h"
#include "common/cpu_features.h"
#include "common/quant_format.h"

namespace wq {
namespace kernels {

inline constexpr int kBlock = 32;  // SIMD / int8 activation block.

// Everything a kernel needs about one MatMulQuantized call: the weights, the
// per-format facts derived once from the QuantFormat row, and the activations
// prepared (once per call, portable code) for the compute dtype.
//
// Activation layout: per x row, columns are split into groups and each group
// into 32-blocks (the last one of a group may be short). For 4-bit weights
// every full block is stored de-interleaved (16 even then 16 odd columns) so
// that low/high nibbles meet their activations without shuffles.
struct QuantArgs {
  const QuantizedMatrixView* w = nullptr;
  ComputeDtype compute = ComputeDtype::kFp32;
  int bits = 0;
  bool asym = false;
  bool affine = false;    // level[c] == level[0] + c (integer formats).
  float level0 = 0.0f;    // level[0] when affine.
  float lut[16] = {};     // level[c] (bf16-rounded for kBf16); 4-bit only.
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
  const float* xs = nullptr;   // [n, groups]: sum over blocks of xd * xsa.
};

// Storage behind the activation pointers of a QuantArgs.
struct ActivationBuffers {
  std::vector<float> xf;
  std::vector<uint16_t> xb16;
  std::vector<int8_t> xq;
  std::vector<float> xd;
  std::vector<int32_t> xsa;
  std::vector<float> xs;
};

// Fills `a` for one MatMulQuantized call: format facts from the QuantFormat
// row, simd_cols, and the activations prepared for `compute` (kInt8 falls
// back to kFp32 where it cannot represent the format).
void PrepareCall(const QuantizedMatrixView& w, const float* x, int64_t n,
                 float* y, ComputeDtype compute, QuantArgs* a,
                 ActivationBuffers* buffers);

// Writes y[i, row] for all i, covering columns [col_begin, cols) where
// col_begin is a group boundary, in the scalar reference arithmetic of
// a.compute; `accumulate` adds to y instead of storing.
void RefRows(const QuantArgs& a, int64_t row, int64_t col_begin,
             bool accumulate);

struct KernelTable {
  // y rows [r0, r1) of a quantized matmul; nullptr entries fall back to the
  // scalar reference.
  void (*quant_rows[kNumComputeDtypes])(const QuantArgs& a, int64_t r0,
                                        int64_t r1);
  // y[:, r0:r1] = x · W[r0:r1]^T for dense fp32 W; nullptr: reference.
  void (*f32_rows)(const float* w, int64_t rows, int64_t cols, const float* x,
                   int64_t n, float* y, int64_t r0, int64_t r1);
};

// Defined by the kernels_<isa>.cc units (each compiled for its ISA only).
const KernelTable& Avx2Kernels();
const KernelTable& AvxVnniKernels();
const KernelTable& Avx512Kernels();
const KernelTable& Avx512VnniKernels();
const KernelTable& Avx512Bf16Kernels();

}  // namespace kernels
}  // namespace wq

#endif  // WQ_COMMON_KERNELS_H_
