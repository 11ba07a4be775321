// Reference (scalar, portable) matrix-multiply kernels for linear layers.
// SIMD variants with run-time dispatch must match these.
#ifndef WQ_COMMON_MATMUL_H_
#define WQ_COMMON_MATMUL_H_

#include <cstdint>

#include "common/quant_format.h"

namespace wq {

// y[n, rows] = x[n, cols] · W^T for dense fp32 W [rows, cols], all row-major.
void MatMulF32(const float* w, int64_t rows, int64_t cols, const float* x,
               int64_t n, float* y);

// Same with a quantized W. Decodes W a bounded chunk at a time (never the whole
// fp32 matrix); `w` must be valid (see ValidateQuantizedMatrixView).
void MatMulQuantized(const QuantizedMatrixView& w, const float* x, int64_t n,
                     float* y);

}  // namespace wq

#endif  // WQ_COMMON_MATMUL_H_
