// Matmul kernel benchmark on TinyLlama-1.1B shapes: GEMV (decode, n=1) in GB/s
// of weight bytes streamed and GEMM (prefill, n=128 x rows) in GFLOP/s, per ISA
// path, compute dtype and thread count, plus the machine's read bandwidth
// and a whole-model decode estimate. Timings are best-of-N.
//
//   bazel-bin/bench/matmul_bench [--json=out.json] [--isas=avx2,avx512_bf16]
//       [--threads=1,2] [--reps=N] [--gemm_reps=N] [--no_gemm]
//       [--dtypes=int4_clip_sym_g32,...] [--shapes=gate_up,...]
//       [--computes=int8,...] [--gemm_rows=128] [--cache_resident]
//
// --cache_resident keeps one copy of each weight, which stays in the caches:
// the kernels' compute speed without DRAM's (a code-generation change shows
// there clearly; streamed timings swing with the machine's memory traffic).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/numbers.h"
#include "bench/bench_util.h"
#include "absl/strings/str_split.h"
#include "common/formats/compute_dtype.h"
#include "common/kernels/cpu_features.h"
#include "common/kernels/matmul.h"
#include "common/formats/quant_format.h"
#include "tbb/task_arena.h"

namespace wq {
namespace {

using bench::BestSeconds;
using bench::ReadBandwidth;

struct Options {
  std::string json;
  std::vector<Isa> isas;
  std::vector<int> threads = {1, 2};
  int reps = 20;
  int gemm_reps = 3;
  // x rows of the GEMM: 128 is a prefill chunk, 16 a batch-16 decode step.
  int64_t gemm_rows = 128;
  bool gemm = true;
  bool cache_resident = false;
  // Empty: all.
  std::vector<std::string> dtypes, shapes, computes;
};

bool Selected(const std::vector<std::string>& names, std::string_view name) {
  return names.empty() || std::find(names.begin(), names.end(), name) != names.end();
}

struct Shape {
  const char* name;
  int64_t rows, cols;
};
// TinyLlama-1.1B: q/o, k/v, gate/up, down, lm_head.
constexpr Shape kShapes[] = {{"q_o", 2048, 2048},
                             {"k_v", 256, 2048},
                             {"gate_up", 5632, 2048},
                             {"down", 2048, 5632},
                             {"lm_head", 32000, 2048}};

struct WeightDtype {
  const char* name;
  bool dense;
  QuantSpec spec;
};
const WeightDtype kDtypes[] = {
    {"int4_clip_sym_g32", false, {QuantType::kInt4Clip, QuantScheme::kSym, 32}},
    {"int4_clip_asym_g32", false, {QuantType::kInt4Clip, QuantScheme::kAsym, 32}},
    {"int8_sym_g32", false, {QuantType::kInt8, QuantScheme::kSym, 32}},
    {"nf4_g32", false, {QuantType::kNf4, QuantScheme::kSym, 32}},
    {"fp32", true, {}},
};

// A weight and enough copies of it that cycling through them streams from
// DRAM (StreamBytes in all) as decode does; one copy with
// --cache_resident.
struct Weight {
  std::vector<QuantizedMatrix> q;
  std::vector<std::vector<float>> dense;
  int64_t rows = 0, cols = 0;
  int64_t bytes = 0;  // One copy.
  size_t copies() const { return q.empty() ? dense.size() : q.size(); }
  // Per copy, for the compute dtype of the last Pack call.
  std::vector<std::shared_ptr<const PackedWeights>> packed;
  // Lays the copies out for `compute`'s kernels once, as model loading does.
  void Pack(ComputeDtype compute) {
    packed.clear();
    for (const QuantizedMatrix& m : q) packed.push_back(PackWeights(m.view(), compute));
  }
  void Run(size_t copy, const float* x, int64_t n, float* y,
           ComputeDtype compute) const {
    if (q.empty()) {
      MatMulF32(dense[copy].data(), rows, cols, x, n, y);
    } else {
      MatMulQuantized(q[copy].view(), x, n, y, compute, packed[copy].get());
    }
  }
};

std::vector<float> Random(int64_t size, uint32_t seed) {
  std::vector<float> v(size);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  for (float& f : v) f = dist(rng);
  return v;
}

// Twice the L3 (glibc's sysconf; at least 64 MiB): a cycle through the
// copies evicts every one of them before its next use. A fixed 64 MiB fits
// in the 300 MB L3 of some server CPUs.
int64_t StreamBytes() {
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return std::max<int64_t>(int64_t{64} << 20, 2 * static_cast<int64_t>(std::max(l3, 0L)));
}

Weight MakeWeight(const WeightDtype& d, const Shape& s, bool cache_resident) {
  Weight w;
  w.rows = s.rows;
  w.cols = s.cols;
  const std::vector<float> fp = Random(s.rows * s.cols, 1);
  const int64_t stream_bytes = cache_resident ? 0 : StreamBytes();
  if (d.dense) {
    w.bytes = s.rows * s.cols * 4;
    const int64_t copies = std::max<int64_t>(1, stream_bytes / w.bytes + 1);
    w.dense.assign(copies, fp);
    return w;
  }
  auto q = QuantizeMatrix(fp.data(), s.rows, s.cols, d.spec);
  if (!q.ok()) {
    std::fprintf(stderr, "quantize: %s\n", std::string(q.status().message()).c_str());
    std::exit(1);
  }
  w.bytes = static_cast<int64_t>(q->codes.size() + q->scales.size() * 4 +
                                 q->zeros.size());
  const int64_t copies = std::max<int64_t>(1, stream_bytes / w.bytes + 1);
  w.q.assign(copies, *q);
  return w;
}

struct Row {
  std::string kind, shape, dtype, isa, compute;
  int threads;
  double seconds, gbps, gflops;
};

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* flag) -> const char* {
      const size_t len = std::strlen(flag);
      return arg.compare(0, len, flag) == 0 ? argv[i] + len : nullptr;
    };
    if (const char* v = value("--json=")) {
      o.json = v;
    } else if (const char* v = value("--isas=")) {
      for (absl::string_view name : absl::StrSplit(v, ',')) {
        const auto isa = ParseIsa(std::string_view(name.data(), name.size()));
        if (!isa || !CpuSupports(*isa)) {
          std::fprintf(stderr, "skipping unsupported ISA %s\n", std::string(name).c_str());
          continue;
        }
        o.isas.push_back(*isa);
      }
    } else if (const char* v = value("--threads=")) {
      o.threads.clear();
      for (absl::string_view t : absl::StrSplit(v, ',')) {
        int n;
        if (absl::SimpleAtoi(t, &n)) o.threads.push_back(n);
      }
    } else if (const char* v = value("--reps=")) {
      o.reps = std::atoi(v);
    } else if (const char* v = value("--gemm_reps=")) {
      o.gemm_reps = std::atoi(v);
    } else if (const char* v = value("--gemm_rows=")) {
      o.gemm_rows = std::max(1, std::atoi(v));
    } else if (const char* v = value("--dtypes=")) {
      o.dtypes = absl::StrSplit(v, ',');
    } else if (const char* v = value("--shapes=")) {
      o.shapes = absl::StrSplit(v, ',');
    } else if (const char* v = value("--computes=")) {
      o.computes = absl::StrSplit(v, ',');
    } else if (arg == "--no_gemm") {
      o.gemm = false;
    } else if (arg == "--cache_resident") {
      o.cache_resident = true;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", arg.c_str());
      std::exit(2);
    }
  }
  if (o.isas.empty()) {
    for (int i = 0; i < kNumIsas; ++i) {
      if (CpuSupports(static_cast<Isa>(i))) o.isas.push_back(static_cast<Isa>(i));
    }
  }
  return o;
}

int Main(int argc, char** argv) {
  const Options opt = Parse(argc, argv);
  std::vector<Row> rows;
  std::printf("default kernel ISA: %.*s\n", static_cast<int>(KernelIsaName().size()),
              KernelIsaName().data());
  std::vector<double> bw;
  for (int t : opt.threads) {
    bw.push_back(ReadBandwidth(t, 5));
    std::printf("read bandwidth, %d thread(s): %.1f GB/s\n", t, bw.back());
    rows.push_back({"read_bw", "1GiB", "-", "-", "-", t, 0, bw.back(), 0});
  }
  std::printf("\n%-6s %-9s %-19s %-12s %-5s %3s %10s %8s %6s %8s\n", "kind",
              "shape", "weights", "isa", "comp", "thr", "time_us", "GB/s",
              "%bw", "GFLOP/s");
  const int64_t gemm_rows = opt.gemm_rows;
  for (const WeightDtype& d : kDtypes) {
    if (!Selected(opt.dtypes, d.name)) continue;
    for (const Shape& s : kShapes) {
      if (!Selected(opt.shapes, s.name)) continue;
      Weight w = MakeWeight(d, s, opt.cache_resident);
      const std::vector<float> x = Random(gemm_rows * s.cols, 2);
      std::vector<float> y(gemm_rows * s.rows);
      for (Isa isa : opt.isas) {
        ScopedIsaOverride forced(isa);
        for (int c = 0; c < kNumComputeDtypes; ++c) {
          const auto compute = static_cast<ComputeDtype>(c);
          if (d.dense && compute != ComputeDtype::kFp32) continue;
          if (!Selected(opt.computes, ComputeDtypeName(compute))) continue;
          w.Pack(compute);
          for (size_t ti = 0; ti < opt.threads.size(); ++ti) {
            const int t = opt.threads[ti];
            tbb::task_arena arena(t);
            size_t copy = 0;
            // Scalar GEMV on big shapes is slow: fewer reps.
            const int reps = isa == Isa::kScalar ? 3 : opt.reps;
            const double gemv = BestSeconds(reps, [&] {
              arena.execute([&] { w.Run(copy, x.data(), 1, y.data(), compute); });
              copy = (copy + 1) % w.copies();
            });
            Row r{"gemv", s.name, d.name, std::string(IsaName(isa)),
                  std::string(ComputeDtypeName(compute)), t, gemv,
                  w.bytes / gemv / 1e9, 2.0 * s.rows * s.cols / gemv / 1e9};
            rows.push_back(r);
            std::printf("%-6s %-9s %-19s %-12s %-5s %3d %10.1f %8.1f %5.0f%% %8.1f\n",
                        "gemv", s.name, d.name, r.isa.c_str(), r.compute.c_str(), t,
                        gemv * 1e6, r.gbps, 100.0 * r.gbps / bw[ti], r.gflops);
            if (!opt.gemm || isa == Isa::kScalar) continue;
            const double gemm = BestSeconds(opt.gemm_reps, [&] {
              arena.execute([&] { w.Run(copy, x.data(), gemm_rows, y.data(), compute); });
              copy = (copy + 1) % w.copies();
            });
            Row g{"gemm", s.name, d.name, r.isa, r.compute, t, gemm,
                  w.bytes / gemm / 1e9, 2.0 * gemm_rows * s.rows * s.cols / gemm / 1e9};
            rows.push_back(g);
            std::printf("%-6s %-9s %-19s %-12s %-5s %3d %10.1f %8s %6s %8.1f\n",
                        "gemm", s.name, d.name, g.isa.c_str(), g.compute.c_str(), t,
                        gemm * 1e6, "-", "-", g.gflops);
          }
          std::fflush(stdout);
        }
      }
    }
  }
  if (!opt.json.empty()) {
    FILE* f = std::fopen(opt.json.c_str(), "w");
    if (f == nullptr) {
      std::perror(opt.json.c_str());
      return 1;
    }
    std::fprintf(f, "{\"kernel_isa\": \"%.*s\", \"cache_resident\": %s, \"results\": [\n",
                 static_cast<int>(KernelIsaName().size()), KernelIsaName().data(),
                 opt.cache_resident ? "true" : "false");
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::fprintf(f,
                   "  {\"kind\": \"%s\", \"shape\": \"%s\", \"weights\": \"%s\", "
                   "\"isa\": \"%s\", \"compute\": \"%s\", \"threads\": %d, "
                   "\"seconds\": %.9g, \"gb_per_s\": %.4g, \"gflop_per_s\": %.4g}%s\n",
                   r.kind.c_str(), r.shape.c_str(), r.dtype.c_str(), r.isa.c_str(),
                   r.compute.c_str(), r.threads, r.seconds, r.gbps, r.gflops,
                   i + 1 < rows.size() ? "," : "");
    }
    std::fprintf(f, "]}\n");
    std::fclose(f);
  }
  return 0;
}

}  // namespace
}  // namespace wq

int main(int argc, char** argv) { return wq::Main(argc, argv); }
