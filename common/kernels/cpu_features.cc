#include "common/kernels/cpu_features.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <utility>

namespace wq {
namespace {

// What a kernel level may require (KERNEL_ISAS' "cpu" lists): cpuid feature
// bits, and the register state the OS saves (XCR0), without which the
// instructions fault even though cpuid advertises them.
enum CpuFeature : uint32_t {
  kCpuOsYmm = 1u << 0,     // SSE + AVX state
  kCpuOsZmm = 1u << 1,     // + opmask, ZMM_Hi256, Hi16_ZMM
  kCpuOsTiles = 1u << 2,   // XTILECFG + XTILEDATA
  kCpuAvx = 1u << 3,
  kCpuFma = 1u << 4,
  kCpuF16c = 1u << 5,
  kCpuAvx2 = 1u << 6,
  kCpuAvxVnni = 1u << 7,
  kCpuAvx512F = 1u << 8,
  kCpuAvx512Dq = 1u << 9,
  kCpuAvx512Bw = 1u << 10,
  kCpuAvx512Vl = 1u << 11,
  kCpuAvx512Vnni = 1u << 12,
  kCpuAvx512Bf16 = 1u << 13,
  kCpuAmxTile = 1u << 14,
  kCpuAmxInt8 = 1u << 15,
  kCpuAmxBf16 = 1u << 16,
};

// Indexed by Isa.
constexpr uint32_t kRequiredFeatures[] = {
    0,  // scalar
#define WQ_KERNEL_ISA(id, name, table, cpu_features) cpu_features,
#include "common/kernels/isa_rows.inc"
#undef WQ_KERNEL_ISA
};
static_assert(std::size(kRequiredFeatures) == kNumIsas);

struct CpuidRegs {
  uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};

CpuidRegs Cpuid(uint32_t leaf, uint32_t subleaf) {
  CpuidRegs r;
  if (__get_cpuid_max(0, nullptr) < leaf) return r;
  __cpuid_count(leaf, subleaf, r.eax, r.ebx, r.ecx, r.edx);
  return r;
}

inline bool Bit(uint32_t reg, int bit) { return (reg >> bit) & 1u; }

// XCR0 via xgetbv: the OS must save the register state or the instructions
// fault even though cpuid advertises them.
uint64_t Xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

// Linux enables the 8 KiB tile data state per process, on request (kernel
// 5.16+); without the permission the first tile instruction faults. Asked
// once, and only when an AMX level is asked about (the best level, or
// an override naming it): the grant makes every signal frame of the process
// ~11 KiB larger, after which smaller sigaltstack()s fail, and the request
// itself fails while a thread has a smaller alternate stack.
bool TileDataPermission() {
  static const bool granted = [] {
#if defined(__linux__) && defined(SYS_arch_prctl)
    constexpr int kArchReqXcompPerm = 0x1023;
    constexpr int kXfeatureXtileData = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtileData) == 0) return true;
    std::fprintf(stderr, "wq: the CPU has AMX but Linux refused the tile state (%s); not using it\n",
                 std::strerror(errno));
#endif
    return false;
  }();
  return granted;
}

uint32_t DetectFeatures() {
  const CpuidRegs l1 = Cpuid(1, 0);
  if (!Bit(l1.ecx, 27)) return 0;  // No OSXSAVE: xgetbv unavailable.
  const uint64_t xcr0 = Xcr0();
  const CpuidRegs l7 = Cpuid(7, 0);
  const CpuidRegs l7s1 = Cpuid(7, 1);
  const std::pair<bool, CpuFeature> bits[] = {
      {(xcr0 & 0x6) == 0x6, kCpuOsYmm},
      {(xcr0 & 0xe6) == 0xe6, kCpuOsZmm},
      {(xcr0 & 0x60000) == 0x60000, kCpuOsTiles},
      {Bit(l1.ecx, 28), kCpuAvx},
      {Bit(l1.ecx, 12), kCpuFma},
      {Bit(l1.ecx, 29), kCpuF16c},
      {Bit(l7.ebx, 5), kCpuAvx2},
      {Bit(l7s1.eax, 4), kCpuAvxVnni},
      {Bit(l7.ebx, 16), kCpuAvx512F},
      {Bit(l7.ebx, 17), kCpuAvx512Dq},
      {Bit(l7.ebx, 30), kCpuAvx512Bw},
      {Bit(l7.ebx, 31), kCpuAvx512Vl},
      {Bit(l7.ecx, 11), kCpuAvx512Vnni},
      {Bit(l7s1.eax, 5), kCpuAvx512Bf16},
      {Bit(l7.edx, 24), kCpuAmxTile},
      {Bit(l7.edx, 25), kCpuAmxInt8},
      {Bit(l7.edx, 22), kCpuAmxBf16},
  };
  uint32_t features = 0;
  for (const auto& [present, feature] : bits) {
    if (present) features |= feature;
  }
  return features;
}

// Before the OS's tile permission, which CpuSupports asks for on demand.
bool HasFeatures(Isa isa) {
  static const uint32_t features = DetectFeatures();
  const uint32_t required = kRequiredFeatures[static_cast<int>(isa)];
  return (features & required) == required;
}

void WarnUnsupported(std::string_view requested, Isa fallback) {
  std::fprintf(stderr,
               "wq: WQ_ISA/override \"%.*s\" is unknown or unsupported by this "
               "CPU; using %.*s\n",
               static_cast<int>(requested.size()), requested.data(),
               static_cast<int>(IsaName(fallback).size()),
               IsaName(fallback).data());
}

Isa DefaultIsa() {
  const char* env = std::getenv("WQ_ISA");
  return ResolveIsaRequest(env != nullptr ? env : "");
}

// -1: no override.
std::atomic<int> g_override{-1};

}  // namespace

std::string_view IsaName(Isa isa) { return kIsaNames[static_cast<int>(isa)]; }

std::optional<Isa> ParseIsa(std::string_view name) {
  for (int i = 0; i < kNumIsas; ++i) {
    if (kIsaNames[i] == name) return static_cast<Isa>(i);
  }
  return std::nullopt;
}

bool CpuSupports(Isa isa) {
  if (!HasFeatures(isa)) return false;
  return (kRequiredFeatures[static_cast<int>(isa)] & kCpuOsTiles) == 0 || TileDataPermission();
}

Isa BestSupportedIsa() {
  for (int i = kNumIsas - 1; i > 0; --i) {
    if (CpuSupports(static_cast<Isa>(i))) return static_cast<Isa>(i);
  }
  return Isa::kScalar;
}

Isa ResolveIsaRequest(std::string_view requested) {
  if (requested.empty()) return BestSupportedIsa();
  // A supported lower level never asks for the AMX permission.
  const std::optional<Isa> isa = ParseIsa(requested);
  if (isa.has_value() && CpuSupports(*isa)) return *isa;
  const Isa best = BestSupportedIsa();
  WarnUnsupported(requested, best);
  return best;
}

Isa ActiveIsa() {
  const int forced = g_override.load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<Isa>(forced);
  static const Isa isa = DefaultIsa();
  return isa;
}

std::string_view KernelIsaName() { return IsaName(ActiveIsa()); }

ScopedIsaOverride::ScopedIsaOverride(Isa isa)
    : previous_(g_override.load(std::memory_order_relaxed)) {
  if (CpuSupports(isa)) {
    g_override.store(static_cast<int>(isa), std::memory_order_relaxed);
  } else {
    WarnUnsupported(IsaName(isa), ActiveIsa());
  }
}

ScopedIsaOverride::~ScopedIsaOverride() {
  g_override.store(previous_, std::memory_order_relaxed);
}

}  // namespace wq
