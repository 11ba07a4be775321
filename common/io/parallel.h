// wq's parallel loops: tbb::parallel_for, made visible to ThreadSanitizer.
// Debian's libtbb is not built with -fsanitize=thread, so TSan cannot see
// its scheduler hand a loop's chunks to worker threads and back, and reports
// a chunk reading what the caller wrote before the loop (or the caller
// reading what a chunk wrote) as a race. Under --config=tsan (BUILD defines
// WQ_TSAN_PARALLEL_EDGES) ParallelFor tells TSan the edges parallel_for
// guarantees: the caller's work before the loop happens before every chunk,
// and every chunk before the loop returns. Chunks get no edge to each other,
// so races between them are still reported. Otherwise ParallelFor is
// tbb::parallel_for itself: the same call with the same body.
//
// (tbb::this_task_arena::isolate and the execute of a task_arena that the
// caller joins run the functor on the calling thread: no handoff to see.)
#ifndef WQ_COMMON_IO_PARALLEL_H_
#define WQ_COMMON_IO_PARALLEL_H_

#include <utility>

#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"

#if WQ_TSAN_PARALLEL_EDGES
#include <sanitizer/tsan_interface.h>
#endif

namespace wq {
namespace parallel_internal {

#if WQ_TSAN_PARALLEL_EDGES
// One loop's fork and join edges, on two addresses in its caller's frame:
// constructed before the loop, it releases the caller's work to the chunks;
// each chunk acquires that and releases its own work, which the destructor
// acquires once the loop has returned.
class ForkJoinEdges {
 public:
  ForkJoinEdges() { __tsan_release(&fork_); }
  ~ForkJoinEdges() { __tsan_acquire(&join_); }
  ForkJoinEdges(const ForkJoinEdges&) = delete;
  ForkJoinEdges& operator=(const ForkJoinEdges&) = delete;

  template <typename Body>
  auto Chunk(const Body& body) {
    return [this, &body](auto&&... chunk) {
      __tsan_acquire(&fork_);
      body(std::forward<decltype(chunk)>(chunk)...);
      __tsan_release(&join_);
    };
  }

 private:
  char fork_;
  char join_;
};
#else
struct ForkJoinEdges {
  template <typename Body>
  const Body& Chunk(const Body& body) {
    return body;
  }
};
#endif

}  // namespace parallel_internal

// tbb::parallel_for over a range: body(const tbb::blocked_range<Index>&) for
// each chunk, with tbb's optional partitioner.
template <typename Index, typename Body, typename... Partitioner>
void ParallelFor(const tbb::blocked_range<Index>& range, const Body& body,
                 Partitioner&&... partitioner) {
  parallel_internal::ForkJoinEdges edges;
  tbb::parallel_for(range, edges.Chunk(body), std::forward<Partitioner>(partitioner)...);
}

// tbb::parallel_for over indices: body(Index) for each of [first, last).
template <typename Index, typename Body, typename... Partitioner>
void ParallelFor(Index first, Index last, const Body& body, Partitioner&&... partitioner) {
  parallel_internal::ForkJoinEdges edges;
  tbb::parallel_for(first, last, edges.Chunk(body), std::forward<Partitioner>(partitioner)...);
}

}  // namespace wq

#endif  // WQ_COMMON_IO_PARALLEL_H_
