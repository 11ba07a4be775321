#include "bench/bench_util.h"

#include <emmintrin.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "tbb/blocked_range.h"
#include "tbb/parallel_reduce.h"
#include "tbb/task_arena.h"

namespace wq::bench {

double ReadBandwidth(int threads, int reps) {
  std::vector<int64_t> buf((int64_t{1} << 30) / 8, 1);
  tbb::task_arena arena(threads);
  int64_t sink = 0;
  const double s = BestSeconds(reps, [&] {
    arena.execute([&] {
      sink += tbb::parallel_reduce(
          tbb::blocked_range<size_t>(0, buf.size(), size_t{1} << 20), int64_t{0},
          [&](const tbb::blocked_range<size_t>& r, int64_t acc) {
            // Four independent SSE2 accumulators keep loads in flight.
            __m128i a[4] = {};
            const __m128i* p = reinterpret_cast<const __m128i*>(buf.data() + r.begin());
            const size_t n = (r.end() - r.begin()) / 2;
            for (size_t i = 0; i + 4 <= n; i += 4)
              for (int j = 0; j < 4; ++j) a[j] = _mm_add_epi64(a[j], _mm_load_si128(p + i + j));
            int64_t out[2];
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                             _mm_add_epi64(_mm_add_epi64(a[0], a[1]), _mm_add_epi64(a[2], a[3])));
            return acc + out[0] + out[1];
          },
          [](int64_t a, int64_t b) { return a + b; });
    });
  });
  if (sink == 42) std::printf(" ");  // keeps the sums from being optimised away
  return static_cast<double>(buf.size() * 8) / s / 1e9;
}

}  // namespace wq::bench
