#include "bench/bench_util.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <cstdio>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/io/parallel.h"
#include "tbb/task_arena.h"

namespace wq::bench {

namespace {

// Sums 64-bit lanes of p[0, n) (n a multiple of 16) with AVX2 loads and four
// independent accumulators: narrower loads (SSE) cap one core near half of
// what it can stream on this kind of machine, understating the roofline.
__attribute__((target("avx2"))) int64_t SumAvx2(const int64_t* p, size_t n) {
  __m256i a[4] = {};
  for (size_t i = 0; i < n; i += 16)
    for (int j = 0; j < 4; ++j)
      a[j] = _mm256_add_epi64(a[j], _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 4 * j)));
  alignas(32) int64_t out[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(out),
                     _mm256_add_epi64(_mm256_add_epi64(a[0], a[1]), _mm256_add_epi64(a[2], a[3])));
  return out[0] + out[1] + out[2] + out[3];
}

int64_t SumSse2(const int64_t* p, size_t n) {
  __m128i a[4] = {};
  for (size_t i = 0; i < n; i += 8)
    for (int j = 0; j < 4; ++j)
      a[j] = _mm_add_epi64(a[j], _mm_load_si128(reinterpret_cast<const __m128i*>(p + i + 2 * j)));
  alignas(16) int64_t out[2];
  _mm_store_si128(reinterpret_cast<__m128i*>(out),
                  _mm_add_epi64(_mm_add_epi64(a[0], a[1]), _mm_add_epi64(a[2], a[3])));
  return out[0] + out[1];
}

}  // namespace

double ReadBandwidth(int threads, int reps) {
  // 1 GiB, 64-byte aligned, one contiguous chunk per thread.
  constexpr size_t kWords = (size_t{1} << 30) / 8;
  std::unique_ptr<int64_t, decltype(&std::free)> buf(
      static_cast<int64_t*>(std::aligned_alloc(64, kWords * 8)), &std::free);
  std::fill(buf.get(), buf.get() + kWords, 1);
  const bool avx2 = __builtin_cpu_supports("avx2");
  tbb::task_arena arena(threads);
  std::atomic<int64_t> sink{0};
  const size_t chunk = kWords / threads / 16 * 16;
  const double s = BestSeconds(reps, [&] {
    arena.execute([&] {
      ParallelFor(0, threads, [&](int t) {
        const int64_t* p = buf.get() + t * chunk;
        sink += avx2 ? SumAvx2(p, chunk) : SumSse2(p, chunk);
      }, tbb::static_partitioner());
    });
  });
  if (sink == 42) std::printf(" ");  // keeps the sums from being optimised away
  return static_cast<double>(chunk * threads * 8) / s / 1e9;
}

int RunTool(int argc, char** argv, absl::string_view name, absl::string_view usage,
            absl::Status (*run)()) {
  absl::SetProgramUsageMessage(usage);
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = run();
  if (!status.ok()) {
    std::fprintf(stderr, "%.*s: %s\n", static_cast<int>(name.size()), name.data(),
                 status.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace wq::bench
