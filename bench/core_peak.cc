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

double NsPerCycle() {
  return NsPerIteration([] {
           long v = 0;
           for (long i = 0; i < kIters; ++i) {
             __asm__ volatile(
                 "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                 "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                 : "+r"(v));
           }
         }) /
         8;
}

struct Measured {
  double ns_per_cycle = 0;
  std::vector<double> throughput_ns, latency_ns;  // per instruction
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
  const std::string path = absl::GetFlag(FLAGS_json_out);
  if (!path.empty()) {
    std::ofstream out(path);
    out << nlohmann::json{{"threads", threads}, {"clock_ghz", ghz}, {"instructions", rows}}.dump(1)
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
