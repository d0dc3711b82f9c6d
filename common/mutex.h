// Mutex, MutexLock and CondVar: std::mutex and std::condition_variable with clang
// thread-safety annotations (common/thread_annotations.h), so the compiler can see every
// acquire and release. Use them instead of the std types wherever a mutex guards state, and
// mark that state GUARDED_BY(mu_).
//
//   mutable Mutex mu_;
//   CondVar changed_;
//   int count_ GUARDED_BY(mu_) = 0;
//
//   void Add() EXCLUDES(mu_) {
//     { MutexLock lock(&mu_); ++count_; }
//     changed_.NotifyAll();
//   }
//   void WaitForOne() EXCLUDES(mu_) {
//     MutexLock lock(&mu_);
//     changed_.Wait(&mu_, [&]() REQUIRES(mu_) { return count_ > 0; });
//   }
//
// Not recursive; none of them may be copied or moved.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "common/thread_annotations.h"

namespace cleave {

class CondVar;

// An exclusive, non-recursive lock.
class CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  // Blocks until this thread holds the lock. The thread must not hold it already.
  void Lock() ACQUIRE() { mu_.lock(); }
  // Lets go of the lock, which this thread must hold.
  void Unlock() RELEASE() { mu_.unlock(); }
  // Takes the lock if it is free, without blocking; true when this thread now holds it.
  bool TryLock() TRY_ACQUIRE(true) { return mu_.try_lock(); }
  // Tells the analysis the lock is held where it cannot see that (a callback that runs under
  // the lock). Checks nothing at run time: std::mutex does not know its owner.
  void AssertHeld() const ASSERT_CAPABILITY(this) {}

 private:
  friend class CondVar;
  std::mutex mu_;
};

// Holds `mu` from construction to destruction (or between Unlock and Lock, for a scope that
// must let go around a long call). `mu` must outlive the MutexLock.
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ACQUIRE(mu) : mu_(mu) { mu_->Lock(); }
  // Takes over `mu`, which this thread already holds (after a successful TryLock).
  MutexLock(Mutex* mu, std::adopt_lock_t) REQUIRES(mu) : mu_(mu) {}
  ~MutexLock() RELEASE() {
    if (held_) mu_->Unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  // Lets go before the scope ends; Lock takes it again. Call them alternately.
  void Unlock() RELEASE() {
    mu_->Unlock();
    held_ = false;
  }
  void Lock() ACQUIRE() {
    mu_->Lock();
    held_ = true;
  }

 private:
  Mutex* const mu_;
  bool held_ = true;
};

// A condition variable used with a Mutex. Every wait takes the Mutex, which the caller must
// hold; it is released while waiting and held again when the wait returns. Plain waits may
// wake spuriously; the predicate forms return only when the predicate holds (or on time-out).
// Predicates run with the mutex held: annotate them REQUIRES(mu) so their bodies are checked.
// Notify may be called with or without the mutex held.
class CondVar {
 public:
  using Clock = std::chrono::steady_clock;

  CondVar() = default;
  CondVar(const CondVar&) = delete;
  CondVar& operator=(const CondVar&) = delete;

  // Waits for a notification (or a spurious wake-up).
  void Wait(Mutex* mu) REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    cv_.wait(lock);
    lock.release();  // the caller keeps holding it
  }
  // Waits for a notification until `deadline`; false if the deadline passed.
  bool WaitUntil(Mutex* mu, Clock::time_point deadline) REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    const bool notified = cv_.wait_until(lock, deadline) == std::cv_status::no_timeout;
    lock.release();
    return notified;
  }
  // Waits for a notification for at most `timeout`; false if it passed.
  template <class Rep, class Period>
  bool WaitFor(Mutex* mu, std::chrono::duration<Rep, Period> timeout) REQUIRES(mu) {
    return WaitUntil(mu, Deadline(timeout));
  }

  // Waits until `ready()` is true.
  template <class Predicate>
  void Wait(Mutex* mu, Predicate ready) REQUIRES(mu) {
    while (!CallHeld(mu, ready)) Wait(mu);
  }
  // Waits until `ready()` is true or `deadline` passes; returns `ready()` at the end.
  template <class Predicate>
  bool WaitUntil(Mutex* mu, Clock::time_point deadline, Predicate ready) REQUIRES(mu) {
    while (!CallHeld(mu, ready)) {
      if (!WaitUntil(mu, deadline)) return CallHeld(mu, ready);
    }
    return true;
  }
  // Waits until `ready()` is true or `timeout` passes; returns `ready()` at the end.
  template <class Rep, class Period, class Predicate>
  bool WaitFor(Mutex* mu, std::chrono::duration<Rep, Period> timeout, Predicate ready)
      REQUIRES(mu) {
    return WaitUntil(mu, Deadline(timeout), ready);
  }

  // Wakes one waiting thread / every waiting thread.
  void NotifyOne() { cv_.notify_one(); }
  void NotifyAll() { cv_.notify_all(); }

 private:
  // The analysis cannot tie a predicate's REQUIRES(owner.mu_) to `mu`; callers hold it by
  // this class's contract.
  template <class Predicate>
  static bool CallHeld(Mutex*, Predicate& ready) NO_THREAD_SAFETY_ANALYSIS {
    return ready();
  }
  template <class Rep, class Period>
  static Clock::time_point Deadline(std::chrono::duration<Rep, Period> timeout) {
    const Clock::time_point now = Clock::now();
    // A huge timeout means "no deadline", not an overflow into the past: compared as doubles,
    // since converting hours::max() to the clock's nanoseconds would itself overflow.
    using Seconds = std::chrono::duration<double>;
    if (Seconds(timeout) >= Seconds(Clock::time_point::max() - now)) {
      return Clock::time_point::max();
    }
    return now + std::chrono::duration_cast<Clock::duration>(timeout);
  }

  std::condition_variable cv_;
};

}  // namespace cleave
