#include "common/model/linear.h"

#include <algorithm>

#include "absl/container/inlined_vector.h"
#include "common/formats/bf16.h"
#include "common/kernels/matmul.h"

namespace wq {

LinearWeight LinearWeight::Dense(const float* w, int64_t rows, int64_t cols) {
  LinearWeight l;
  l.dense_ = w;
  l.rows_ = rows;
  l.cols_ = cols;
  return l;
}

LinearWeight LinearWeight::DenseBf16(const uint16_t* w, int64_t rows, int64_t cols) {
  LinearWeight l;
  l.dense_bf16_ = w;
  l.compute_ = ComputeDtype::kBf16;
  l.rows_ = rows;
  l.cols_ = cols;
  return l;
}

LinearWeight LinearWeight::DenseF16(const uint16_t* w, int64_t rows, int64_t cols) {
  LinearWeight l;
  l.dense_f16_ = w;
  l.rows_ = rows;
  l.cols_ = cols;
  return l;
}

void LinearWeight::DenseRowsToF32(int64_t first, int64_t count, float* out) const {
  const int64_t begin = first * cols_;
  const int64_t end = (first + count) * cols_;
  if (dense_bf16_ != nullptr) {
    std::transform(dense_bf16_ + begin, dense_bf16_ + end, out, Bf16ToFloat);
  } else if (dense_f16_ != nullptr) {
    std::transform(dense_f16_ + begin, dense_f16_ + end, out, F16ToFloat);
  } else {
    std::copy(dense_ + begin, dense_ + end, out);
  }
}

LinearWeight LinearWeight::Quantized(const QuantizedMatrixView& view, ComputeDtype compute,
                                     std::shared_ptr<const PackedWeights> packed) {
  LinearWeight l;
  l.quantized_ = view;
  l.rows_ = view.rows;
  l.cols_ = view.cols;
  l.compute_ = compute;
  l.packed_ = packed != nullptr ? std::move(packed) : PackWeights(view, compute);
  return l;
}

int64_t LinearWeight::storage_bytes() const {
  if (dense_ != nullptr) return rows_ * cols_ * static_cast<int64_t>(sizeof(float));
  if (dense_bf16_ != nullptr || dense_f16_ != nullptr) {
    return rows_ * cols_ * static_cast<int64_t>(sizeof(uint16_t));
  }
  if (packed_ != nullptr) return PackedBytes(*packed_);  // e.g. bf16 scales in 2 bytes
  const int64_t groups = quantized_.rows * quantized_.groups_per_row;
  return quantized_.rows * quantized_.row_bytes +
         groups * static_cast<int64_t>(sizeof(float)) +
         (quantized_.spec.scheme == QuantScheme::kAsym ? groups : 0);
}

void LinearWeight::Forward(const float* x, int64_t n, float* y) const {
  if (quantized()) {
    MatMulQuantized(quantized_, x, n, y, compute_, packed_.get());
  } else if (dense_bf16_ != nullptr) {
    MatMulBf16(dense_bf16_, rows_, cols_, x, n, y);
  } else if (dense_f16_ != nullptr) {
    MatMulF16(dense_f16_, rows_, cols_, x, n, y);
  } else {
    MatMulF32(dense_, rows_, cols_, x, n, y);
  }
}

void LinearWeight::ForwardShared(absl::Span<const LinearWeight* const> layers, const float* x,
                                 int64_t n, absl::Span<float* const> ys) {
  if (layers.empty()) return;
  const LinearWeight& first = *layers[0];
  absl::InlinedVector<QuantizedProduct, 3> products;
  for (size_t i = 0; i < layers.size(); ++i) {
    const LinearWeight& l = *layers[i];
    if (!l.quantized() || l.compute_ != first.compute_ ||
        !SharesActivations(l.quantized_, first.quantized_)) {
      for (size_t j = 0; j < layers.size(); ++j) layers[j]->Forward(x, n, ys[j]);
      return;
    }
    products.push_back({&l.quantized_, ys[i], l.packed_.get()});
  }
  MatMulQuantizedShared(products, x, n, first.compute_);
}

}  // namespace wq
