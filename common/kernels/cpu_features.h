// Run-time instruction-set detection and the kernel ISA choice.
//
// Kernels exist per ISA level; the level used is the highest one this CPU
// (and its OS, for the AVX/AVX-512 register state) supports, unless WQ_ISA
// or a ScopedIsaOverride asks for another supported level.
#ifndef WQ_COMMON_CPU_FEATURES_H_
#define WQ_COMMON_CPU_FEATURES_H_

#include <iterator>
#include <optional>
#include <string_view>

namespace wq {

// The portable reference, then the rows of KERNEL_ISAS
// (common/kernels/isas.bzl), ordered from least to most capable kernels. Each
// level's kernels use only the instructions its row names; support is
// checked per level, since e.g. AVX-VNNI CPUs may lack AVX-512 and older
// AVX-512 CPUs lack AVX-VNNI.
enum class Isa {
  kScalar,
#define WQ_KERNEL_ISA(id, name, table, cpu_features) id,
#include "common/kernels/isa_rows.inc"
#undef WQ_KERNEL_ISA
};

inline constexpr std::string_view kIsaNames[] = {
    "scalar",
#define WQ_KERNEL_ISA(id, name, table, cpu_features) name,
#include "common/kernels/isa_rows.inc"
#undef WQ_KERNEL_ISA
};
inline constexpr int kNumIsas = static_cast<int>(std::size(kIsaNames));

std::string_view IsaName(Isa isa);
std::optional<Isa> ParseIsa(std::string_view name);

// Whether this CPU and OS can run kernels of `isa` (kScalar always). The
// first call for kAmxInt8 on a CPU with AMX asks Linux for the tile state
// (cpu_features.cc: it enlarges every signal frame of the process).
bool CpuSupports(Isa isa);
// The most capable supported level.
Isa BestSupportedIsa();

// The level for a WQ_ISA value: `requested` if known and supported, else (with
// a warning on stderr) the best supported level; empty means the best.
Isa ResolveIsaRequest(std::string_view requested);

// The level kernels use now: the override if any, else WQ_ISA (when set and
// supported; otherwise a warning on stderr and the best level), else the best.
Isa ActiveIsa();
// IsaName(ActiveIsa()), for logs and service info.
std::string_view KernelIsaName();

// Test/benchmark hook: forces `isa` for the object's lifetime (not
// thread-safe against concurrent matmuls). An unsupported `isa` is ignored
// with a warning, as for WQ_ISA.
class ScopedIsaOverride {
 public:
  explicit ScopedIsaOverride(Isa isa);
  ~ScopedIsaOverride();
  ScopedIsaOverride(const ScopedIsaOverride&) = delete;
  ScopedIsaOverride& operator=(const ScopedIsaOverride&) = delete;

 private:
  int previous_;
};

}  // namespace wq

#endif  // WQ_COMMON_CPU_FEATURES_H_
