// Each of Abseil's ways to hand data from one thread to another under an
// absl::Mutex. In every build this checks that the handover works; under
// --config=tsan, where third_party/absl_tsan makes Debian's uninstrumented
// Abseil visible to TSan, it also checks that TSan sees the happens-before
// edges: a report fails the test (TSan's exit code). The disabled test is
// the manual counter-check that TSan does report an unguarded counter:
//   scripts/sanitize tsan with SANITIZE_TARGETS=//tests:absl_sync_annotations_test
//   and --test_arg=--gtest_also_run_disabled_tests (README "Fuzzing,
//   sanitizers and load").
#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace {

constexpr int kThreads = 4;
constexpr int kIncrements = 2000;
constexpr absl::Duration kLongEnough = absl::Seconds(30);

template <typename Body>
void RunThreads(Body body) {
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) threads.emplace_back(body);
  for (std::thread& thread : threads) thread.join();
}

// The guarded state: plain, non-atomic fields, so an unseen edge is a race.
struct Shared {
  absl::Mutex mu;
  long counter = 0;
  std::string payload;
  bool ready = false;
};

TEST(AbslSyncAnnotationsTest, LockAndTryLockGuardACounter) {
  Shared shared;
  RunThreads([&] {
    for (int i = 0; i < kIncrements; ++i) {
      if (i % 2 == 0 && shared.mu.TryLock()) {
        ++shared.counter;
        shared.mu.Unlock();
        continue;
      }
      absl::MutexLock lock(&shared.mu);
      ++shared.counter;
    }
  });
  EXPECT_EQ(shared.counter, kThreads * kIncrements);
}

TEST(AbslSyncAnnotationsTest, ReadersSeeTheWritersValue) {
  Shared shared;
  std::thread writer([&] {
    for (int i = 1; i <= kIncrements; ++i) {
      absl::MutexLock lock(&shared.mu);
      shared.counter = i;
    }
  });
  long seen_max = 0;
  absl::Mutex seen_mu;
  RunThreads([&] {
    long last = 0;
    while (last < kIncrements) {
      if (shared.mu.ReaderTryLock()) {
        last = shared.counter;
        shared.mu.ReaderUnlock();
      }
      absl::ReaderMutexLock lock(&shared.mu);
      last = shared.counter;
    }
    absl::MutexLock lock(&seen_mu);
    seen_max = std::max(seen_max, last);
  });
  writer.join();
  EXPECT_EQ(seen_max, kIncrements);
}

TEST(AbslSyncAnnotationsTest, ConditionsHandOverAPayload) {
  Shared shared;
  const absl::Condition ready(&shared.ready);
  std::string received[4];
  std::thread lock_when([&] {
    shared.mu.LockWhen(ready);
    received[0] = shared.payload;
    shared.mu.Unlock();
  });
  std::thread lock_when_with_timeout([&] {
    EXPECT_TRUE(shared.mu.LockWhenWithTimeout(ready, kLongEnough));
    received[1] = shared.payload;
    shared.mu.Unlock();
  });
  std::thread await([&] {
    absl::MutexLock lock(&shared.mu);
    shared.mu.Await(ready);
    received[2] = shared.payload;
  });
  std::thread reader_await_with_deadline([&] {
    absl::ReaderMutexLock lock(&shared.mu);
    EXPECT_TRUE(shared.mu.AwaitWithDeadline(ready, absl::Now() + kLongEnough));
    received[3] = shared.payload;
  });
  absl::SleepFor(absl::Milliseconds(50));  // let some of them block first
  {
    absl::MutexLock lock(&shared.mu);
    shared.payload = "handed over";
    shared.ready = true;
  }
  for (std::thread* thread :
       {&lock_when, &lock_when_with_timeout, &await, &reader_await_with_deadline}) {
    thread->join();
  }
  for (const std::string& payload : received) EXPECT_EQ(payload, "handed over");
}

TEST(AbslSyncAnnotationsTest, CondVarHandsOverAPayload) {
  Shared shared;
  absl::CondVar changed;
  std::string received[2];
  std::thread wait([&] {
    absl::MutexLock lock(&shared.mu);
    while (!shared.ready) changed.Wait(&shared.mu);
    received[0] = shared.payload;
  });
  std::thread wait_with_timeout([&] {
    absl::MutexLock lock(&shared.mu);
    const absl::Time deadline = absl::Now() + kLongEnough;
    while (!shared.ready && absl::Now() < deadline) changed.WaitWithTimeout(&shared.mu, kLongEnough);
    received[1] = shared.payload;
  });
  absl::SleepFor(absl::Milliseconds(50));
  {
    absl::MutexLock lock(&shared.mu);
    shared.payload = "handed over";
    shared.ready = true;
  }
  changed.SignalAll();
  wait.join();
  wait_with_timeout.join();
  for (const std::string& payload : received) EXPECT_EQ(payload, "handed over");
}

TEST(AbslSyncAnnotationsTest, NotificationHandsOverAPayload) {
  std::string payload;
  absl::Notification early, late;
  std::thread notifier([&] {
    payload = "handed over";
    early.Notify();
  });
  notifier.join();
  early.WaitForNotification();  // already notified: the fast path
  EXPECT_EQ(payload, "handed over");

  std::thread waiter([&] {
    ASSERT_TRUE(late.WaitForNotificationWithTimeout(kLongEnough));
    EXPECT_EQ(payload, "handed over twice");
  });
  absl::SleepFor(absl::Milliseconds(50));
  payload = "handed over twice";
  late.Notify();
  waiter.join();
}

// Manual counter-check only: TSan must report this race (and fail the test).
TEST(AbslSyncAnnotationsTest, DISABLED_UnguardedCounterIsReported) {
  Shared shared;
  RunThreads([&] {
    for (int i = 0; i < kIncrements; ++i) ++shared.counter;
  });
  EXPECT_GT(shared.counter, 0);
}

}  // namespace
