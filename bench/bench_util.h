// Timing helpers and the main() shared by the benchmarks.
#ifndef WQ_BENCH_BENCH_UTIL_H_
#define WQ_BENCH_BENCH_UTIL_H_

#include <algorithm>
#include <chrono>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace wq::bench {

// Best wall time of `reps` runs of f, in seconds: the least disturbed run
// on a shared machine.
template <typename F>
double BestSeconds(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  return best;
}

// STREAM-like read bandwidth in GB/s: best of `reps` sums of a 1 GiB buffer
// with `threads` oneTBB threads.
double ReadBandwidth(int threads, int reps);

// main() of a benchmark tool: parses absl flags (with `usage` for --help),
// runs `run` and turns a failed status into "<name>: <status>" on stderr and
// exit code 1.
int RunTool(int argc, char** argv, absl::string_view name, absl::string_view usage,
            absl::Status (*run)());

}  // namespace wq::bench

#endif  // WQ_BENCH_BENCH_UTIL_H_
