// DynamicBatcher with a fake clock: an idle batcher computes a lone item at once; while a batch
// is computed the next one is released when full or when the oldest item has waited long
// enough (the delay tests hold an idle batcher, hold_when_idle, so the delay alone decides), a
// full queue refuses with kOverloaded, expired items are never
// computed, shutdown gives every queued item exactly one outcome, and so does a batch whose
// compute callback throws.
#include "cloud/dynamic_batcher.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>

namespace cleave::cloud {
namespace {

// Records every outcome, keyed by item id. Thread-safe.
struct Recorder {
  std::mutex mu;
  std::condition_variable cv;
  std::map<int, int> outcomes;  // id -> number of outcomes
  std::vector<std::vector<int>> batches;
  std::vector<int> expired, shut_down, compute_failed;

  void Compute(std::vector<int>& batch) {
    std::lock_guard<std::mutex> lock(mu);
    batches.push_back(batch);
    for (int id : batch) ++outcomes[id];
    cv.notify_all();
  }
  void Reject(Rejection why, int id) {
    std::lock_guard<std::mutex> lock(mu);
    switch (why) {
      case Rejection::kExpired: expired.push_back(id); break;
      case Rejection::kShutDown: shut_down.push_back(id); break;
      case Rejection::kComputeFailed: compute_failed.push_back(id); break;
    }
    ++outcomes[id];
    cv.notify_all();
  }
  // Waits (without a timing assertion) until `n` items have an outcome.
  void WaitFor(size_t n) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return outcomes.size() >= n; });
  }
};

DynamicBatcherOptions Options(int max_batch, int64_t delay_us, size_t max_queue, int workers) {
  DynamicBatcherOptions o;
  o.max_batch = max_batch;
  o.max_queue_delay_us = delay_us;
  o.max_queue = max_queue;
  o.workers = workers;
  o.hold_when_idle = true;
  return o;
}

std::unique_ptr<DynamicBatcher<int>> MakeBatcher(const DynamicBatcherOptions& options,
                                                 FakeClock& clock, Recorder& rec) {
  EXPECT_TRUE(options.Validate().ok());
  return std::make_unique<DynamicBatcher<int>>(
      options, clock, [&rec](int, std::vector<int>& batch) { rec.Compute(batch); },
      [&rec](Rejection why, int& id) { rec.Reject(why, id); });
}

// A batcher whose compute callback takes `micros_per_item` per item on the fake clock.
std::unique_ptr<DynamicBatcher<int>> MakeTimedBatcher(const DynamicBatcherOptions& options,
                                                      FakeClock& clock, Recorder& rec,
                                                      int64_t micros_per_item) {
  EXPECT_TRUE(options.Validate().ok());
  return std::make_unique<DynamicBatcher<int>>(
      options, clock,
      [&clock, &rec, micros_per_item](int, std::vector<int>& batch) {
        clock.Advance(micros_per_item * static_cast<int64_t>(batch.size()));
        rec.Compute(batch);
      },
      [&rec](Rejection why, int& id) { rec.Reject(why, id); });
}

TEST(DynamicBatcherTest, ValidateRejectsBadOptions) {
  EXPECT_FALSE(Options(0, 0, 1, 1).Validate().ok());
  EXPECT_FALSE(Options(1, -1, 1, 1).Validate().ok());
  EXPECT_FALSE(Options(1, 0, 0, 1).Validate().ok());
  EXPECT_FALSE(Options(1, 0, 1, -1).Validate().ok());
  EXPECT_TRUE(Options(1, 0, 1, 0).Validate().ok());
}

TEST(DynamicBatcherTest, ReleasesWhenFull) {
  FakeClock clock(1000);
  Recorder rec;
  auto b = MakeBatcher(Options(4, 1000, 16, 0), clock, rec);
  for (int id = 0; id < 3; ++id) ASSERT_EQ(b->Submit(int{id}, 0), SubmitResult::kAccepted);
  EXPECT_EQ(b->RunOnce(), 0u);  // 3 of 4, no time passed
  ASSERT_EQ(b->Submit(3, 0), SubmitResult::kAccepted);
  EXPECT_EQ(b->RunOnce(), 4u);
  ASSERT_EQ(rec.batches.size(), 1u);
  EXPECT_EQ(rec.batches[0], (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(b->queued(), 0u);
}

TEST(DynamicBatcherTest, ReleasesWhenTheOldestHasWaitedTheDelay) {
  FakeClock clock(1000);
  Recorder rec;
  auto b = MakeBatcher(Options(8, 500, 16, 0), clock, rec);
  ASSERT_EQ(b->Submit(1, 0), SubmitResult::kAccepted);
  clock.Advance(200);
  ASSERT_EQ(b->Submit(2, 0), SubmitResult::kAccepted);
  clock.Advance(299);
  EXPECT_EQ(b->RunOnce(), 0u);  // oldest waited 499 us
  clock.Advance(1);
  EXPECT_EQ(b->RunOnce(), 2u);  // 500 us: both go, the younger one too
  ASSERT_EQ(rec.batches.size(), 1u);
  EXPECT_EQ(rec.batches[0], (std::vector<int>{1, 2}));
}

// The default: with no batch being computed a lone item has nothing to wait with and goes at
// once, whatever the delay.
TEST(DynamicBatcherTest, AnIdleBatcherComputesALoneItemAtOnce) {
  FakeClock clock(1000);
  Recorder rec;
  DynamicBatcherOptions o = Options(8, 1'000'000, 16, 0);
  o.hold_when_idle = false;
  auto b = MakeBatcher(o, clock, rec);
  ASSERT_EQ(b->Submit(1, 0), SubmitResult::kAccepted);
  EXPECT_EQ(b->RunOnce(), 1u);  // no time has passed
  ASSERT_EQ(rec.batches.size(), 1u);
  EXPECT_EQ(rec.batches[0], std::vector<int>{1});
}

// Blocks the first batch's compute until released, so a test can hold a batch "running".
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool entered = false, open = false;
  void Pass() {
    std::unique_lock<std::mutex> lock(mu);
    entered = true;
    cv.notify_all();
    cv.wait(lock, [&] { return open; });
  }
  void AwaitEntered() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return entered; });
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu);
    open = true;
    cv.notify_all();
  }
};

// While a batch is computed the items arriving meanwhile have a queue to wait with: an idle
// second worker holds them (the delay never passes on the fake clock), and they go together
// as soon as nothing is computed any more ("natural batching"), on one worker or two.
TEST(DynamicBatcherTest, ItemsArrivingDuringABatchGoTogetherWhenItEnds) {
  for (int workers : {1, 2}) {
    SCOPED_TRACE("workers " + std::to_string(workers));
    FakeClock clock(1000);
    Recorder rec;
    Gate gate;
    DynamicBatcherOptions o = Options(8, 1'000'000, 16, workers);
    o.hold_when_idle = false;
    DynamicBatcher<int> b(
        o, clock,
        [&](int, std::vector<int>& batch) {
          if (batch.front() == 0) gate.Pass();
          rec.Compute(batch);
        },
        [&](Rejection why, int& id) { rec.Reject(why, id); });
    b.Start();
    ASSERT_EQ(b.Submit(0, 0), SubmitResult::kAccepted);
    gate.AwaitEntered();  // item 0 went alone, at once
    for (int id = 1; id <= 3; ++id) ASSERT_EQ(b.Submit(int{id}, 0), SubmitResult::kAccepted);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // an idle worker would show
    EXPECT_EQ(b.queued(), 3u);
    gate.Open();
    rec.WaitFor(4);
    b.Shutdown(DynamicBatcher<int>::ShutdownMode::kDrain);
    ASSERT_EQ(rec.batches.size(), 2u);
    EXPECT_EQ(rec.batches[0], std::vector<int>{0});
    EXPECT_EQ(rec.batches[1], (std::vector<int>{1, 2, 3}));
  }
}

TEST(DynamicBatcherTest, ZeroDelayAndBatchOfOneIsUnbatched) {
  FakeClock clock;
  Recorder rec;
  auto b = MakeBatcher(Options(1, 0, 16, 0), clock, rec);
  for (int id = 0; id < 3; ++id) ASSERT_EQ(b->Submit(int{id}, 0), SubmitResult::kAccepted);
  while (b->RunOnce() > 0) {
  }
  ASSERT_EQ(rec.batches.size(), 3u);
  for (const auto& batch : rec.batches) EXPECT_EQ(batch.size(), 1u);
}

TEST(DynamicBatcherTest, FullQueueRefusesWithOverloadedAndKeepsTheItem) {
  FakeClock clock;
  Recorder rec;
  auto b = MakeBatcher(Options(4, 1000, 5, 0), clock, rec);
  int refused = 0;
  for (int id = 0; id < 12; ++id) {
    if (b->Submit(int{id}, 0) == SubmitResult::kOverloaded) ++refused;
  }
  EXPECT_EQ(refused, 7);
  EXPECT_EQ(b->queued(), 5u);
  EXPECT_EQ(b->stats().overloaded, 7u);
  EXPECT_EQ(b->stats().accepted, 5u);
  // The refused item stays with the caller.
  std::vector<int> item = {42};
  DynamicBatcher<std::vector<int>> vb(
      Options(1, 0, 1, 0), clock, [](int, std::vector<std::vector<int>>&) {},
      [](Rejection, std::vector<int>&) {});
  ASSERT_EQ(vb.Submit(std::vector<int>{1}, 0), SubmitResult::kAccepted);
  EXPECT_EQ(vb.Submit(std::move(item), 0), SubmitResult::kOverloaded);
  EXPECT_EQ(item, std::vector<int>{42});
}

TEST(DynamicBatcherTest, ValidateRejectsANegativeQueueWaitBound) {
  DynamicBatcherOptions o = Options(4, 0, 8, 0);
  o.max_queue_wait_us = -1;
  EXPECT_FALSE(o.Validate().ok());
  o.max_queue_wait_us = 0;
  EXPECT_TRUE(o.Validate().ok());
}

// Admission by estimated queueing time: the compute callback advances the fake clock by 100 us
// per item; every batch has 4 items, so the cost model is all per-item (100 us) and the
// batcher admits only while (items ahead) x 100 us is within the bound; the refused item stays
// with the caller and is counted.
TEST(DynamicBatcherTest, QueueWaitBoundRefusesOnceTheEstimatedWaitIsTooLong) {
  FakeClock clock(1000);
  Recorder rec;
  DynamicBatcherOptions o = Options(4, 0, 64, 0);
  o.max_queue_wait_us = 450;
  auto batcher = MakeTimedBatcher(o, clock, rec, /*micros_per_item=*/100);
  DynamicBatcher<int>& b = *batcher;
  // Nothing timed yet: only max_queue applies.
  for (int id = 0; id < 8; ++id) ASSERT_EQ(b.Submit(int{id}, 0), SubmitResult::kAccepted);
  EXPECT_EQ(b.EstimatedWaitMicros(), 0);
  while (b.RunOnce() > 0) {
  }
  EXPECT_DOUBLE_EQ(b.ComputeCost().per_item_us, 100.0);
  EXPECT_DOUBLE_EQ(b.ComputeCost().fixed_us, 0.0);
  // 0..4 items ahead -> 0..400 us: admitted; 5 ahead -> 500 us > 450: refused.
  for (int id = 10; id < 15; ++id) ASSERT_EQ(b.Submit(int{id}, 0), SubmitResult::kAccepted);
  EXPECT_EQ(b.EstimatedWaitMicros(), 500);
  EXPECT_EQ(b.Submit(15, 0), SubmitResult::kWaitTooLong);
  EXPECT_EQ(b.stats().wait_too_long, 1u);
  EXPECT_EQ(b.stats().overloaded, 0u);
  EXPECT_EQ(b.queued(), 5u);
  std::vector<int> kept = {7};
  DynamicBatcher<std::vector<int>> vb(
      o, clock, [&](int, std::vector<std::vector<int>>&) { clock.Advance(1000); },
      [](Rejection, std::vector<int>&) {});
  ASSERT_EQ(vb.Submit(std::vector<int>{1}, 0), SubmitResult::kAccepted);
  ASSERT_EQ(vb.RunOnce(/*force=*/true), 1u);                              // learns 1000 us/item
  ASSERT_EQ(vb.Submit(std::vector<int>{2}, 0), SubmitResult::kAccepted);  // nothing ahead
  EXPECT_EQ(vb.Submit(std::move(kept), 0), SubmitResult::kWaitTooLong);
  EXPECT_EQ(kept, std::vector<int>{7});
  // Draining the queue makes room again.
  while (b.RunOnce(/*force=*/true) > 0) {
  }
  EXPECT_EQ(b.Submit(16, 0), SubmitResult::kAccepted);
  EXPECT_STREQ(SubmitResultName(SubmitResult::kWaitTooLong), "wait_too_long");
}

// The text a refused request is given names the bound that refused it.
TEST(DynamicBatcherTest, RefusalReasonNamesTheBound) {
  EXPECT_EQ(RefusalReason(SubmitResult::kOverloaded, 8, 0, 0),
            "the queue is full (8 requests); retry later");
  const std::string wait = RefusalReason(SubmitResult::kWaitTooLong, 8, 4200, 2000);
  EXPECT_NE(wait.find("(4200 us)"), std::string::npos) << wait;
  EXPECT_NE(wait.find("cloud.max_queue_wait_us (2000 us)"), std::string::npos) << wait;
  EXPECT_EQ(RefusalReason(SubmitResult::kShutDown, 8, 0, 0), "the service is shutting down");
}

// A queue holding as much work as the wait bound admits is released at once: waiting out the
// delay for a fuller batch would only idle the worker.
TEST(DynamicBatcherTest, AQueueFullByTheWaitBoundIsReleasedWithoutTheDelay) {
  FakeClock clock(1000);
  Recorder rec;
  DynamicBatcherOptions o = Options(64, 10'000, 64, 0);
  o.max_queue_wait_us = 250;
  auto batcher = MakeTimedBatcher(o, clock, rec, /*micros_per_item=*/100);
  DynamicBatcher<int>& b = *batcher;
  ASSERT_EQ(b.Submit(0, 0), SubmitResult::kAccepted);
  ASSERT_EQ(b.RunOnce(/*force=*/true), 1u);  // learns 100 us per item
  ASSERT_EQ(b.Submit(1, 0), SubmitResult::kAccepted);
  ASSERT_EQ(b.Submit(2, 0), SubmitResult::kAccepted);
  EXPECT_EQ(b.RunOnce(), 0u);  // 200 us ahead: within the bound, so the delay applies
  ASSERT_EQ(b.Submit(3, 0), SubmitResult::kAccepted);  // 300 us ahead now: full
  EXPECT_EQ(b.Submit(4, 0), SubmitResult::kWaitTooLong);
  EXPECT_EQ(b.RunOnce(), 3u);  // no time has passed
  ASSERT_EQ(rec.batches.size(), 2u);
  EXPECT_EQ(rec.batches[1], (std::vector<int>{1, 2, 3}));
}

// Batches of 1 and 5 items costing 100 + 50 n us: the least-squares fit recovers the fixed and
// the per-item cost exactly, and the wait of a queue counts one fixed cost per batch of
// max_batch (8) items it will take.
TEST(DynamicBatcherTest, CostModelSeparatesTheFixedAndThePerItemCost) {
  FakeClock clock(1000);
  DynamicBatcher<int> b(
      Options(8, 0, 64, 0), clock,
      [&](int, std::vector<int>& batch) {
        clock.Advance(100 + 50 * static_cast<int64_t>(batch.size()));
      },
      [](Rejection, int&) {});
  ASSERT_EQ(b.Submit(1, 0), SubmitResult::kAccepted);
  ASSERT_EQ(b.RunOnce(), 1u);
  // One batch size seen so far: all per-item.
  EXPECT_DOUBLE_EQ(b.ComputeCost().fixed_us, 0.0);
  EXPECT_DOUBLE_EQ(b.ComputeCost().per_item_us, 150.0);
  for (int id = 0; id < 5; ++id) ASSERT_EQ(b.Submit(int{id}, 0), SubmitResult::kAccepted);
  ASSERT_EQ(b.RunOnce(/*force=*/true), 5u);
  EXPECT_NEAR(b.ComputeCost().fixed_us, 100.0, 1e-6);
  EXPECT_NEAR(b.ComputeCost().per_item_us, 50.0, 1e-6);
  for (int id = 0; id < 6; ++id) ASSERT_EQ(b.Submit(int{id}, 0), SubmitResult::kAccepted);
  EXPECT_EQ(b.EstimatedWaitMicros(), 100 + 6 * 50);  // one batch
  for (int id = 6; id < 9; ++id) ASSERT_EQ(b.Submit(int{id}, 0), SubmitResult::kAccepted);
  EXPECT_EQ(b.EstimatedWaitMicros(), 2 * 100 + 9 * 50);  // two batches
}

TEST(DynamicBatcherTest, ExpiredItemsAreRejectedNotComputed) {
  FakeClock clock(10'000);
  Recorder rec;
  auto b = MakeBatcher(Options(8, 1000, 16, 0), clock, rec);
  ASSERT_EQ(b->Submit(1, 10'500), SubmitResult::kAccepted);  // expires at 10.5 ms
  ASSERT_EQ(b->Submit(2, 0), SubmitResult::kAccepted);       // no deadline
  ASSERT_EQ(b->Submit(3, 20'000), SubmitResult::kAccepted);
  clock.Advance(1000);
  EXPECT_EQ(b->RunOnce(), 3u);
  ASSERT_EQ(rec.batches.size(), 1u);
  EXPECT_EQ(rec.batches[0], (std::vector<int>{2, 3}));
  EXPECT_EQ(rec.expired, std::vector<int>{1});
  EXPECT_EQ(b->stats().expired, 1u);
  EXPECT_EQ(b->stats().computed, 2u);
}

TEST(DynamicBatcherTest, ShutdownFailAnswersEveryQueuedItem) {
  FakeClock clock;
  Recorder rec;
  auto b = MakeBatcher(Options(4, 1'000'000, 16, 2), clock, rec);
  b->Start();
  for (int id = 0; id < 3; ++id) ASSERT_EQ(b->Submit(int{id}, 0), SubmitResult::kAccepted);
  // Not full, fake time never moves: the workers keep waiting, so all three fail at shutdown.
  b->Shutdown(DynamicBatcher<int>::ShutdownMode::kFail);
  EXPECT_EQ(rec.shut_down, (std::vector<int>{0, 1, 2}));
  EXPECT_TRUE(rec.batches.empty());
  EXPECT_EQ(b->Submit(9, 0), SubmitResult::kShutDown);
  EXPECT_EQ(b->stats().refused_shut_down, 1u);
}

TEST(DynamicBatcherTest, ShutdownDrainComputesEveryQueuedItem) {
  FakeClock clock;
  Recorder rec;
  auto b = MakeBatcher(Options(4, 1'000'000, 16, 1), clock, rec);
  b->Start();
  for (int id = 0; id < 6; ++id) ASSERT_EQ(b->Submit(int{id}, 0), SubmitResult::kAccepted);
  b->Shutdown(DynamicBatcher<int>::ShutdownMode::kDrain);
  EXPECT_EQ(rec.outcomes.size(), 6u);
  for (const auto& [id, n] : rec.outcomes) EXPECT_EQ(n, 1) << id;
  EXPECT_TRUE(rec.shut_down.empty());
  EXPECT_EQ(b->stats().computed, 6u);
}

TEST(DynamicBatcherTest, WorkersReleaseOnDelayAfterTheClockMoves) {
  FakeClock clock;
  Recorder rec;
  auto b = MakeBatcher(Options(8, 500, 16, 1), clock, rec);
  b->Start();
  ASSERT_EQ(b->Submit(7, 0), SubmitResult::kAccepted);
  clock.Advance(500);
  b->Wake();
  rec.WaitFor(1);
  ASSERT_EQ(rec.batches.size(), 1u);
  EXPECT_EQ(rec.batches[0], std::vector<int>{7});
  b->Shutdown(DynamicBatcher<int>::ShutdownMode::kDrain);
}

TEST(DynamicBatcherTest, ConcurrentSubmittersEveryItemGetsExactlyOneOutcome) {
  FakeClock clock(100);
  Recorder rec;
  // Zero delay: workers take whatever waits; a small queue makes some submits overload.
  auto b = MakeBatcher(Options(8, 0, 32, 3), clock, rec);
  b->Start();
  constexpr int kThreads = 6, kPerThread = 500;
  std::atomic<int> overloaded{0};
  std::vector<std::thread> submitters;
  for (int t = 0; t < kThreads; ++t) {
    submitters.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const int id = t * kPerThread + i;
        // Every third item carries an already-passed deadline.
        const int64_t deadline = id % 3 == 0 ? 50 : 0;
        if (b->Submit(int{id}, deadline) == SubmitResult::kOverloaded) ++overloaded;
      }
    });
  }
  for (std::thread& t : submitters) t.join();
  b->Shutdown(DynamicBatcher<int>::ShutdownMode::kDrain);
  const DynamicBatcherStats s = b->stats();
  EXPECT_EQ(s.accepted + s.overloaded, uint64_t{kThreads * kPerThread});
  EXPECT_EQ(s.overloaded, static_cast<uint64_t>(overloaded.load()));
  EXPECT_EQ(rec.outcomes.size(), s.accepted);
  for (const auto& [id, n] : rec.outcomes) EXPECT_EQ(n, 1) << id;
  EXPECT_EQ(s.computed + s.expired, s.accepted);
  for (int id : rec.expired) EXPECT_EQ(id % 3, 0);
  for (const auto& batch : rec.batches) {
    EXPECT_LE(batch.size(), 8u);
    for (int id : batch) EXPECT_NE(id % 3, 0);
  }
  EXPECT_EQ(s.callback_failures, 0u);
}

// A compute callback that answers some items of its batch and then throws: the batcher
// answers the others (kComputeFailed) and none twice, counts the failure, and goes on
// computing the next batch. Once with a worker thread (which must survive the throw), once on
// the caller's thread with a callback that throws something that is not a std::exception.
TEST(DynamicBatcherTest, ComputeThatThrowsStillAnswersEveryItemOfItsBatchExactlyOnce) {
  FakeClock clock;
  Recorder rec;
  std::mutex answered_mu;
  std::set<int> answered;  // ids the compute callback answered itself
  // Items below 100 fail: the even ones are answered first, then the callback throws.
  DynamicBatcher<int> b(
      Options(4, 1'000'000, 16, 1), clock,
      [&](int, std::vector<int>& batch) {
        if (batch.front() >= 100) return rec.Compute(batch);
        for (int id : batch) {
          if (id % 2 != 0) continue;
          std::vector<int> one = {id};
          rec.Compute(one);
          std::lock_guard<std::mutex> lock(answered_mu);
          answered.insert(id);
        }
        throw std::runtime_error("tail failed");
      },
      [&](Rejection why, int& id) { rec.Reject(why, id); }, {},
      [&](const int& id) {
        std::lock_guard<std::mutex> lock(answered_mu);
        return answered.count(id) > 0;
      });
  b.Start();
  for (int id = 0; id < 4; ++id) ASSERT_EQ(b.Submit(int{id}, 0), SubmitResult::kAccepted);
  rec.WaitFor(4);
  for (int id = 100; id < 104; ++id) ASSERT_EQ(b.Submit(int{id}, 0), SubmitResult::kAccepted);
  rec.WaitFor(8);
  b.Shutdown(DynamicBatcher<int>::ShutdownMode::kDrain);
  ASSERT_EQ(rec.outcomes.size(), 8u);
  for (const auto& [id, n] : rec.outcomes) EXPECT_EQ(n, 1) << id;
  EXPECT_EQ(rec.compute_failed, (std::vector<int>{1, 3}));
  EXPECT_TRUE(rec.shut_down.empty());
  ASSERT_EQ(rec.batches.size(), 3u);  // ids 0 and 2 one by one, then the good batch whole
  EXPECT_EQ(rec.batches[2], (std::vector<int>{100, 101, 102, 103}));
  EXPECT_EQ(b.stats().callback_failures, 1u);
  EXPECT_EQ(b.stats().compute_failed, 2u);
  EXPECT_EQ(b.stats().computed, 8u);

  // Without an `answered` predicate a throwing compute has answered nothing: every item of
  // its batch is rejected once.
  Recorder rec2;
  DynamicBatcher<int> plain(
      Options(8, 0, 16, 0), clock, [](int, std::vector<int>&) { throw 42; },
      [&](Rejection why, int& id) { rec2.Reject(why, id); });
  for (int id = 0; id < 3; ++id) ASSERT_EQ(plain.Submit(int{id}, 0), SubmitResult::kAccepted);
  EXPECT_EQ(plain.RunOnce(), 3u);
  EXPECT_EQ(rec2.compute_failed, (std::vector<int>{0, 1, 2}));
  for (const auto& [id, n] : rec2.outcomes) EXPECT_EQ(n, 1) << id;
  EXPECT_EQ(plain.stats().callback_failures, 1u);
  EXPECT_EQ(plain.stats().compute_failed, 3u);
  EXPECT_EQ(std::string(RejectionName(Rejection::kComputeFailed)), "compute_failed");
}

}  // namespace
}  // namespace cleave::cloud
