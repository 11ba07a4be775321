// The generic kernels of one ISA level: compiled once per row of
// _KERNEL_ISAS (common/kernels/BUILD) with that row's -m flags, which also
// name its table function (WQ_ISA_TABLE) and traits (WQ_ISA_VEC, WQ_ISA_DOT,
// from kernels_simd.h). Called only after dispatch checked the CPU.
#include "common/kernels/kernels.h"
#include "common/kernels/kernels_dense16.h"
#include "common/kernels/kernels_simd.h"

namespace wq {
namespace kernels {

const KernelTable& WQ_ISA_TABLE() {
  static constexpr KernelTable kTable =
      WithDense16<WQ_ISA_VEC>(MakeTable<WQ_ISA_VEC, WQ_ISA_DOT>());
  return kTable;
}

}  // namespace kernels
}  // namespace wq
