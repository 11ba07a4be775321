// The compute ceiling the kernels work against: core clock under load and
// the throughput and latency of the zmm instructions the quantized kernels
// spend their time in, measured with one thread per core running at once,
// and from them each compute dtype's peak for the whole machine:
//
//   peak = threads x clock x (ops per instruction) / (cycles per instruction)
//
// The clock comes from a chain of dependent register adds (one cycle each
// on every x86-64 core), so cycles are core cycles whatever the VM reports.
// Throughput: 16 independent accumulators (more than any core's latency x
// width); latency: one dependent chain.
//
//   bazel-bin/bench/core_peak [--threads=2] [--json_out=peak.json]
//
// Needs AVX-512 VNNI and BF16 (Isa::kAvx512Bf16); refuses other CPUs.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "common/kernels/cpu_features.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(int, threads, 2, "threads running the loops at once (one per core)");
ABSL_FLAG(std::string, json_out, "", "write the results as JSON here");

namespace wq::bench {
namespace {

constexpr long kIters = 10'000'000;

// Best ns per loop iteration over 5 runs of `body` (kIters iterations).
template <class F>
double NsPerIteration(F&& body) {
  return BestSeconds(5, body) * 1e9 / kIters;
}

#define WQ_ZMM_CLOBBERS                                                                       \
  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",    \
      "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm24", "xmm25"
// 16 independent accumulators zmm0..15, sources zmm24 and zmm25.
#define WQ_X16(op)                                                                            \
  op " %%zmm24, %%zmm25, %%zmm0\n\t" op " %%zmm24, %%zmm25, %%zmm1\n\t" op                    \
     " %%zmm24, %%zmm25, %%zmm2\n\t" op " %%zmm24, %%zmm25, %%zmm3\n\t" op                    \
     " %%zmm24, %%zmm25, %%zmm4\n\t" op " %%zmm24, %%zmm25, %%zmm5\n\t" op                    \
     " %%zmm24, %%zmm25, %%zmm6\n\t" op " %%zmm24, %%zmm25, %%zmm7\n\t" op                    \
     " %%zmm24, %%zmm25, %%zmm8\n\t" op " %%zmm24, %%zmm25, %%zmm9\n\t" op                    \
     " %%zmm24, %%zmm25, %%zmm10\n\t" op " %%zmm24, %%zmm25, %%zmm11\n\t" op                  \
     " %%zmm24, %%zmm25, %%zmm12\n\t" op " %%zmm24, %%zmm25, %%zmm13\n\t" op                  \
     " %%zmm24, %%zmm25, %%zmm14\n\t" op " %%zmm24, %%zmm25, %%zmm15\n\t"
// 16 instructions, each depending on the one before: zmm0 is the middle
// operand (a multiplicand, or a permute's index) and the destination.
#define WQ_CHAIN4(op)                                                                         \
  op " %%zmm24, %%zmm0, %%zmm0\n\t" op " %%zmm24, %%zmm0, %%zmm0\n\t" op                      \
     " %%zmm24, %%zmm0, %%zmm0\n\t" op " %%zmm24, %%zmm0, %%zmm0\n\t"
#define WQ_CHAIN16(op) WQ_CHAIN4(op) WQ_CHAIN4(op) WQ_CHAIN4(op) WQ_CHAIN4(op)

#define WQ_LOOP(insns)                                                       \
  [] {                                                                       \
    for (long i = 0; i < kIters; ++i) __asm__ volatile(insns ::: WQ_ZMM_CLOBBERS); \
  }

struct Instruction {
  const char* name;
  const char* ops_unit;  // what ops_per_instruction counts
  double ops_per_instruction;
  void (*throughput)();  // 16 instructions per iteration
  void (*latency)();     // 16 instructions per iteration
};

// Attributes: the asm names zmm16+ registers, which need AVX-512 enabled
// for the function that clobbers them.
#define WQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vnni,avx512bf16")))

WQ_AVX512 void FmaThroughput() { WQ_LOOP(WQ_X16("vfmadd231ps"))(); }
WQ_AVX512 void FmaLatency() { WQ_LOOP(WQ_CHAIN16("vfmadd231ps"))(); }
WQ_AVX512 void Bf16DotThroughput() { WQ_LOOP(WQ_X16("vdpbf16ps"))(); }
WQ_AVX512 void Bf16DotLatency() { WQ_LOOP(WQ_CHAIN16("vdpbf16ps"))(); }
WQ_AVX512 void Int8DotThroughput() { WQ_LOOP(WQ_X16("vpdpbusd"))(); }
WQ_AVX512 void Int8DotLatency() { WQ_LOOP(WQ_CHAIN16("vpdpbusd"))(); }
WQ_AVX512 void PermWordsThroughput() { WQ_LOOP(WQ_X16("vpermw"))(); }
WQ_AVX512 void PermWordsLatency() { WQ_LOOP(WQ_CHAIN16("vpermw"))(); }
WQ_AVX512 void PermFloatsThroughput() { WQ_LOOP(WQ_X16("vpermps"))(); }
WQ_AVX512 void PermFloatsLatency() { WQ_LOOP(WQ_CHAIN16("vpermps"))(); }

// The fp32 FMA, the bf16 pair dot, the int8 quad dot (the three compute
// dtypes' inner products) and the two level-table lookups of the float
// kernels' decode.
const Instruction kInstructions[] = {
    {"vfmadd231ps zmm", "fp32 FLOP", 32, FmaThroughput, FmaLatency},
    {"vdpbf16ps zmm", "bf16 FLOP", 64, Bf16DotThroughput, Bf16DotLatency},
    {"vpdpbusd zmm", "int8 OP", 128, Int8DotThroughput, Int8DotLatency},
    {"vpermw zmm", "", 0, PermWordsThroughput, PermWordsLatency},
    {"vpermps zmm", "", 0, PermFloatsThroughput, PermFloatsLatency},
};

// One 128-weight chunk of each compute dtype's GEMV inner loop (4-bit codes
// of a tile pair: 16 W rows x 8 columns, one x row), as FloatTile and
// Int8Tile in common/kernels/kernels_impl.h issue it: the codes' load and
// insert, the decode, and the products with broadcast activations. Two
// chunks per iteration on separate accumulators (zmm0-7, zmm10-17), so the
// accumulators' latency does not bound it, as across groups in the kernels.
#define WQ_LOAD_CODES "vmovdqu64 (%1), %%zmm20\n\tvinserti64x4 $1, 32(%1), %%zmm20, %%zmm20\n\t"
// fp32: the level of each column's nibble by vpermps (table zmm30), FMA.
#define WQ_F32_COL(shift, off, acc)                              \
  "vpsrld $" #shift ", %%zmm20, %%zmm21\n\t"                    \
  "vpermps %%zmm30, %%zmm21, %%zmm21\n\t"                        \
  "vfmadd231ps " #off "(%2)%{1to16%}, %%zmm21, %%zmm" #acc "\n\t"
#define WQ_F32_CHUNK(a)                                                                   \
  WQ_LOAD_CODES "vpermps %%zmm30, %%zmm20, %%zmm21\n\t"                                   \
                "vfmadd231ps (%2)%{1to16%}, %%zmm21, %%zmm" #a "0\n\t" WQ_F32_COL(4, 4, a##1) \
                    WQ_F32_COL(8, 8, a##2) WQ_F32_COL(12, 12, a##3) WQ_F32_COL(16, 16, a##4)  \
                        WQ_F32_COL(20, 20, a##5) WQ_F32_COL(24, 24, a##6) WQ_F32_COL(28, 28, a##7)
// bf16: bytes reordered (vpshufb, pattern zmm31), 4 word shifts, vpermw
// levels (zmm30), vdpbf16ps with the activation pair.
#define WQ_BF16_PAIR(shift, off, acc)                            \
  "vpsrlw $" #shift ", %%zmm20, %%zmm21\n\t"                    \
  "vpermw %%zmm30, %%zmm21, %%zmm21\n\t"                         \
  "vdpbf16ps " #off "(%2)%{1to16%}, %%zmm21, %%zmm" #acc "\n\t"
#define WQ_BF16_CHUNK(a)                                                                   \
  WQ_LOAD_CODES "vpshufb %%zmm31, %%zmm20, %%zmm20\n\t"                                    \
                "vpermw %%zmm30, %%zmm20, %%zmm21\n\t"                                     \
                "vdpbf16ps (%2)%{1to16%}, %%zmm21, %%zmm" #a "0\n\t" WQ_BF16_PAIR(4, 4, a##1) \
                    WQ_BF16_PAIR(8, 8, a##2) WQ_BF16_PAIR(12, 12, a##3)
// int8: low and high nibbles (mask zmm31), vpdpbusd with 4 activation bytes.
#define WQ_INT8_CHUNK(a)                                      \
  WQ_LOAD_CODES "vpandd %%zmm31, %%zmm20, %%zmm21\n\t"        \
                "vpdpbusd (%2)%{1to16%}, %%zmm21, %%zmm" #a "0\n\t" \
                "vpsrlw $4, %%zmm20, %%zmm22\n\t"             \
                "vpandd %%zmm31, %%zmm22, %%zmm22\n\t"        \
                "vpdpbusd 4(%2)%{1to16%}, %%zmm22, %%zmm" #a "1\n\t"

// Affine 4-bit codes need no table: a code q OR'd into a float's mantissa
// under the exponent of 16 is the number 16 + q (bf16: bits 3..6 of the
// word under 0x4180; fp32: bits 19..22 under 0x41800000), so each column
// costs a shift and a vpternlogd ((v & mask) | bias, zmm29, zmm28), and the
// offset 16 comes off per group with the activations' sum. bf16 pairs the
// words as stored (no vpshufb): the activations are laid out to match.
#define WQ_BF16_AFFINE_PAIR(shift_op, off, acc)                 \
  shift_op ", %%zmm20, %%zmm21\n\t"                             \
  "vpternlogd $0xEA, %%zmm28, %%zmm29, %%zmm21\n\t"             \
  "vdpbf16ps " #off "(%2)%{1to16%}, %%zmm21, %%zmm" #acc "\n\t"
#define WQ_BF16_AFFINE_CHUNK(a)                                                  \
  WQ_LOAD_CODES WQ_BF16_AFFINE_PAIR("vpsllw $3", 0, a##0)                        \
      WQ_BF16_AFFINE_PAIR("vpsrlw $1", 4, a##1) WQ_BF16_AFFINE_PAIR("vpsrlw $5", 8, a##2) \
          WQ_BF16_AFFINE_PAIR("vpsrlw $9", 12, a##3)
#define WQ_F32_AFFINE_COL(shift_op, off, acc)                   \
  shift_op ", %%zmm20, %%zmm21\n\t"                             \
  "vpternlogd $0xEA, %%zmm28, %%zmm29, %%zmm21\n\t"             \
  "vfmadd231ps " #off "(%2)%{1to16%}, %%zmm21, %%zmm" #acc "\n\t"
#define WQ_F32_AFFINE_CHUNK(a)                                                             \
  WQ_LOAD_CODES WQ_F32_AFFINE_COL("vpslld $19", 0, a##0) WQ_F32_AFFINE_COL("vpslld $15", 4, a##1) \
      WQ_F32_AFFINE_COL("vpslld $11", 8, a##2) WQ_F32_AFFINE_COL("vpslld $7", 12, a##3)           \
          WQ_F32_AFFINE_COL("vpslld $3", 16, a##4) WQ_F32_AFFINE_COL("vpsrld $1", 20, a##5)       \
              WQ_F32_AFFINE_COL("vpsrld $5", 24, a##6) WQ_F32_AFFINE_COL("vpsrld $9", 28, a##7)

// Registers zeroed first (no NaN or denormal operands), then kIters
// iterations of two chunks.
#define WQ_CHUNK_LOOP(chunk_a, chunk_b)                                                      \
  [] {                                                                                        \
    alignas(64) static uint8_t codes[64];                                                     \
    alignas(64) static float x[8];                                                            \
    long n = kIters;                                                                          \
    __asm__ volatile(                                                                         \
        "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"                                                   \
        "vmovdqa64 %%zmm0, %%zmm1\n\tvmovdqa64 %%zmm0, %%zmm2\n\tvmovdqa64 %%zmm0, %%zmm3\n\t" \
        "vmovdqa64 %%zmm0, %%zmm4\n\tvmovdqa64 %%zmm0, %%zmm5\n\tvmovdqa64 %%zmm0, %%zmm6\n\t" \
        "vmovdqa64 %%zmm0, %%zmm7\n\tvmovdqa64 %%zmm0, %%zmm8\n\tvmovdqa64 %%zmm0, %%zmm9\n\t" \
        "vmovdqa64 %%zmm0, %%zmm10\n\tvmovdqa64 %%zmm0, %%zmm11\n\tvmovdqa64 %%zmm0, %%zmm12\n\t" \
        "vmovdqa64 %%zmm0, %%zmm13\n\tvmovdqa64 %%zmm0, %%zmm14\n\tvmovdqa64 %%zmm0, %%zmm15\n\t" \
        "vmovdqa64 %%zmm0, %%zmm28\n\tvmovdqa64 %%zmm0, %%zmm29\n\t"                          \
        "vmovdqa64 %%zmm0, %%zmm30\n\tvmovdqa64 %%zmm0, %%zmm31\n\t"                          \
        "1:\n\t" chunk_a chunk_b "dec %0\n\tjnz 1b\n\t"                                        \
        : "+r"(n)                                                                             \
        : "r"(codes), "r"(x)                                                                  \
        : WQ_ZMM_CLOBBERS, "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm28", "xmm29", "xmm30", "xmm31", "cc", "memory");      \
  }

WQ_AVX512 void Fp32Chunks() { WQ_CHUNK_LOOP(WQ_F32_CHUNK(), WQ_F32_CHUNK(1))(); }
WQ_AVX512 void Bf16Chunks() { WQ_CHUNK_LOOP(WQ_BF16_CHUNK(), WQ_BF16_CHUNK(1))(); }
WQ_AVX512 void Fp32AffineChunks() { WQ_CHUNK_LOOP(WQ_F32_AFFINE_CHUNK(), WQ_F32_AFFINE_CHUNK(1))(); }
WQ_AVX512 void Bf16AffineChunks() { WQ_CHUNK_LOOP(WQ_BF16_AFFINE_CHUNK(), WQ_BF16_AFFINE_CHUNK(1))(); }
WQ_AVX512 void Int8Chunks() { WQ_CHUNK_LOOP(WQ_INT8_CHUNK(), WQ_INT8_CHUNK(1))(); }

struct Chunk {
  const char* compute;
  void (*run)();  // 2 chunks per iteration
};
const Chunk kChunks[] = {{"fp32", Fp32Chunks},
                         {"fp32, affine codes", Fp32AffineChunks},
                         {"bf16", Bf16Chunks},
                         {"bf16, affine codes", Bf16AffineChunks},
                         {"int8", Int8Chunks}};

// A chain of dependent register adds, one cycle each. Not add-immediates:
// Intel cores since Golden Cove fold those at rename (measured 15.9 "GHz"
// on an Emerald Rapids VM).
double NsPerCycle() {
  return NsPerIteration([] {
           long v = 0;
           const long one = 1;
           for (long i = 0; i < kIters; ++i) {
             __asm__ volatile(
                 "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                 "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                 : "+r"(v)
                 : "r"(one));
           }
         }) /
         8;
}

struct Measured {
  double ns_per_cycle = 0;
  std::vector<double> throughput_ns, latency_ns;  // per instruction
  std::vector<double> chunk_ns;                   // per 128-weight chunk
};

// Every measurement on every thread at once, so each core runs at the clock
// it holds with all cores busy.
Measured MeasureOnThread() {
  Measured m;
  m.ns_per_cycle = NsPerCycle();
  for (const Instruction& ins : kInstructions) {
    m.throughput_ns.push_back(NsPerIteration(ins.throughput) / 16);
    m.latency_ns.push_back(NsPerIteration(ins.latency) / 16);
  }
  for (const Chunk& c : kChunks) m.chunk_ns.push_back(NsPerIteration(c.run) / 2);
  return m;
}

absl::Status Run() {
  if (!CpuSupports(Isa::kAvx512Bf16)) {
    return absl::FailedPreconditionError(
        "this CPU lacks AVX-512 VNNI/BF16; core_peak measures only those instructions");
  }
  const int threads = absl::GetFlag(FLAGS_threads);
  if (threads < 1 || threads > 256) {
    return absl::InvalidArgumentError("--threads must be in [1, 256]");
  }
  std::vector<Measured> per_thread(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&per_thread, t] { per_thread[t] = MeasureOnThread(); });
  }
  for (std::thread& th : pool) th.join();

  // The slowest thread's clock: the one the machine sustains on all cores.
  double ns_per_cycle = 0;
  for (const Measured& m : per_thread) ns_per_cycle = std::max(ns_per_cycle, m.ns_per_cycle);
  const double ghz = 1 / ns_per_cycle;
  std::printf("core clock with %d threads busy: %.2f GHz (dependent add chain)\n\n", threads,
              ghz);
  std::printf("| instruction | cycles per instruction (16 chains) | latency cycles | peak, %d threads |\n",
              threads);
  std::printf("|---|---|---|---|\n");
  nlohmann::json rows = nlohmann::json::array();
  for (size_t i = 0; i < std::size(kInstructions); ++i) {
    const Instruction& ins = kInstructions[i];
    // Cycles from each thread's own clock, the worst thread reported.
    double cpi = 0, latency = 0;
    for (const Measured& m : per_thread) {
      cpi = std::max(cpi, m.throughput_ns[i] / m.ns_per_cycle);
      latency = std::max(latency, m.latency_ns[i] / m.ns_per_cycle);
    }
    const double peak_g = ins.ops_per_instruction * ghz / cpi * threads;
    const std::string peak =
        ins.ops_per_instruction > 0 ? absl::StrFormat("%.0f G %s/s", peak_g, ins.ops_unit) : "-";
    std::printf("| %s | %.2f | %.2f | %s |\n", ins.name, cpi, latency, peak.c_str());
    rows.push_back({{"instruction", ins.name},
                    {"cycles_per_instruction", cpi},
                    {"latency_cycles", latency},
                    {"ops_unit", ins.ops_unit},
                    {"peak_gops", ins.ops_per_instruction > 0 ? peak_g : 0.0}});
  }

  // A GEMV over 4-bit weights with bf16 scales per 32 (4.5 bits a weight)
  // is compute bound below this many GB/s.
  constexpr double kBytesPerChunk = 128 * 4.5 / 8;
  std::printf(
      "\n| compute | cycles per 128 weights (4-bit GEMV, 1 x row) | ceiling GB/s of 4.5-bit weights, %d threads |\n",
      threads);
  std::printf("|---|---|---|\n");
  nlohmann::json chunks = nlohmann::json::array();
  for (size_t i = 0; i < std::size(kChunks); ++i) {
    double cycles = 0;
    for (const Measured& m : per_thread) cycles = std::max(cycles, m.chunk_ns[i] / m.ns_per_cycle);
    const double gbps = kBytesPerChunk * ghz / cycles * threads;
    std::printf("| %s | %.2f | %.0f |\n", kChunks[i].compute, cycles, gbps);
    chunks.push_back({{"compute", kChunks[i].compute},
                      {"cycles_per_128_weights", cycles},
                      {"ceiling_gbps_4p5_bits", gbps}});
  }
  const std::string path = absl::GetFlag(FLAGS_json_out);
  if (!path.empty()) {
    std::ofstream out(path);
    out << nlohmann::json{{"threads", threads}, {"clock_ghz", ghz}, {"instructions", rows}, {"gemv_chunks", chunks}}.dump(1)
        << "\n";
    if (!out) return absl::InternalError("cannot write " + path);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace wq::bench

int main(int argc, char** argv) {
  return wq::bench::RunTool(argc, argv, "core_peak",
                            "core clock and zmm instruction throughput: the compute peak "
                            "of each compute dtype",
                            wq::bench::Run);
}
