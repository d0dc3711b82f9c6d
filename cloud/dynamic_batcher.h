// DynamicBatcher: a bounded queue of requests that releases them in batches to worker threads.
//
// A batch is released at once when no batch is being computed (every worker is idle: a lone
// request has no queue to wait with, so holding it would only idle the worker; Triton's dynamic
// batcher behaves the same way). While a batch is being computed, the waiting requests form the
// next batch when `max_batch` of them wait or when the oldest has waited `max_queue_delay_us`
// (0 = release at once; with max_batch = 1 this is "batching disabled"), or, with
// `max_queue_wait_us`, as soon as the queue holds more work than that bound admits. With one
// worker this is "natural batching": each batch holds what arrived while the previous one was
// computed. `hold_when_idle` restores the older rule (the delay applies even to an idle
// worker). The queue holds at most `max_queue` requests: Submit beyond that returns
// kOverloaded and leaves the item with the caller, who must answer it (nothing is dropped
// silently). With `max_queue_wait_us` set, Submit also refuses (kWaitTooLong) a request whose
// estimated queueing time exceeds that bound. The estimate is the compute time of the work
// ahead of it (what is left of the batches being computed, then the waiting items in batches
// of max_batch) divided by the workers, from a cost model T(n) = fixed + per_item x n of a batch of
// n fitted by exponentially weighted least squares over the finished batches (the fixed part is
// what makes batching pay, so a per-item average taken at small batches would overestimate the wait
// of a long queue and keep batches small). An item that finds nothing ahead of it is always
// admitted. This is admission by queueing time rather than by queue length: under overload a length
// bound alone admits requests that wait for many full batches, so the admitted requests' latency
// grows with the queue, not with the work each needs (the `cleave bench serve` overload phase
// measures exactly that). A request whose deadline has passed when its batch is formed is handed to
// the reject callback as kExpired and never computed.
//
// Every accepted item gets exactly one outcome: the compute callback (as part of a batch) or
// the reject callback (kExpired, kShutDown when Shutdown(kFail) empties the queue, or
// kComputeFailed for the items of a batch whose compute callback threw before answering them).
//
// Threads: Submit, SubmitAll, Wake, queued, stats and Shutdown may be called from any thread. The
// callbacks run on the worker threads (or the caller of RunOnce / Shutdown for items it
// rejects), concurrently with each other when workers > 1, and must not call Shutdown. They
// should not throw; an exception is caught and counted in callback_failures. When the compute
// callback throws, each item of its batch that the `answered` predicate (a constructor
// argument) does not report as answered goes to the reject callback as kComputeFailed, so the
// batch's requests still get one answer each; without the predicate every item of the batch
// does. The reject callback itself must not throw (an item it threw on has no other outcome).
// Time comes from the injected Clock, so tests drive it by hand.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/mutex.h"
#include "common/status.h"

namespace cleave::cloud {

struct DynamicBatcherOptions {
  int max_batch = 64;                 // most items per batch (>= 1)
  int64_t max_queue_delay_us = 2000;  // longest the oldest item waits for a fuller batch (>= 0)
  size_t max_queue = 1024;            // most items waiting (>= 1); Submit beyond is kOverloaded
  // Most estimated microseconds an item may wait for the items ahead of it (0 = no bound; >= 0).
  // Applies once a batch has been timed; before that only max_queue bounds admission.
  int64_t max_queue_wait_us = 0;
  int workers = 1;  // worker threads started by Start (0 = the owner calls RunOnce itself)
  // Hold a batch for the delay even when no batch is being computed (false: an idle service
  // computes a lone request at once). With workers = 0, "being computed" means inside RunOnce.
  bool hold_when_idle = false;
  // InvalidArgument naming the first bad field.
  Status Validate() const;
};

enum class SubmitResult : uint8_t { kAccepted, kOverloaded, kWaitTooLong, kShutDown };
enum class Rejection : uint8_t { kExpired, kShutDown, kComputeFailed };
const char* SubmitResultName(SubmitResult result);
// What a refused request is told (the `overloaded` reply's text): the queue bound, or the
// estimated wait against cloud.max_queue_wait_us, or shutdown. `estimated_wait_us` is the
// batcher's estimate at the refusal.
std::string RefusalReason(SubmitResult result, size_t max_queue, int64_t estimated_wait_us,
                          int64_t max_queue_wait_us);
const char* RejectionName(Rejection rejection);

struct DynamicBatcherStats {
  uint64_t accepted = 0;
  uint64_t overloaded = 0;          // Submit refused: queue full
  uint64_t wait_too_long = 0;       // Submit refused: estimated wait over max_queue_wait_us
  uint64_t refused_shut_down = 0;   // Submit refused: Shutdown already called
  uint64_t expired = 0;             // rejected as kExpired
  uint64_t failed_at_shutdown = 0;  // rejected as kShutDown
  uint64_t computed = 0;            // items passed to the compute callback
  uint64_t batches = 0;
  uint64_t callback_failures = 0;  // callbacks that threw
  uint64_t compute_failed = 0;     // rejected as kComputeFailed (their batch's compute threw)
};

template <typename T>
class DynamicBatcher {
 public:
  // Computes one batch (1..max_batch items, oldest first) on worker `worker`. It answers the
  // items and may change them, but leaves each in its place (a throw hands the batch's
  // unanswered items to the reject callback).
  using ComputeFn = std::function<void(int worker, std::vector<T>& batch)>;
  // Answers one item that will not be computed (or whose computation failed).
  using RejectFn = std::function<void(Rejection why, T& item)>;
  // Runs once on each worker thread before its first batch (e.g. per-thread libtorch setup).
  using WorkerInitFn = std::function<void(int worker)>;
  // Whether the compute callback already answered `item`; asked only after it threw.
  using AnsweredFn = std::function<bool(const T& item)>;

  enum class ShutdownMode { kDrain, kFail };

  // `clock` must outlive the batcher. Options must have passed Validate. Without `answered`,
  // a compute callback that throws is taken to have answered none of its batch.
  DynamicBatcher(DynamicBatcherOptions options, const Clock& clock, ComputeFn compute,
                 RejectFn reject, WorkerInitFn init = {}, AnsweredFn answered = {})
      : options_(options),
        clock_(clock),
        compute_(std::move(compute)),
        reject_(std::move(reject)),
        init_(std::move(init)),
        answered_(std::move(answered)) {}
  // Shutdown(kFail) if Shutdown was not called.
  ~DynamicBatcher() { Shutdown(ShutdownMode::kFail); }
  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  // Starts options.workers threads. Call at most once, before Shutdown.
  void Start() EXCLUDES(shutdown_mu_) {
    MutexLock lock(&shutdown_mu_);
    for (int w = 0; w < options_.workers; ++w) {
      workers_.emplace_back([this, w] { WorkerLoop(w); });
    }
  }

  // Queues `item` with an absolute deadline on the clock (0 = none). `item` is moved from only
  // when the result is kAccepted; otherwise the caller still owns it and must answer it.
  SubmitResult Submit(T&& item, int64_t deadline_us) EXCLUDES(mu_) {
    SubmitResult result;
    {
      MutexLock lock(&mu_);
      result = SubmitLocked(item, deadline_us, clock_.NowMicros());
    }
    if (result == SubmitResult::kAccepted) cv_.NotifyOne();
    return result;
  }

  // Submit of every item of `items` in order (`deadlines_us[i]` for items[i]), under one lock
  // and with one wake-up: how a socket thread hands over a burst of requests. `results` gets
  // one SubmitResult per item (replaced); accepted items are moved from, the others stay with
  // the caller, who must answer them. Returns how many were accepted.
  size_t SubmitAll(std::vector<T>& items, const std::vector<int64_t>& deadlines_us,
                   std::vector<SubmitResult>* results) EXCLUDES(mu_) {
    results->clear();
    size_t accepted = 0;
    {
      MutexLock lock(&mu_);
      const int64_t now = clock_.NowMicros();
      for (size_t i = 0; i < items.size(); ++i) {
        results->push_back(SubmitLocked(items[i], deadlines_us[i], now));
        if (results->back() == SubmitResult::kAccepted) ++accepted;
      }
    }
    if (accepted > 1 && options_.workers > 1) {
      cv_.NotifyAll();  // maybe more than one batch's worth
    } else if (accepted > 0) {
      cv_.NotifyOne();
    }
    return accepted;
  }

  // Makes waiting workers re-read the clock (needed only after a FakeClock moves).
  void Wake() EXCLUDES(mu_) {
    { MutexLock lock(&mu_); }
    cv_.NotifyAll();
  }

  // Forms at most one batch on the calling thread if one is due now (or any items wait and
  // `force`), computes it and rejects its expired items. Returns how many items got an
  // outcome. For workers == 0; safe alongside workers too.
  size_t RunOnce(bool force = false) EXCLUDES(mu_) {
    Formed formed;
    {
      MutexLock lock(&mu_);
      if (queue_.empty()) return 0;
      const int64_t now = clock_.NowMicros();
      if (!force && !DueLocked(now)) return 0;
      formed = FormLocked(now);
    }
    const size_t handled = formed.batch.size() + formed.expired.size();
    Handle(0, formed);
    return handled;
  }

  // Stops accepting (Submit returns kShutDown). kDrain: the workers compute everything
  // queued without waiting for the delay (with no workers, the caller does). kFail: queued
  // items are rejected as kShutDown on the calling thread. Then joins the workers. Batches
  // already being computed finish. Idempotent; must not be called from a callback.
  void Shutdown(ShutdownMode mode) EXCLUDES(shutdown_mu_, mu_) {
    MutexLock shutdown_lock(&shutdown_mu_);
    std::deque<Entry> failed;
    {
      MutexLock lock(&mu_);
      stopping_ = true;
      if (mode == ShutdownMode::kFail) {
        failed.swap(queue_);
        stats_.failed_at_shutdown += failed.size();
      }
    }
    cv_.NotifyAll();
    for (Entry& e : failed) Call([&] { reject_(Rejection::kShutDown, e.item); });
    for (std::thread& t : workers_) {
      if (t.joinable()) t.join();
    }
    workers_.clear();
    while (RunOnce(/*force=*/true) > 0) {
    }
  }

  size_t queued() const EXCLUDES(mu_) {
    MutexLock lock(&mu_);
    return queue_.size();
  }
  DynamicBatcherStats stats() const EXCLUDES(mu_) {
    MutexLock lock(&mu_);
    return stats_;
  }
  const DynamicBatcherOptions& options() const { return options_; }
  // Estimated microseconds an item submitted now would wait for the items ahead of it (0
  // before the first batch has been timed).
  int64_t EstimatedWaitMicros() const EXCLUDES(mu_) {
    MutexLock lock(&mu_);
    return EstimatedWaitLocked(clock_.NowMicros());
  }
  // The fitted batch cost model (zeros before the first batch has been timed).
  struct BatchCost {
    double fixed_us = 0;
    double per_item_us = 0;
  };
  BatchCost ComputeCost() const EXCLUDES(mu_) {
    MutexLock lock(&mu_);
    return cost_;
  }

 private:
  struct Entry {
    T item;
    int64_t enqueued_us = 0;
    int64_t deadline_us = 0;
  };
  struct Formed {
    std::vector<T> batch;
    std::vector<T> expired;
    uint64_t id = 0;  // of the batch in running_ (0 = no batch)
  };
  struct Running {
    uint64_t id = 0;
    int64_t started_us = 0;
    size_t items = 0;
  };

  // Admission of one item at `now`; moves it into the queue when accepted.
  SubmitResult SubmitLocked(T& item, int64_t deadline_us, int64_t now) REQUIRES(mu_) {
    if (stopping_) {
      ++stats_.refused_shut_down;
      return SubmitResult::kShutDown;
    }
    if (queue_.size() >= options_.max_queue) {
      ++stats_.overloaded;
      return SubmitResult::kOverloaded;
    }
    if (options_.max_queue_wait_us > 0 && EstimatedWaitLocked(now) > options_.max_queue_wait_us) {
      ++stats_.wait_too_long;
      return SubmitResult::kWaitTooLong;
    }
    queue_.push_back(Entry{std::move(item), now, deadline_us});
    ++stats_.accepted;
    return SubmitResult::kAccepted;
  }

  // The modelled time left of each running batch (never below 0), plus the waiting items'
  // batches.
  int64_t EstimatedWaitLocked(int64_t now) const REQUIRES(mu_) {
    double micros = 0;
    for (const Running& r : running_) {
      const double whole = cost_.fixed_us + cost_.per_item_us * static_cast<double>(r.items);
      micros += std::max(0.0, whole - static_cast<double>(now - r.started_us));
    }
    const size_t waiting = queue_.size();
    const size_t max_batch = static_cast<size_t>(options_.max_batch);
    micros += static_cast<double>((waiting + max_batch - 1) / max_batch) * cost_.fixed_us +
              static_cast<double>(waiting) * cost_.per_item_us;
    return static_cast<int64_t>(micros / std::max(1, options_.workers));
  }

  // Folds one timed batch into the cost model: least squares of t on n with weight 0.9^age,
  // so the model follows a changed machine or model within some tens of batches. While every
  // remembered batch had about the same size the slope is not identifiable; the model is then
  // all per-item (fixed = 0), which overestimates waits.
  void LearnCostLocked(size_t n, double micros) REQUIRES(mu_) {
    constexpr double kDecay = 0.9;
    const double x = static_cast<double>(n);
    fit_.s0 = kDecay * fit_.s0 + 1;
    fit_.sx = kDecay * fit_.sx + x;
    fit_.sxx = kDecay * fit_.sxx + x * x;
    fit_.sy = kDecay * fit_.sy + micros;
    fit_.sxy = kDecay * fit_.sxy + x * micros;
    const double det = fit_.s0 * fit_.sxx - fit_.sx * fit_.sx;
    const double mean_x = fit_.sx / fit_.s0;
    if (det > 1e-6 * fit_.s0 * fit_.s0 * std::max(1.0, mean_x * mean_x)) {
      const double slope = (fit_.s0 * fit_.sxy - fit_.sx * fit_.sy) / det;
      const double fixed = (fit_.sy - slope * fit_.sx) / fit_.s0;
      if (slope > 0 && fixed >= 0) {
        cost_ = BatchCost{fixed, slope};
        return;
      }
    }
    cost_ = BatchCost{0, fit_.sy / fit_.sx};
  }

  // Requires a non-empty queue. With no batch being computed there is nothing to wait with:
  // the delay would only idle the workers. With a queue-wait bound, a queue that already holds
  // as much work as the bound admits is as full as it will get: waiting out the delay for a
  // fuller batch would only leave the worker idle.
  bool DueLocked(int64_t now) const REQUIRES(mu_) {
    return stopping_ || (!options_.hold_when_idle && running_.empty()) ||
           queue_.size() >= static_cast<size_t>(options_.max_batch) ||
           now - queue_.front().enqueued_us >= options_.max_queue_delay_us ||
           (options_.max_queue_wait_us > 0 &&
            EstimatedWaitLocked(now) > options_.max_queue_wait_us);
  }

  // Takes up to max_batch live items from the front; expired ones met on the way leave the
  // queue too.
  Formed FormLocked(int64_t now) REQUIRES(mu_) {
    Formed formed;
    while (!queue_.empty() && formed.batch.size() < static_cast<size_t>(options_.max_batch)) {
      Entry& e = queue_.front();
      if (e.deadline_us > 0 && now >= e.deadline_us) {
        formed.expired.push_back(std::move(e.item));
      } else {
        formed.batch.push_back(std::move(e.item));
      }
      queue_.pop_front();
    }
    stats_.expired += formed.expired.size();
    stats_.computed += formed.batch.size();
    if (!formed.batch.empty()) {
      ++stats_.batches;
      formed.id = ++last_batch_id_;
      running_.push_back(Running{formed.id, now, formed.batch.size()});
    }
    return formed;
  }

  // Rejects the expired items of `formed`, computes its batch and folds the batch's time into
  // the cost model; takes mu_ only for that bookkeeping.
  void Handle(int worker, Formed& formed) EXCLUDES(mu_) {
    for (T& item : formed.expired) Call([&] { reject_(Rejection::kExpired, item); });
    if (formed.batch.empty()) return;
    const size_t n = formed.batch.size();
    const int64_t start = clock_.NowMicros();
    const bool computed = Call([&] { compute_(worker, formed.batch); });
    const double micros = static_cast<double>(clock_.NowMicros() - start);
    const uint64_t failed = computed ? 0 : RejectUnanswered(formed.batch);
    bool idle_with_work = false;
    {
      MutexLock lock(&mu_);
      stats_.compute_failed += failed;
      running_.erase(std::find_if(running_.begin(), running_.end(),
                                  [&](const Running& r) { return r.id == formed.id; }));
      LearnCostLocked(n, micros);
      idle_with_work = running_.empty() && !queue_.empty();
    }
    // Workers holding items for the delay release them now that nothing is being computed.
    if (idle_with_work && !options_.hold_when_idle) cv_.NotifyAll();
  }

  // After the compute callback threw: the items it did not answer get kComputeFailed.
  // Returns how many.
  uint64_t RejectUnanswered(std::vector<T>& batch) EXCLUDES(mu_) {
    uint64_t rejected = 0;
    for (T& item : batch) {
      bool answered = false;
      if (answered_) Call([&] { answered = answered_(item); });  // a throw counts as no
      if (answered) continue;
      ++rejected;
      Call([&] { reject_(Rejection::kComputeFailed, item); });
    }
    return rejected;
  }

  // Runs `f`; false (and counted in callback_failures) when it threw.
  template <typename F>
  bool Call(F&& f) EXCLUDES(mu_) {
    try {
      f();
      return true;
    } catch (...) {
      MutexLock lock(&mu_);
      ++stats_.callback_failures;
      return false;
    }
  }

  // One worker thread: forms each batch under mu_ once one is due and computes it without
  // mu_, until Shutdown has been called and the queue is empty.
  void WorkerLoop(int worker) EXCLUDES(mu_) {
    if (init_) Call([&] { init_(worker); });
    MutexLock lock(&mu_);
    while (true) {
      if (queue_.empty()) {
        if (stopping_) return;
        cv_.Wait(&mu_, [&]() REQUIRES(mu_) { return !queue_.empty() || stopping_; });
        continue;
      }
      const int64_t now = clock_.NowMicros();
      if (!DueLocked(now)) {
        // Real time bounds the wait; with a FakeClock, Wake() re-checks after it moves.
        const int64_t left = queue_.front().enqueued_us + options_.max_queue_delay_us - now;
        cv_.WaitFor(&mu_, std::chrono::microseconds(std::max<int64_t>(1, left)));
        continue;
      }
      Formed formed = FormLocked(now);
      lock.Unlock();
      Handle(worker, formed);
      lock.Lock();
    }
  }

  const DynamicBatcherOptions options_;
  const Clock& clock_;
  const ComputeFn compute_;
  const RejectFn reject_;
  const WorkerInitFn init_;
  const AnsweredFn answered_;

  // Decayed sums of the least-squares fit of the batch cost model.
  struct Fit {
    double s0 = 0, sx = 0, sxx = 0, sy = 0, sxy = 0;
  };

  mutable Mutex mu_;
  CondVar cv_;  // signalled when items arrive, on Wake and on Shutdown
  std::deque<Entry> queue_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  std::vector<Running> running_ GUARDED_BY(mu_);  // batches being computed
  uint64_t last_batch_id_ GUARDED_BY(mu_) = 0;
  Fit fit_ GUARDED_BY(mu_);
  BatchCost cost_ GUARDED_BY(mu_);
  DynamicBatcherStats stats_ GUARDED_BY(mu_);

  // Serializes Start/Shutdown (joining); taken before mu_.
  Mutex shutdown_mu_ ACQUIRED_BEFORE(mu_);
  std::vector<std::thread> workers_ GUARDED_BY(shutdown_mu_);
};

}  // namespace cleave::cloud
