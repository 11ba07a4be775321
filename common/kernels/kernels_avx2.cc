// Kernels for ISA level "avx2"; compiled with that level's -m flags only
// (see //common/kernels:kernels_avx2) and called only after dispatch checked the CPU.
#include "common/kernels/kernels.h"
#include "common/kernels/kernels_dense16.h"
#include "common/kernels/kernels_simd.h"

namespace wq {
namespace kernels {

const KernelTable& Avx2Kernels() {
  static constexpr KernelTable kTable =
      WithDense16<VecYmm>(MakeTable<VecYmm, DotAvx2>());
  return kTable;
}

}  // namespace kernels
}  // namespace wq
