// ThreadSanitizer annotations for Debian's uninstrumented Abseil, linked only
// under --config=tsan (BUILD). Abseil's mutex synchronizes through its own
// futex code, which TSan cannot see, so without this every access guarded by
// an absl::Mutex looks like a race. The definitions below interpose the
// library's symbols (same declarations, hence the same mangled names; gRPC's
// calls through the PLT land here too), tell TSan about each lock and unlock
// with its mutex API, as an Abseil built with -fsanitize=thread does itself,
// and forward to the real functions found with dlsym(RTLD_NEXT). Everything
// between a pre_ and post_ annotation is ignored by TSan, which covers the
// Condition callbacks Abseil evaluates inside lock and unlock.
// CondVar::Signal/SignalAll need nothing: a woken waiter's happens-before
// edge comes from reacquiring the mutex.

#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/base/options.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

#if !ABSL_OPTION_USE_INLINE_NAMESPACE
#error "the mangled names below assume Abseil's inline namespace (absl::<ns>::)"
#endif

namespace {

#define WQ_ABSL_STRINGIFY_EXPANDED(x) #x
#define WQ_ABSL_STRINGIFY(x) WQ_ABSL_STRINGIFY_EXPANDED(x)

// The real definition of a member of absl::<inline namespace>; `member` is
// the rest of its mangled name, in which NS0_ stands for that namespace.
template <typename Fn>
Fn RealAbseil(bool is_const_member, const char* member) {
  const std::string inline_namespace = WQ_ABSL_STRINGIFY(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  const std::string name = std::string(is_const_member ? "_ZNK" : "_ZN") + "4absl" +
                           std::to_string(inline_namespace.size()) + inline_namespace + member;
  void* real = dlsym(RTLD_NEXT, name.c_str());
  if (real == nullptr) {
    std::fprintf(stderr, "absl tsan annotations: %s not found after this library: %s\n",
                 name.c_str(), dlerror());
    std::abort();
  }
  return reinterpret_cast<Fn>(real);
}

using absl::Condition;
using absl::CondVar;
using absl::Duration;
using absl::Mutex;
using absl::Notification;
using absl::Time;

struct Abseil {
  void (*lock)(Mutex*) = RealAbseil<decltype(lock)>(false, "5Mutex4LockEv");
  void (*unlock)(Mutex*) = RealAbseil<decltype(unlock)>(false, "5Mutex6UnlockEv");
  bool (*try_lock)(Mutex*) = RealAbseil<decltype(try_lock)>(false, "5Mutex7TryLockEv");
  void (*reader_lock)(Mutex*) = RealAbseil<decltype(reader_lock)>(false, "5Mutex10ReaderLockEv");
  void (*reader_unlock)(Mutex*) =
      RealAbseil<decltype(reader_unlock)>(false, "5Mutex12ReaderUnlockEv");
  bool (*reader_try_lock)(Mutex*) =
      RealAbseil<decltype(reader_try_lock)>(false, "5Mutex13ReaderTryLockEv");
  void (*lock_when)(Mutex*, const Condition&) =
      RealAbseil<decltype(lock_when)>(false, "5Mutex8LockWhenERKNS0_9ConditionE");
  void (*reader_lock_when)(Mutex*, const Condition&) =
      RealAbseil<decltype(reader_lock_when)>(false, "5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  bool (*lock_when_with_timeout)(Mutex*, const Condition&, Duration) =
      RealAbseil<decltype(lock_when_with_timeout)>(
          false, "5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  bool (*lock_when_with_deadline)(Mutex*, const Condition&, Time) =
      RealAbseil<decltype(lock_when_with_deadline)>(
          false, "5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  bool (*reader_lock_when_with_timeout)(Mutex*, const Condition&, Duration) =
      RealAbseil<decltype(reader_lock_when_with_timeout)>(
          false, "5Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  bool (*reader_lock_when_with_deadline)(Mutex*, const Condition&, Time) =
      RealAbseil<decltype(reader_lock_when_with_deadline)>(
          false, "5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  void (*await)(Mutex*, const Condition&) =
      RealAbseil<decltype(await)>(false, "5Mutex5AwaitERKNS0_9ConditionE");
  bool (*await_with_timeout)(Mutex*, const Condition&, Duration) =
      RealAbseil<decltype(await_with_timeout)>(
          false, "5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  bool (*await_with_deadline)(Mutex*, const Condition&, Time) =
      RealAbseil<decltype(await_with_deadline)>(
          false, "5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  void (*destroy)(Mutex*) = RealAbseil<decltype(destroy)>(false, "5MutexD1Ev");
  void (*wait)(CondVar*, Mutex*) =
      RealAbseil<decltype(wait)>(false, "7CondVar4WaitEPNS0_5MutexE");
  bool (*wait_with_timeout)(CondVar*, Mutex*, Duration) = RealAbseil<decltype(wait_with_timeout)>(
      false, "7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  bool (*wait_with_deadline)(CondVar*, Mutex*, Time) = RealAbseil<decltype(wait_with_deadline)>(
      false, "7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  void (*notify)(Notification*) =
      RealAbseil<decltype(notify)>(false, "12Notification6NotifyEv");
  void (*wait_for_notification)(const Notification*) =
      RealAbseil<decltype(wait_for_notification)>(true, "12Notification19WaitForNotificationEv");
  bool (*wait_for_notification_with_timeout)(const Notification*, Duration) =
      RealAbseil<decltype(wait_for_notification_with_timeout)>(
          true, "12Notification30WaitForNotificationWithTimeoutENS0_8DurationE");
  bool (*wait_for_notification_with_deadline)(const Notification*, Time) =
      RealAbseil<decltype(wait_for_notification_with_deadline)>(
          true, "12Notification31WaitForNotificationWithDeadlineENS0_4TimeE");
};

// Resolved on first use: libraries lock mutexes in their static constructors,
// before this one's would run.
const Abseil& Real() {
  static const Abseil real;
  return real;
}

// Mutexes this thread holds in shared mode: Await and CondVar::Wait release
// and reacquire in the mode the caller holds, which TSan must be told.
thread_local std::vector<const Mutex*> held_shared;

// Whether this thread is inside one of the wrappers below. Abseil's
// *WithTimeout functions call their *WithDeadline siblings through the PLT,
// that is, the wrappers again, which must then only forward: a second
// annotation would count as a recursive lock, and the unlock would release
// nothing.
thread_local bool annotating = false;

// Runs `call` (which returns bool; true for void functions) annotated by
// `before` and `after`, or bare when nested.
template <typename Call, typename Before, typename After>
bool Annotate(Call call, Before before, After after) {
  if (annotating) return call();
  annotating = true;
  before();
  const bool result = call();
  after(result);
  annotating = false;
  return result;
}

template <typename Call>
bool Locking(Mutex* mu, unsigned mode, Call call) {
  return Annotate(
      call, [&] { __tsan_mutex_pre_lock(mu, mode); },
      [&](bool) {
        __tsan_mutex_post_lock(mu, mode, 0);
        if (mode == __tsan_mutex_read_lock) held_shared.push_back(mu);
      });
}

template <typename Call>
bool TryLocking(Mutex* mu, unsigned mode, Call call) {
  return Annotate(
      call, [&] { __tsan_mutex_pre_lock(mu, mode | __tsan_mutex_try_lock); },
      [&](bool locked) {
        __tsan_mutex_post_lock(
            mu, mode | __tsan_mutex_try_lock | (locked ? 0 : __tsan_mutex_try_lock_failed), 0);
        if (locked && mode == __tsan_mutex_read_lock) held_shared.push_back(mu);
      });
}

template <typename Call>
void Unlocking(Mutex* mu, unsigned mode, Call call) {
  Annotate(
      call,
      [&] {
        if (mode == __tsan_mutex_read_lock) {
          held_shared.erase(std::find(held_shared.begin(), held_shared.end(), mu));
        }
        __tsan_mutex_pre_unlock(mu, mode);
      },
      [&](bool) { __tsan_mutex_post_unlock(mu, mode); });
}

// Await and CondVar waits: held on entry and on return, released in between.
template <typename Call>
bool Waiting(Mutex* mu, Call call) {
  const unsigned mode =
      std::find(held_shared.begin(), held_shared.end(), mu) != held_shared.end()
          ? __tsan_mutex_read_lock
          : 0;
  return Annotate(
      call, [&] { __tsan_mutex_pre_unlock(mu, mode); },
      [&](bool) {
        __tsan_mutex_post_unlock(mu, mode);
        __tsan_mutex_pre_lock(mu, mode);
        __tsan_mutex_post_lock(mu, mode, 0);
      });
}

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  const Abseil& real = Real();
  Locking(this, 0, [&] {
    real.lock(this);
    return true;
  });
}

void Mutex::Unlock() {
  const Abseil& real = Real();
  Unlocking(this, 0, [&] {
    real.unlock(this);
    return true;
  });
}

bool Mutex::TryLock() {
  const Abseil& real = Real();
  return TryLocking(this, 0, [&] { return real.try_lock(this); });
}

void Mutex::ReaderLock() {
  const Abseil& real = Real();
  Locking(this, __tsan_mutex_read_lock, [&] {
    real.reader_lock(this);
    return true;
  });
}

void Mutex::ReaderUnlock() {
  const Abseil& real = Real();
  Unlocking(this, __tsan_mutex_read_lock, [&] {
    real.reader_unlock(this);
    return true;
  });
}

bool Mutex::ReaderTryLock() {
  const Abseil& real = Real();
  return TryLocking(this, __tsan_mutex_read_lock, [&] { return real.reader_try_lock(this); });
}

void Mutex::LockWhen(const Condition& cond) {
  const Abseil& real = Real();
  Locking(this, 0, [&] {
    real.lock_when(this, cond);
    return true;
  });
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  const Abseil& real = Real();
  Locking(this, __tsan_mutex_read_lock, [&] {
    real.reader_lock_when(this, cond);
    return true;
  });
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  const Abseil& real = Real();
  return Locking(this, 0, [&] { return real.lock_when_with_timeout(this, cond, timeout); });
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  const Abseil& real = Real();
  return Locking(this, 0, [&] { return real.lock_when_with_deadline(this, cond, deadline); });
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  const Abseil& real = Real();
  return Locking(this, __tsan_mutex_read_lock,
                 [&] { return real.reader_lock_when_with_timeout(this, cond, timeout); });
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, Time deadline) {
  const Abseil& real = Real();
  return Locking(this, __tsan_mutex_read_lock,
                 [&] { return real.reader_lock_when_with_deadline(this, cond, deadline); });
}

void Mutex::Await(const Condition& cond) {
  const Abseil& real = Real();
  Waiting(this, [&] {
    real.await(this, cond);
    return true;
  });
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  const Abseil& real = Real();
  return Waiting(this, [&] { return real.await_with_timeout(this, cond, timeout); });
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  const Abseil& real = Real();
  return Waiting(this, [&] { return real.await_with_deadline(this, cond, deadline); });
}

Mutex::~Mutex() {
  const Abseil& real = Real();
  __tsan_mutex_destroy(this, __tsan_mutex_not_static);
  real.destroy(this);
}

void CondVar::Wait(Mutex* mu) {
  const Abseil& real = Real();
  Waiting(mu, [&] {
    real.wait(this, mu);
    return true;
  });
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  const Abseil& real = Real();
  return Waiting(mu, [&] { return real.wait_with_timeout(this, mu, timeout); });
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  const Abseil& real = Real();
  return Waiting(mu, [&] { return real.wait_with_deadline(this, mu, deadline); });
}

// A waiter that finds the notification already given reads only its atomic
// flag, inside uninstrumented code: the happens-before edge from Notify() is
// made explicit on the notification's address.
void Notification::Notify() {
  const Abseil& real = Real();
  __tsan_release(this);
  real.notify(this);
}

void Notification::WaitForNotification() const {
  Real().wait_for_notification(this);
  __tsan_acquire(const_cast<Notification*>(this));
}

bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  const bool notified = Real().wait_for_notification_with_timeout(this, timeout);
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  const bool notified = Real().wait_for_notification_with_deadline(this, deadline);
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl
