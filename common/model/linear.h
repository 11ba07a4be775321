// The weight of one linear layer: dense fp32, dense bf16 or f16 (an
// unquantized 16-bit checkpoint served as stored) or quantized. All are
// non-owning views (into a mapped file or a buffer kept alive elsewhere), so
// the forward pass never holds a second fp32 copy of the weights.
#ifndef WQ_COMMON_LINEAR_H_
#define WQ_COMMON_LINEAR_H_

#include <cstdint>
#include <memory>

#include "absl/types/span.h"
#include "common/formats/compute_dtype.h"
#include "common/kernels/matmul.h"
#include "common/formats/quant_format.h"

namespace wq {

class LinearWeight {
 public:
  LinearWeight() = default;
  // w is [rows = out_features, cols = in_features], row-major.
  static LinearWeight Dense(const float* w, int64_t rows, int64_t cols);
  // w is bf16 bits, same layout; Forward computes in bf16 (MatMulBf16).
  static LinearWeight DenseBf16(const uint16_t* w, int64_t rows, int64_t cols);
  // w is IEEE half bits, same layout; Forward computes in fp32 (MatMulF16).
  static LinearWeight DenseF16(const uint16_t* w, int64_t rows, int64_t cols);
  // Computes in `compute`, from `packed` when given (kept by the weight),
  // else from the layout PackWeights(view, compute) builds, if any.
  static LinearWeight Quantized(const QuantizedMatrixView& view,
                                ComputeDtype compute = ComputeDtype::kFp32,
                                std::shared_ptr<const PackedWeights> packed = nullptr);

  int64_t out_features() const { return rows_; }
  int64_t in_features() const { return cols_; }
  bool quantized() const {
    return dense_ == nullptr && dense_bf16_ == nullptr && dense_f16_ == nullptr;
  }
  // The dense weight, or null when it is another kind.
  const float* dense() const { return dense_; }
  const uint16_t* dense_bf16() const { return dense_bf16_; }
  const uint16_t* dense_f16() const { return dense_f16_; }
  const QuantizedMatrixView& quantized_view() const { return quantized_; }
  // Rows [first, first + count) of a dense weight as fp32, whichever dtype
  // holds them; out is [count, in_features]. Must not be called on a
  // quantized weight.
  void DenseRowsToF32(int64_t first, int64_t count, float* out) const;
  // Arithmetic of quantized Forward (dense weights compute in their dtype).
  ComputeDtype compute_dtype() const { return compute_; }
  // Whether Forward reads a packed copy instead of the view's codes (it may
  // still read the view for columns past the packed kernels' groups).
  bool packed() const { return packed_ != nullptr; }
  // Bytes the kernels read per product: the packed copy's when there is one
  // (its scales may be 2 bytes; columns past whole groups of 32-blocks, read
  // from the view, are not counted: Llama's shapes have none), else the
  // view's codes, fp32 scales and zeros (or the dense fp32 / 16-bit matrix).
  int64_t storage_bytes() const;

  // y[n, out_features] = x[n, in_features] · W^T
  void Forward(const float* x, int64_t n, float* y) const;
  // ys[i] = layers[i]->Forward(x) for layers of the same input: in one
  // parallel pass (MatMulQuantizedShared) when they are quantized alike,
  // else one after the other.
  static void ForwardShared(absl::Span<const LinearWeight* const> layers, const float* x,
                            int64_t n, absl::Span<float* const> ys);

 private:
  const float* dense_ = nullptr;
  const uint16_t* dense_bf16_ = nullptr;
  const uint16_t* dense_f16_ = nullptr;
  QuantizedMatrixView quantized_{};
  int64_t rows_ = 0;
  int64_t cols_ = 0;
  ComputeDtype compute_ = ComputeDtype::kFp32;
  std::shared_ptr<const PackedWeights> packed_;  // Shared by copies.
};

}  // namespace wq

#endif  // WQ_COMMON_LINEAR_H_
