#include "common/kernels/cpu_features.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace wq {
namespace {

constexpr std::array<std::string_view, kNumIsas> kIsaNames = {
    "scalar", "avx2", "avx_vnni", "avx512", "avx512_vnni", "avx512_bf16", "amx_int8"};

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
// once, and only when the amx_int8 level is asked about (the best level, or
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

std::array<bool, kNumIsas> DetectSupport() {
  std::array<bool, kNumIsas> s{};
  s[static_cast<int>(Isa::kScalar)] = true;
  const CpuidRegs l1 = Cpuid(1, 0);
  if (!Bit(l1.ecx, 27)) return s;  // No OSXSAVE: xgetbv unavailable.
  const uint64_t xcr0 = Xcr0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;     // SSE + AVX state.
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;   // + opmask, ZMM_Hi256, Hi16.
  const CpuidRegs l7 = Cpuid(7, 0);
  const CpuidRegs l7s1 = Cpuid(7, 1);
  const bool avx2 = os_ymm && Bit(l1.ecx, 28) /*AVX*/ && Bit(l1.ecx, 12) /*FMA*/
                    && Bit(l1.ecx, 29) /*F16C*/ && Bit(l7.ebx, 5) /*AVX2*/;
  const bool avx512 = avx2 && os_zmm && Bit(l7.ebx, 16) /*F*/ &&
                      Bit(l7.ebx, 17) /*DQ*/ && Bit(l7.ebx, 30) /*BW*/ &&
                      Bit(l7.ebx, 31) /*VL*/;
  const bool avx512_vnni = avx512 && Bit(l7.ecx, 11);
  s[static_cast<int>(Isa::kAvx2)] = avx2;
  s[static_cast<int>(Isa::kAvxVnni)] = avx2 && Bit(l7s1.eax, 4);
  s[static_cast<int>(Isa::kAvx512)] = avx512;
  s[static_cast<int>(Isa::kAvx512Vnni)] = avx512_vnni;
  const bool avx512_bf16 = avx512_vnni && Bit(l7s1.eax, 5);
  s[static_cast<int>(Isa::kAvx512Bf16)] = avx512_bf16;
  const bool os_tiles = (xcr0 & 0x60000) == 0x60000;  // XTILECFG + XTILEDATA.
  // Before the OS's permission, which CpuSupports asks for on demand.
  s[static_cast<int>(Isa::kAmxInt8)] = avx512_bf16 && os_tiles && Bit(l7.edx, 24) /*AMX-TILE*/ &&
                                       Bit(l7.edx, 25) /*AMX-INT8*/;
  return s;
}

const std::array<bool, kNumIsas>& Support() {
  static const std::array<bool, kNumIsas> support = DetectSupport();
  return support;
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
  if (!Support()[static_cast<int>(isa)]) return false;
  return isa != Isa::kAmxInt8 || TileDataPermission();
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
