// Run-time instruction-set detection and the kernel ISA choice.
//
// Kernels exist per ISA level; the level used is the highest one this CPU
// (and its OS, for the AVX/AVX-512 register state) supports, unless WQ_ISA
// or a ScopedIsaOverride asks for another supported level.
#ifndef WQ_COMMON_CPU_FEATURES_H_
#define WQ_COMMON_CPU_FEATURES_H_

#include <optional>
#include <string_view>

namespace wq {

// Ordered from least to most capable kernels. Each level's kernels use only
// the instructions named; support is checked per level, since e.g. AVX-VNNI
// CPUs may lack AVX-512 and older AVX-512 CPUs lack AVX-VNNI.
enum class Isa {
  kScalar,      // Portable reference code.
  kAvx2,        // AVX2 + FMA + F16C (x86-64-v3).
  kAvxVnni,     // kAvx2 + AVX-VNNI (ymm vpdpbusd).
  kAvx512,      // AVX-512 F/BW/VL/DQ.
  kAvx512Vnni,  // kAvx512 + AVX512_VNNI.
  kAvx512Bf16,  // kAvx512Vnni + AVX512_BF16.
  kAmxInt8,     // kAvx512Bf16 + AMX-TILE/AMX-INT8 (tile matrix multiply),
                // with the OS's permission to use the tile data state.
};
inline constexpr int kNumIsas = 7;

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
