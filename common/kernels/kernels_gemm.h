// Dense fp32 GEMM by Eigen, compiled into each unit that includes this with
// that unit's flags: the ISA units (KernelTable::gemm_f32_cols) and the
// baseline reference (GemmF32ColsRef). Eigen chooses its packet width and
// FMA use at compile time, so the baseline build multiplies 4 floats per
// SSE2 instruction without FMA and an AVX-512 build runs about 6x faster
// (bench/results/awq_speed.md, "TEQ").
//
// Every unit would instantiate the same Eigen templates under the same
// mangled names with different bodies, and the linker keeps one of them for
// all units (an AVX-512 body on a CPU without it, or SSE2 everywhere). So an
// ISA unit gives Eigen a namespace of its own: its build defines
// WQ_EIGEN_NAMESPACE (common/kernels/BUILD), which this header must be the
// first in the unit to include Eigen under.
#ifndef WQ_COMMON_KERNELS_KERNELS_GEMM_H_
#define WQ_COMMON_KERNELS_KERNELS_GEMM_H_

#ifdef WQ_EIGEN_NAMESPACE
#ifdef EIGEN_CORE_H
#error "Eigen was included before kernels_gemm.h renamed its namespace"
#endif
#define Eigen WQ_EIGEN_NAMESPACE
#endif
#include "Eigen/Core"

#include "common/kernels/kernels.h"

namespace wq {
namespace kernels {
namespace {

// Columns [c0, c1) of C = op(A) · op(B) (GemmF32Args), one Eigen product.
inline void GemmF32ColsEigen(const GemmF32Args& g, int64_t c0, int64_t c1) {
  using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Stride = Eigen::OuterStride<>;
  using ConstMap = Eigen::Map<const Matrix, 0, Stride>;
  const int64_t cols = c1 - c0;
  // op(A) [m, k] and op(B)'s columns [k, c0:c1), as stored.
  const ConstMap a(g.a, g.trans_a ? g.k : g.m, g.trans_a ? g.m : g.k, Stride(g.lda));
  const ConstMap b(g.trans_b ? g.b + c0 * g.ldb : g.b + c0, g.trans_b ? cols : g.k,
                   g.trans_b ? g.k : cols, Stride(g.ldb));
  Eigen::Map<Matrix, 0, Stride> c(g.c + c0, g.m, cols, Stride(g.ldc));
  if (g.trans_a) {
    if (g.trans_b) {
      c.noalias() = a.transpose() * b.transpose();
    } else {
      c.noalias() = a.transpose() * b;
    }
  } else if (g.trans_b) {
    c.noalias() = a * b.transpose();
  } else {
    c.noalias() = a * b;
  }
}

}  // namespace
}  // namespace kernels
}  // namespace wq

#endif  // WQ_COMMON_KERNELS_KERNELS_GEMM_H_
