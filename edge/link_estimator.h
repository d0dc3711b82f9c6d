// LinkEstimator: live estimates of the edge -> cloud link and of the cloud's load, measured
// from the requests the edge offloads (issue 19, item 1). OffloadPolicy (edge/offload_policy.h)
// decides from them; Snapshot() is a plain struct for gauges.
//
// Inputs. OnSend when an encoded InferRequest is handed to the DEALER, then one OnReply (the
// decoded InferReply) or OnTimeout (the edge gave up waiting); a reply that arrives after its
// OnTimeout should still go to OnReply (it counts as late and gives queue/compute samples). Each
// call reads the time from the injected Clock, so call it when the event happens.
//
// Methods and their limits:
//  * Network time of an exchange = (reply - send) - queue_us - compute_us, from kOk and
//    kOverloaded replies (a kDeadlineExceeded or kError reply does not say how long the cloud
//    held the request). Clamped at 0 and counted when negative (the cloud's and the edge's
//    clocks may tick at slightly different rates). A timeout is a censored sample: its elapsed
//    time, a lower bound of the truth (its late reply, if any, adds no second one). So when
//    more than 1 - p of the window timed out, the RTT's p-quantile is at least the timeout,
//    and a dead link, which gives no replies at all, still shows up in the RTT.
//  * Uplink throughput: a request reaches the cloud once its own bytes *and those queued ahead
//    of it* crossed the uplink. The regressor is the bytes sent in the request's burst up to and
//    including it (sends less than burst_gap_us apart; EdgeServer sends a head batch's offloads
//    back to back; a burst also ends after 64 sends), so both request sizes that vary (split
//    points, entropy coding) and bursts of equal requests (the queueing signature) spread it.
//    Network time is regressed on it with the Theil-Sen estimator (median of pairwise slopes,
//    robust to 29% outliers) over the window's settled samples; throughput = 1 / slope. It is
//    reported only when identifiable:
//    >= 5 samples, >= 5 pairs whose regressors differ by >= 10% (and >= 64 bytes), and >= 75%
//    of those pairs' slopes positive (a sign test: on a fast link the transfer time hides in
//    the jitter and the slope is noise). Otherwise uplink_bytes_per_s = 0 ("unknown") and
//    uplink_status says why. Limits: it assumes the uplink is idle when a burst starts (bytes
//    still draining from an earlier burst show up as RTT, not as lower throughput); TCP slow
//    start after idle makes small bursts look slower than the link; the downlink (replies are
//    a few hundred bytes of logits) is counted in the RTT. It measures what the edge's own
//    requests get from the link, not its capacity. There is no sender-side measurement:
//    ZeroMQ does not tell when the kernel drained a message, only that it was queued.
//  * RTT: the network time minus the request's transfer time under that fit (the whole network
//    time while the throughput is unknown). Quantiles are nearest-rank over the window; `base`
//    is the 5th percentile and never the single smallest sample once there are 3 (propagation
//    plus fixed costs, robust to one bogus low sample).
//  * Windows and level shifts (RTT, queue, compute, compute ratio): the last window_samples
//    samples no older than max_sample_age_us. A sample outside the fences
//    median +- max(4 * 1.4826 * MAD, 25% of |median|, floor) of the window's settled samples
//    (the floor is 1 ms, or 0.05 for the ratio) starts or extends a run; shift_samples
//    consecutive samples on the same side confirm a level shift, and the window then keeps only
//    those samples. For the RTT the fences apply to the residual under the fit, so a
//    throughput change is a level shift too.
//
// Convergence, for a window of N = window_samples and K = shift_samples (defaults 100 and 6):
//  * A step beyond the fences (5 ms -> 80 ms RTT; 10 Mbit/s -> 200 kbit/s -> 2 Mbit/s with
//    varying request sizes; a cloud queue that jumps) is followed after exactly K samples of
//    the new level: from then on every estimate comes from new samples only. Before that, the
//    K-1 samples of the run are in the quantiles (so p95/p99 may rise early) but not in the fit
//    or the fences. This needs K settled samples to set fences from, which a window has after
//    K samples of one level (so also right after a shift).
//  * A smaller step is followed by the window alone: the p50 after floor(N/2) + 1 samples, the base
//    after at most N - ceil(N/20) + 1, and every estimate once the old samples are
//    max_sample_age_us old.
//  * Up to K-1 consecutive outliers never reset the window. One sample moves any quantile by at
//    most one rank; a high one never moves the base, and a single low one is never the base (a
//    500 ms spike among 5 ms samples leaves p50 and base at 5, and p99 too while N >= 100).
//  * Outcome fractions are over the last outcome_window exchanges no older than
//    max_sample_age_us: a change from 0% to 100% overloaded reads 50% after
//    ceil(outcome_window / 2) exchanges and 100% after outcome_window.
//  * Staleness: `stale` once nothing (reply or timeout) was heard for stale_after_us, with
//    last_sample_age_us for gauges (OffloadPolicy probes after its own probe_interval_us of
//    silence). Samples older than max_sample_age_us are forgotten, so every estimate decays to
//    "unknown" (samples = 0) after that long without news, and the next sample starts afresh.
//
// Threads: every method may be called from any thread (one mutex). Cost: OnReply and Snapshot
// are O(N^2) for the Theil-Sen fit over at most 128 samples (~8k pairs).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <unordered_map>

#include "common/clock.h"
#include "common/inference_wire.h"
#include "common/mutex.h"
#include "common/status.h"
#include "common/thread_annotations.h"

namespace cleave::edge {

class LinkWindow;  // a window of samples with level-shift detection (link_estimator.cc)

struct LinkEstimatorOptions {
  int window_samples = 100;                // samples per window, 8..4096
  int shift_samples = 6;                   // consecutive outliers confirming a shift, 2..window
  int outcome_window = 50;                 // exchanges the outcome fractions are over, >= 1
  int64_t max_sample_age_us = 30'000'000;  // samples (and in-flight requests) forgotten after
  int64_t stale_after_us = 2'000'000;      // snapshot is stale after this long without news
  int64_t burst_gap_us = 500;              // sends closer than this share the uplink queue
  size_t max_in_flight = 65536;            // oldest in-flight entry dropped beyond this
  // InvalidArgument naming the first bad field.
  Status Validate() const;
};

// One reply, as the estimator needs it.
struct ExchangeReply {
  wire::ReplyStatus status = wire::ReplyStatus::kOk;
  uint64_t wire_bytes = 0;  // reply bytes on the wire
  uint64_t queue_us = 0;    // cloud queue wait (kOk replies)
  uint64_t compute_us = 0;  // cloud compute of the whole batch (kOk replies)
  uint32_t batch_size = 0;
  // The fields of a decoded reply that arrived as `wire_bytes` bytes.
  static ExchangeReply FromInferReply(const wire::InferReply& reply, uint64_t wire_bytes);
};

// Quantiles of one window. Units are those of the field that holds it.
struct WindowQuantiles {
  int samples = 0;  // 0 = unknown: every value below is 0
  double base = 0;  // 5th percentile (never the single smallest once samples >= 3)
  double p50 = 0;
  double p95 = 0;
  double p99 = 0;
  double at_percentile = 0;  // at LinkSnapshot::percentile
  double mean = 0;
  bool known() const { return samples > 0; }
};

// Why uplink_bytes_per_s is (not) known.
enum class UplinkStatus : uint8_t {
  kKnown,
  kFewSamples,    // fewer than 5 settled samples in the window
  kNoSizeSpread,  // the regressor (bytes sent in the burst) hardly varies
  kBelowNoise,    // transfer time not distinguishable from jitter (fast link)
};
// "known", "few_samples", "no_size_spread", "below_noise".
const char* UplinkStatusName(UplinkStatus status);

// A point-in-time copy of every estimate: plain numbers, safe to keep and export as gauges.
struct LinkSnapshot {
  int64_t at_us = 0;           // clock time it was taken
  double percentile = 0.95;    // of every `at_percentile`
  WindowQuantiles rtt_ms;      // network round trip without the request's own transfer time
  WindowQuantiles queue_ms;    // cloud queue wait (kOk replies)
  WindowQuantiles compute_ms;  // cloud compute of the request's batch (kOk replies)
  // compute_us / the expected_compute_us given to OnSend (sends that gave one): > 1 when the
  // cloud is slower than its profile (contention, batching).
  WindowQuantiles compute_ratio;
  double mean_batch_size = 0;     // over the compute window; 0 = unknown
  double uplink_bytes_per_s = 0;  // 0 = unknown (see uplink_status)
  UplinkStatus uplink_status = UplinkStatus::kFewSamples;
  // Over the outcome window (0 when outcomes == 0). A timeout later answered counts once, as a
  // timeout. The fractions sum to 1.
  int outcomes = 0;
  double ok_fraction = 0;
  double overloaded_fraction = 0;
  double deadline_fraction = 0;  // the cloud answered kDeadlineExceeded
  double error_fraction = 0;
  double timeout_fraction = 0;      // no reply before OnTimeout
  int64_t last_sample_age_us = -1;  // since the last reply or timeout; -1 = none yet
  bool stale = true;                // none yet, or last_sample_age_us > stale_after_us
  // Lifetime counters.
  uint64_t sent = 0;
  uint64_t replies = 0;
  uint64_t timeouts = 0;
  uint64_t late_replies = 0;            // replies after their OnTimeout
  uint64_t unmatched_replies = 0;       // ids never sent, already answered or forgotten
  uint64_t negative_network_times = 0;  // clamped to 0
  uint64_t level_shifts = 0;            // confirmed, over all windows
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t in_flight = 0;
};

class LinkEstimator {
 public:
  // InvalidArgument when the options fail Validate. `clock` must outlive the estimator.
  static Result<std::unique_ptr<LinkEstimator>> Create(LinkEstimatorOptions options,
                                                       const Clock& clock);
  ~LinkEstimator();
  LinkEstimator(const LinkEstimator&) = delete;
  LinkEstimator& operator=(const LinkEstimator&) = delete;

  // Request `request_id` was handed to the socket now with `wire_bytes` bytes. When the bundle's
  // profile says what its tail should cost, pass it as `expected_compute_us` (0 = none) to get
  // compute_ratio. Re-sending an id replaces its entry.
  void OnSend(uint64_t request_id, uint64_t wire_bytes, int64_t expected_compute_us = 0)
      EXCLUDES(mu_);
  // The reply to `request_id` arrived now. Unknown ids are counted and ignored.
  void OnReply(uint64_t request_id, const ExchangeReply& reply) EXCLUDES(mu_);
  // The edge stopped waiting for `request_id` (its deadline passed): a censored RTT sample. A
  // later OnReply for it counts as late.
  void OnTimeout(uint64_t request_id) EXCLUDES(mu_);

  // Every estimate now, with `at_percentile` at `percentile` (clamped to [0, 1]).
  LinkSnapshot Snapshot(double percentile = 0.95) const EXCLUDES(mu_);

  const LinkEstimatorOptions& options() const { return options_; }

 private:
  struct InFlight {
    int64_t sent_us = 0;
    uint64_t wire_bytes = 0;
    uint64_t burst_bytes = 0;  // bytes of its burst up to and including it
    int64_t expected_compute_us = 0;
    bool timed_out = false;
  };
  enum class Outcome : uint8_t { kOk, kOverloaded, kDeadline, kError, kTimeout };

  LinkEstimator(LinkEstimatorOptions options, const Clock& clock);
  void RecordOutcome(Outcome outcome, int64_t now_us) REQUIRES(mu_);
  void DropExpiredInFlight(int64_t now_us) REQUIRES(mu_);

  const LinkEstimatorOptions options_;
  const Clock& clock_;
  mutable Mutex mu_;
  std::unordered_map<uint64_t, InFlight> in_flight_ GUARDED_BY(mu_);
  std::deque<std::pair<int64_t, uint64_t>> send_order_ GUARDED_BY(mu_);  // (sent_us, id)
  int64_t last_send_us_ GUARDED_BY(mu_) = -1;
  uint64_t burst_bytes_ GUARDED_BY(mu_) = 0;  // of the current burst so far
  int burst_sends_ GUARDED_BY(mu_) = 0;
  // Defined in link_estimator.cc.
  const std::unique_ptr<LinkWindow> rtt_ PT_GUARDED_BY(mu_);
  const std::unique_ptr<LinkWindow> queue_ PT_GUARDED_BY(mu_);
  const std::unique_ptr<LinkWindow> compute_ PT_GUARDED_BY(mu_);
  const std::unique_ptr<LinkWindow> ratio_ PT_GUARDED_BY(mu_);
  std::deque<std::pair<int64_t, Outcome>> outcomes_ GUARDED_BY(mu_);
  int64_t last_news_us_ GUARDED_BY(mu_) = -1;
  LinkSnapshot counters_ GUARDED_BY(mu_);  // only the lifetime counters are kept here
};

}  // namespace cleave::edge
