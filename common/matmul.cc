#include "common/matmul.h"

#include <algorithm>

#include "Eigen/Core"
#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"

namespace wq {
namespace {

// Output rows per parallel task: enough work to amortise scheduling.
constexpr int64_t kRowBlock = 64;
// Decoded weights held at once; a stack buffer independent of group size.
constexpr int64_t kDecodeChunk = 256;

using RowMajor =
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

}  // namespace

void MatMulF32(const float* w, int64_t rows, int64_t cols, const float* x,
               int64_t n, float* y) {
  const Eigen::Map<const RowMajor> wm(w, rows, cols);
  const Eigen::Map<const RowMajor> xm(x, n, cols);
  Eigen::Map<RowMajor> ym(y, n, rows);
  tbb::parallel_for(
      tbb::blocked_range<int64_t>(0, rows, kRowBlock),
      [&](const tbb::blocked_range<int64_t>& range) {
        const int64_t len = range.end() - range.begin();
        ym.middleCols(range.begin(), len).noalias() =
            xm * wm.middleRows(range.begin(), len).transpose();
      });
}

void MatMulQuantized(const QuantizedMatrixView& w, const float* x, int64_t n,
                     float* y) {
  const int64_t rows = w.rows;
  const int64_t cols = w.cols;
  tbb::parallel_for(
      tbb::blocked_range<int64_t>(0, rows, kRowBlock),
      [&](const tbb::blocked_range<int64_t>& range) {
        float buf[kDecodeChunk];
        for (int64_t r = range.begin(); r != range.end(); ++r) {
          for (int64_t i = 0; i < n; ++i) y[i * rows + r] = 0.0f;
          for (int64_t k0 = 0; k0 < cols; k0 += kDecodeChunk) {
            const int64_t len = std::min(kDecodeChunk, cols - k0);
            DequantizeRowRange(w, r, k0, k0 + len, buf);
            for (int64_t i = 0; i < n; ++i) {
              const float* xi = x + i * cols + k0;
              float sum = 0.0f;
              for (int64_t k = 0; k < len; ++k) sum += buf[k] * xi[k];
              y[i * rows + r] += sum;
            }
          }
        }
      });
}

}  // namespace wq
