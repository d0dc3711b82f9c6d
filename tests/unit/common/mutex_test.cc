#include "common/mutex.h"

#include <chrono>
#include <deque>
#include <future>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace cleave {
namespace {

using std::chrono::milliseconds;

// A counter whose increment is a separate read and write, so unsynchronised threads would
// lose updates.
struct Counter {
  Mutex mu;
  int value GUARDED_BY(mu) = 0;
  void Increment() EXCLUDES(mu) {
    MutexLock lock(&mu);
    const int read = value;
    std::this_thread::yield();
    value = read + 1;
  }
  int Get() EXCLUDES(mu) {
    MutexLock lock(&mu);
    return value;
  }
};

// True when another thread can take `mu` right now (it lets go at once).
bool FreeForOtherThreads(Mutex& mu) {
  return std::async(std::launch::async,
                    [&mu] {
                      if (!mu.TryLock()) return false;
                      mu.Unlock();
                      return true;
                    })
      .get();
}

TEST(MutexTest, MutexLockExcludesOtherThreads) {
  Counter counter;
  constexpr int kThreads = 4, kIncrements = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&counter] {
      for (int i = 0; i < kIncrements; ++i) counter.Increment();
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(counter.Get(), kThreads * kIncrements);
}

TEST(MutexTest, TryLockFailsWhileAnotherThreadHoldsIt) {
  Mutex mu;
  mu.Lock();
  EXPECT_FALSE(FreeForOtherThreads(mu));
  mu.Unlock();
  EXPECT_TRUE(FreeForOtherThreads(mu));
  if (!mu.TryLock()) {
    ADD_FAILURE() << "TryLock failed on a free mutex";
    return;
  }
  EXPECT_FALSE(FreeForOtherThreads(mu));
  mu.Unlock();
}

TEST(MutexTest, MutexLockHoldsForItsScopeAndCanLetGoInBetween) {
  Mutex mu;
  {
    MutexLock lock(&mu);
    EXPECT_FALSE(FreeForOtherThreads(mu));
    lock.Unlock();
    EXPECT_TRUE(FreeForOtherThreads(mu));
    lock.Lock();
    EXPECT_FALSE(FreeForOtherThreads(mu));
  }
  EXPECT_TRUE(FreeForOtherThreads(mu));
  {
    MutexLock lock(&mu);
    lock.Unlock();  // the destructor must not unlock a second time
  }
  EXPECT_TRUE(FreeForOtherThreads(mu));
}

TEST(MutexTest, MutexLockAdoptsALockTakenByTryLock) {
  Mutex mu;
  if (!mu.TryLock()) {
    ADD_FAILURE() << "TryLock failed on a free mutex";
    return;
  }
  {
    MutexLock lock(&mu, std::adopt_lock);
    EXPECT_FALSE(FreeForOtherThreads(mu));
  }
  EXPECT_TRUE(FreeForOtherThreads(mu));
}

TEST(MutexTest, MutexLockReleasesWhenAnExceptionLeavesTheScope) {
  Mutex mu;
  EXPECT_THROW(
      {
        MutexLock lock(&mu);
        throw std::runtime_error("leaves the scope");
      },
      std::runtime_error);
  EXPECT_TRUE(FreeForOtherThreads(mu));
}

// A one-slot hand-off between threads.
struct Mailbox {
  Mutex mu;
  CondVar changed;
  bool full GUARDED_BY(mu) = false;
  int value GUARDED_BY(mu) = 0;
};

TEST(CondVarTest, WaitWithPredicateReturnsOnceItHolds) {
  Mailbox box;
  std::thread producer([&box] {
    {
      MutexLock lock(&box.mu);
      box.value = 42;
      box.full = true;
    }
    box.changed.NotifyAll();
  });
  int seen = 0;
  {
    MutexLock lock(&box.mu);
    box.changed.Wait(&box.mu, [&]() REQUIRES(box.mu) { return box.full; });
    EXPECT_TRUE(box.full);
    seen = box.value;
  }
  producer.join();
  EXPECT_EQ(seen, 42);
}

TEST(CondVarTest, PlainWaitReturnsHoldingTheMutex) {
  Mailbox box;
  std::thread producer;
  {
    MutexLock lock(&box.mu);
    // Started under the lock, so its notify cannot come before this thread waits.
    producer = std::thread([&box] {
      MutexLock inner(&box.mu);
      box.full = true;
      box.changed.NotifyOne();
    });
    while (!box.full) box.changed.Wait(&box.mu);
    EXPECT_FALSE(FreeForOtherThreads(box.mu));
  }
  producer.join();
  EXPECT_TRUE(FreeForOtherThreads(box.mu));
}

TEST(CondVarTest, WaitForTimesOutWhenThePredicateNeverHolds) {
  Mailbox box;
  MutexLock lock(&box.mu);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(
      box.changed.WaitFor(&box.mu, milliseconds(30), [&]() REQUIRES(box.mu) { return box.full; }));
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(30));
  // Still held after the time-out.
  EXPECT_FALSE(FreeForOtherThreads(box.mu));
}

TEST(CondVarTest, PlainWaitUntilReportsAPassedDeadline) {
  Mailbox box;
  MutexLock lock(&box.mu);
  EXPECT_FALSE(box.changed.WaitUntil(&box.mu, CondVar::Clock::now() - milliseconds(1)));
  EXPECT_FALSE(box.changed.WaitFor(&box.mu, milliseconds(0)));
  EXPECT_FALSE(box.changed.WaitFor(&box.mu, milliseconds(-5)));
}

TEST(CondVarTest, PredicateAlreadyTrueReturnsWithoutWaiting) {
  Mailbox box;
  MutexLock lock(&box.mu);
  box.full = true;
  // A deadline in the past still reports the predicate, which holds.
  EXPECT_TRUE(box.changed.WaitUntil(&box.mu, CondVar::Clock::now() - milliseconds(1),
                                    [&]() REQUIRES(box.mu) { return box.full; }));
  EXPECT_TRUE(
      box.changed.WaitFor(&box.mu, milliseconds(0), [&]() REQUIRES(box.mu) { return box.full; }));
}

TEST(CondVarTest, WaitForReturnsTrueWhenNotifiedBeforeTheTimeout) {
  Mailbox box;
  std::thread producer;
  bool held = false;
  {
    MutexLock lock(&box.mu);
    producer = std::thread([&box] {
      MutexLock inner(&box.mu);
      box.full = true;
      box.changed.NotifyAll();
    });
    // A huge timeout means no deadline (it must not overflow into the past).
    held = box.changed.WaitFor(&box.mu, std::chrono::hours::max(),
                               [&]() REQUIRES(box.mu) { return box.full; });
  }
  producer.join();
  EXPECT_TRUE(held);
}

TEST(CondVarTest, NotifyOneWakesAWaiterPerToken) {
  Mutex mu;
  CondVar available;
  std::deque<int> tokens;  // guarded by mu (a local: the analysis needs no annotation)
  std::vector<int> taken(2, -1);
  std::vector<std::thread> consumers;
  for (int c = 0; c < 2; ++c) {
    consumers.emplace_back([&, c] {
      MutexLock lock(&mu);
      available.Wait(&mu, [&] { return !tokens.empty(); });
      taken[c] = tokens.front();
      tokens.pop_front();
    });
  }
  for (int token : {7, 9}) {
    {
      MutexLock lock(&mu);
      tokens.push_back(token);
    }
    available.NotifyOne();
  }
  for (std::thread& t : consumers) t.join();
  EXPECT_TRUE(tokens.empty());
  EXPECT_EQ(taken[0] + taken[1], 16);
  EXPECT_NE(taken[0], taken[1]);
}

}  // namespace
}  // namespace cleave
