// OffloadPolicy: per request, answer on the edge or offload at which split point, and with which
// exit threshold, so as to meet a latency objective or a byte budget under the live link and
// load estimates of a LinkEstimator (issue 19, item 3).
//
// The menu. Each OffloadOption is one way to serve requests, filled in by the caller from the
// bundle: a split point (or -1, local only) with its exit threshold, the share of inputs the
// exits answer at that threshold, the expected accuracy, the latency profile (edge compute up to
// the split, tail compute) and the request's wire bytes. Choosing the split from per-layer
// latency profiles and live link estimates follows Neurosurgeon (Kang et al., "Neurosurgeon:
// Collaborative Intelligence Between the Cloud and Mobile Edge", ASPLOS 2017); making the
// early-exit threshold part of the choice and re-deciding as the link and the cloud's load
// change follows SPINN (Laskaridis et al., "SPINN: Synergistic Progressive Inference of Neural
// Networks over Device and Cloud", MobiCom 2020).
//
// Prediction, at p = options.percentile, from a LinkSnapshot taken at that percentile:
//   cloud leg(o) = request_bytes / uplink + RTT_p + queue_p + cloud_ms * compute_ratio_p
//   latency(o)   = edge_ms + cloud leg(o)            (local only: edge_ms)
//   bytes/s(o)   = request rate * (1 - exit_fraction) * request_bytes
// Adding per-component percentiles generally overestimates the percentile of the sum, and the exits
// are not credited with covering the tail (the latency of the offloaded requests is what must meet
// the objective), so the prediction errs on the slow side. Unknown estimates count as 0 (compute
// ratio 1; an unknown uplink uses assumed_uplink_bytes_per_s, and with 0 the transfer is taken to
// be inside the measured RTT): the policy is optimistic until it has measured, and request
// deadlines bound the cost. Timeouts enter through the RTT (LinkEstimator counts each as a
// censored sample of how long it waited), so when more than 1 - p of the requests time out the
// predicted leg is at least that wait.
// The request rate (bytes) counts Plan calls over rate_window_us, in 20 buckets.
// Effective accuracy = accuracy - (1 - exit_fraction) * p_fail * max(0, accuracy - local), where
// p_fail is the share of >= 5 recent exchanges that brought no answer (overloaded, deadline,
// error, timeout) and `local` the accuracy of the menu's best local-only option (no penalty
// without one): those inputs get the edge's degraded answer. An approximation (the offloaded
// inputs are the hard ones, where the edge does worse than on average).
//
// Policies:
//  * static: always options.calibrated (today's behaviour); never switches. It probes only
//    while the deadline guard holds requests back and the cloud is silent (a held-back
//    request's features are sent once per probe interval, its answer given locally), so a
//    cloud that comes back is noticed.
//  * slo:    the most accurate option whose predicted latency <= slo_ms; if none, the fastest.
//  * bytes:  the most accurate option whose bytes/s <= max_bytes_per_s; if none, the cheapest.
// Hysteresis (slo, bytes): the current option is kept while it meets the objective. A more
// accurate option replaces it only with `hysteresis` headroom (its latency or bytes/s <=
// (1 - hysteresis) * the limit) and once min_dwell_us passed since the last switch. An option
// that stops meeting the objective is left at once, for the most accurate one with headroom,
// else the most accurate that meets it, else the fastest (cheapest) unless the current one is
// within `hysteresis` of that. Noise inside the headroom band cannot flip the choice.
// Deadline guard (every policy): Decide never offloads a request whose cloud leg at the
// percentile exceeds its remaining time; it is answered on the edge at once instead. With no
// estimates the leg is just the profile's tail, so static behaves as today; once the link is
// measured, the guard answers at once what would otherwise come back degraded at the deadline.
// Probing (slo, bytes): when nothing was heard from the cloud for probe_interval_us (the current
// option offloads nothing, or the guard kept everything local), Plan marks one request as a
// probe: on the current option if it offloads, else on the offloading option with the fewest
// request bytes; in that case Decide answers the probe's request on the edge at once (reason
// local_option, as the current option would) and only sends its features (send_probe). At most one
// probe per probe_interval_us (default: one a second) while that silence lasts; while the current
// option offloads nothing although a more accurate one offloads, recovery_probe_interval_us
// (default 100 ms) instead, so that a link that recovers is noticed within about a second rather
// than the six seconds six probes a second apart take. Decide offloads a probe like any request
// when it may; otherwise it answers locally and sets send_probe: the caller also sends the
// features, and that reply only feeds the estimator. A probe never risks its request's deadline; it
// costs one request's bytes.
//
// Calling pattern (EdgeServer's loop): Update(estimator.Snapshot(options().percentile)) every
// turn or every ~100 ms (choices change only in Update); per request, Plan() before the head runs
// and Decide() after it; every send, reply and timeout goes to the LinkEstimator.
// Threads: every method may be called from any thread (one mutex).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/mutex.h"
#include "common/status.h"
#include "common/thread_annotations.h"
#include "edge/link_estimator.h"

namespace cleave::edge {

enum class OffloadPolicyKind : uint8_t { kStatic, kSlo, kBytes };
// "static", "slo", "bytes".
const char* OffloadPolicyKindName(OffloadPolicyKind kind);
// Parses the names above; InvalidArgument listing them otherwise.
Result<OffloadPolicyKind> ParseOffloadPolicyKind(const std::string& name);

// One way to serve requests, from the bundle's calibration and latency profile.
struct OffloadOption {
  int split = -1;               // split point to offload at; -1 = local only (never offloads)
  double exit_threshold = 2.0;  // exits answer when confidence >= this (> 1: exits off)
  double exit_fraction = 1.0;   // expected share answered by the exits, [0, 1]
  double accuracy = 0;          // expected accuracy of the whole option, [0, 1]
  double edge_ms = 0;           // head up to the split + exits + encode (local only: all of it)
  double cloud_ms = 0;          // tail compute from the split (profile)
  double request_bytes = 0;     // wire bytes of one offloaded request
  bool offloads() const { return split >= 0; }
};

struct OffloadPolicyOptions {
  OffloadPolicyKind kind = OffloadPolicyKind::kStatic;
  std::vector<OffloadOption> menu;   // not empty
  int calibrated = 0;                // menu index of the calibrated option: static's, and the start
  double slo_ms = 0;                 // slo: latency objective at `percentile`, > 0
  double percentile = 0.95;          // of the objective and the deadline guard, in (0, 1)
  double max_bytes_per_s = 0;        // bytes: uplink budget, > 0
  double hysteresis = 0.1;           // relative headroom to move to a better option, [0, 1)
  int64_t min_dwell_us = 1'000'000;  // no move to a better option sooner after a switch
  int64_t probe_interval_us = 1'000'000;  // silence before a probe, and between probes
  // Probing (slo, bytes) while the current option offloads nothing although a more accurate one
  // offloads (held local by the link or the cloud): silence before a probe and between probes.
  // A recovered link is confirmed by LinkEstimator's shift_samples (6) samples of the new
  // level, so this bounds how long the policy stays local after the link recovers: ~6 x (this
  // + the RTT) instead of 6 x probe_interval_us. Each probe costs one request of the smallest
  // offloading option.
  int64_t recovery_probe_interval_us = 100'000;
  int64_t rate_window_us = 5'000'000;     // request rate (bytes) measured over this
  double assumed_uplink_bytes_per_s = 0;  // while the estimator does not know it; 0 = see above
  // InvalidArgument naming the first bad field ("option 2: accuracy ..." for the menu). Fields
  // only one policy uses are checked for it alone.
  Status Validate() const;
};

// What the head should run for one request.
struct OffloadPlan {
  int option = 0;  // menu index
  int split = -1;  // run the head up to this split (-1: the local-only path)
  double exit_threshold = 2.0;
  bool probe = false;  // see Probing in the file comment
};

enum class DecisionReason : uint8_t {
  kOffload,      // not confident, and the cloud can answer in time
  kConfident,    // an exit reached the threshold
  kLocalOption,  // the plan's option never offloads, or a probe while the current one does not
  kDeadline,     // the cloud leg at the percentile would end past the deadline
};
// "offload", "confident", "local_option", "deadline".
const char* DecisionReasonName(DecisionReason reason);

struct OffloadDecision {
  bool offload = false;     // false: answer on the edge (the best exit)
  int split = -1;           // where to send the features (offload or send_probe), else -1
  bool send_probe = false;  // answer locally, and send the features anyway to refresh estimates
  DecisionReason reason = DecisionReason::kLocalOption;
  double predicted_leg_ms = 0;  // the cloud leg at the percentile (offloading options)
};

enum class ChoiceReason : uint8_t {
  kCalibrated,          // static policy, or no Update yet
  kBestMeetsObjective,  // the most accurate option that meets the objective
  kHeldByHysteresis,    // a more accurate one meets it too, without the headroom or dwell time
  kNoneMeetsObjective,  // nothing meets it: the fastest (slo) or cheapest (bytes)
};
// "calibrated", "best_meets_objective", "held_by_hysteresis", "none_meets_objective".
const char* ChoiceReasonName(ChoiceReason reason);

// Why the current option was chosen, and what the policy did so far (for logs and gauges).
struct OffloadPolicyState {
  OffloadPolicyKind kind = OffloadPolicyKind::kStatic;
  int option = 0;
  int split = -1;
  double exit_threshold = 2.0;
  ChoiceReason reason = ChoiceReason::kCalibrated;
  std::string why;                   // one line with the numbers behind `reason`
  double predicted_latency_ms = 0;   // of the current option, at the percentile
  double predicted_bytes_per_s = 0;  // of the current option
  double effective_accuracy = 0;     // of the current option
  double request_rate = 0;           // requests per second (Plan calls), over rate_window_us
  uint64_t switches = 0;
  int64_t last_switch_us = -1;  // clock time; -1 = never
  uint64_t probes = 0;
  uint64_t offloaded = 0;  // Decide outcomes
  uint64_t local_confident = 0;
  uint64_t local_deadline = 0;
  uint64_t local_option = 0;
};

class OffloadPolicy {
 public:
  // InvalidArgument when the options fail Validate. `clock` must outlive the policy.
  static Result<std::unique_ptr<OffloadPolicy>> Create(OffloadPolicyOptions options,
                                                       const Clock& clock);
  OffloadPolicy(const OffloadPolicy&) = delete;
  OffloadPolicy& operator=(const OffloadPolicy&) = delete;

  // Takes new estimates (LinkEstimator::Snapshot(options().percentile)) and re-decides the
  // current option. The only place the choice changes.
  void Update(const LinkSnapshot& link) EXCLUDES(mu_);

  // Per request, before the head runs: the option to run (the current one, or a probe).
  // Counts the request for the request rate.
  OffloadPlan Plan() EXCLUDES(mu_);

  // After the head ran `plan`: `confidence` is the best exit's score, `remaining_ms` the time
  // left to the request's deadline now (+infinity for none; NaN counts as 0). Local unless
  // the option offloads, no exit is confident and the cloud leg fits in `remaining_ms`.
  OffloadDecision Decide(const OffloadPlan& plan, double confidence, double remaining_ms)
      EXCLUDES(mu_);

  OffloadPolicyState State() const EXCLUDES(mu_);

  // Predictions for menu index `option` under the last Update (see the file comment); 0 for an
  // index outside the menu.
  double PredictedLatencyMs(int option) const EXCLUDES(mu_);
  double PredictedCloudLegMs(int option) const EXCLUDES(mu_);
  double PredictedBytesPerSecond(int option) const EXCLUDES(mu_);
  double EffectiveAccuracy(int option) const EXCLUDES(mu_);

  const OffloadPolicyOptions& options() const { return options_; }

 private:
  static constexpr int kRateBuckets = 20;

  OffloadPolicy(OffloadPolicyOptions options, const Clock& clock);
  void Reevaluate(int64_t now_us) REQUIRES(mu_);
  double LegMs(int option) const REQUIRES(mu_);
  double LatencyMs(int option) const REQUIRES(mu_);
  double BytesPerSecond(int option) const REQUIRES(mu_);
  double Accuracy(int option) const REQUIRES(mu_);
  double RequestRate(int64_t now_us) const REQUIRES(mu_);
  bool ProbeDue(int64_t now_us, int64_t interval_us) const REQUIRES(mu_);
  // The probe interval of the slo and bytes policies now (see recovery_probe_interval_us).
  int64_t AdaptiveProbeIntervalUs() const REQUIRES(mu_);
  int ProbeTarget() const REQUIRES(mu_);
  std::string Describe(int option) const;

  const OffloadPolicyOptions options_;
  const Clock& clock_;
  double local_accuracy_ = -1;  // best local-only option's; < 0 = none in the menu
  mutable Mutex mu_;
  LinkSnapshot link_ GUARDED_BY(mu_);
  int current_ GUARDED_BY(mu_);
  ChoiceReason reason_ GUARDED_BY(mu_) = ChoiceReason::kCalibrated;
  std::string why_ GUARDED_BY(mu_);
  double rate_ GUARDED_BY(mu_) = 0;  // at the last Update
  int64_t last_switch_us_ GUARDED_BY(mu_) = -1;
  int64_t last_probe_us_ GUARDED_BY(mu_) = -1;
  int64_t first_plan_us_ GUARDED_BY(mu_) = -1;
  // Plan calls per bucket of rate_window_us / kRateBuckets: (bucket index, count).
  std::array<std::pair<int64_t, uint64_t>, kRateBuckets> rate_buckets_ GUARDED_BY(mu_);
  OffloadPolicyState counters_ GUARDED_BY(mu_);  // only the counters are kept here
};

}  // namespace cleave::edge
