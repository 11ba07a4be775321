// Kernels for ISA level "avx512"; compiled with that level's -m flags only
// (see //common/kernels:kernels_avx512) and called only after dispatch checked the CPU.
#include "common/kernels/kernels.h"
#include "common/kernels/kernels_dense16.h"
#include "common/kernels/kernels_simd.h"

namespace wq {
namespace kernels {

const KernelTable& Avx512Kernels() {
  static constexpr KernelTable kTable =
      WithDense16<VecZmm>(MakeTable<VecZmm, DotAvx2>());
  return kTable;
}

}  // namespace kernels
}  // namespace wq
