// Kernels for ISA level "avx_vnni"; compiled with that level's -m flags only
// (see //common/kernels:kernels_avx_vnni) and called only after dispatch checked the CPU.
#include "common/kernels/kernels.h"
#include "common/kernels/kernels_dense16.h"
#include "common/kernels/kernels_simd.h"

namespace wq {
namespace kernels {

const KernelTable& AvxVnniKernels() {
  static constexpr KernelTable kTable =
      WithDense16<VecYmm>(MakeTable<VecYmm, DotAvxVnni>());
  return kTable;
}

}  // namespace kernels
}  // namespace wq
