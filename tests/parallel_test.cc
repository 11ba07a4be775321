// ParallelFor (common/io/parallel.h) hands data from the caller to the
// loop's chunks and back. In every build this checks the loops' results;
// under --config=tsan, where ParallelFor tells TSan about Debian's
// uninstrumented oneTBB's fork and join, it also checks that TSan sees those
// edges: a report fails the test (TSan's exit code). The disabled test is the
// manual counter-check that TSan still reports a race between two chunks:
//   SANITIZE_TARGETS=//tests:parallel_test scripts/sanitize tsan, with
//   --test_arg=--gtest_also_run_disabled_tests (README "Fuzzing, sanitizers
//   and load"); built with --define=wq_tsan=0 the other tests are reported.
#include "common/io/parallel.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tbb/blocked_range.h"
#include "tbb/partitioner.h"
#include "tbb/task_arena.h"

namespace wq {
namespace {

constexpr int64_t kItems = 4096;

// Holds the loop's first chunk until a thread other than the caller has run
// one, so that the loop does hand work between threads wherever the arena
// has more than one. Its atomics are relaxed, which gives TSan no
// happens-before edge: the only edges between the threads are ParallelFor's.
class OtherThreadRuns {
 public:
  void ChunkStarts(bool first_chunk) {
    if (std::this_thread::get_id() != caller_) other_ran_.store(true, std::memory_order_relaxed);
    if (!first_chunk || tbb::this_task_arena::max_concurrency() < 2) return;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!other_ran_.load(std::memory_order_relaxed) &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
    }
  }

  void ExpectedItRan() const {
    if (tbb::this_task_arena::max_concurrency() < 2) return;
    EXPECT_TRUE(other_ran_.load(std::memory_order_relaxed));
  }

 private:
  const std::thread::id caller_ = std::this_thread::get_id();
  std::atomic<bool> other_ran_{false};
};

// Plain, non-atomic data written by the caller before the loop.
std::vector<int64_t> Inputs() {
  std::vector<int64_t> inputs(kItems);
  std::iota(inputs.begin(), inputs.end(), 1);
  return inputs;
}

int64_t SumOfDoubled() { return kItems * (kItems + 1); }

TEST(ParallelForTest, RangeChunksSeeTheCallersWritesAndItSeesTheirs) {
  const std::vector<int64_t> inputs = Inputs();
  std::vector<int64_t> doubled(kItems);
  OtherThreadRuns threads;
  ParallelFor(
      tbb::blocked_range<int64_t>(0, kItems, 64),
      [&](const tbb::blocked_range<int64_t>& range) {
        threads.ChunkStarts(range.begin() == 0);
        for (int64_t i = range.begin(); i < range.end(); ++i) doubled[i] = 2 * inputs[i];
      },
      tbb::simple_partitioner());
  threads.ExpectedItRan();
  EXPECT_EQ(std::accumulate(doubled.begin(), doubled.end(), int64_t{0}), SumOfDoubled());
}

TEST(ParallelForTest, IndexBodiesAndNestedLoopsSeeTheCallersWritesAndItSeesTheirs) {
  const std::vector<int64_t> inputs = Inputs();
  constexpr int64_t kRows = 16;
  const int64_t row_length = kItems / kRows;
  std::vector<int64_t> doubled(kItems);
  OtherThreadRuns threads;
  ParallelFor(int64_t{0}, kRows, [&](int64_t row) {
    threads.ChunkStarts(row == 0);
    ParallelFor(tbb::blocked_range<int64_t>(row * row_length, (row + 1) * row_length),
                [&](const tbb::blocked_range<int64_t>& range) {
                  for (int64_t i = range.begin(); i < range.end(); ++i) {
                    doubled[i] = 2 * inputs[i];
                  }
                });
  });
  threads.ExpectedItRan();
  EXPECT_EQ(std::accumulate(doubled.begin(), doubled.end(), int64_t{0}), SumOfDoubled());
}

// Manual counter-check only: TSan must report this race between chunks (and
// fail the test).
TEST(ParallelForTest, DISABLED_ChunksWritingOneCounterAreReported) {
  int64_t counter = 0;
  OtherThreadRuns threads;
  ParallelFor(
      tbb::blocked_range<int64_t>(0, kItems, 64),
      [&](const tbb::blocked_range<int64_t>& range) {
        threads.ChunkStarts(range.begin() == 0);
        counter += range.size();
      },
      tbb::simple_partitioner());
  threads.ExpectedItRan();
  EXPECT_GT(counter, 0);
}

}  // namespace
}  // namespace wq
