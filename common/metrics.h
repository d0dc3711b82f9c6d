// cleave's Prometheus metrics: every family a daemon exports is defined here, once (name,
// help text, base unit, buckets), so the Grafana dashboard and the alert rules in deploy/
// have a single source of truth. docs/operations.md ("Observability") lists them for users.
//
//   cleave_requests_total{component,outcome}      counter   one per request, by how it ended
//   cleave_wire_bytes_total{component,direction}  counter   bytes on the service link
//   cleave_queue_seconds{component}               histogram received -> compute starts
//   cleave_compute_seconds{component}             histogram one batch (or request) computed
//   cleave_batch_size{component}                  histogram requests computed together
//   cleave_pending_requests{component}            gauge     received, not yet answered
//   cleave_model_version{component}               gauge     model version new requests get
//                                                           (model repository; 0 = none)
//   cleave_connected_edges                        gauge     registered (aggregator) or
//                                                           recently seen (cloud) peers
//   cleave_federated_round                        gauge     the open (or last) round
//   cleave_federated_updates_total{status}        counter   accepted, rejected, late, failed
//   cleave_federated_round_duration_seconds       histogram open -> close of a round
//   cleave_federated_dp_epsilon                   gauge     differential privacy spent so far
//                                                           (dpfedavg: epsilon at the run's
//                                                           delta; 0 before the first release)
//   cleave_federated_identity_refused_total{reason} counter messages refused because the
//                                                           sender's transport identity may not
//                                                           speak for the client id they name
//                                                           (mismatch, taken) or registrations
//                                                           beyond aggregator.max_clients
//   cleave_curve_refused_total{component}         counter   CURVE handshakes the ZAP handler
//                                                           refused
//   cleave_edge_not_offloaded_total{reason}       counter   inputs the exit policy sent to the
//                                                           cloud that were answered degraded at
//                                                           once (max_pending: the edge's bound
//                                                           on requests waiting for the cloud)
//   cleave_edge_stream_frames_total{stream}       counter   frames a streaming source delivered
//   cleave_edge_stream_answered_total{stream,source} counter  answered (exit, cloud, degraded)
//   cleave_edge_stream_dropped_total{stream,reason}  counter  not answered, by FrameDrop reason
//   cleave_edge_stream_fps{stream,kind}           gauge     frames per second received/answered
//   cleave_edge_stream_staleness_seconds{stream}  histogram arrival of a frame -> its answer
//
// Families are registered on first use, so a daemon exports only what it uses (the cloud
// has no federated series). Label children are created once, when a component asks for its
// ServiceMetrics: every outcome and direction exists from the start at 0 (so rate() and
// absent() work before the first request), and the serving loops increment through plain
// pointers - no label lookup per request (docs/design.md, "Pitfalls"). Histogram
// Observe takes a mutex: observe once per request or batch, never per element.
//
// Thread-safety: Metrics' methods may be called from any thread; the returned metrics are
// prometheus-cpp's thread-safe counters, gauges and histograms. Lifetime: everything
// returned lives as long as the Metrics object (and its registry).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "common/mutex.h"
#include "common/thread_annotations.h"

namespace cleave {

// How a request ended: the `outcome` label of cleave_requests_total.
//   exit        the edge answered with an early exit
//   offload     the edge answered with the cloud's scores
//   degraded    the edge answered with its best exit because the cloud did not (unreachable,
//               refused, past the deadline, or no cloud configured)
//   rejected    refused without computing: undecodable or invalid for this service (version,
//               model, shape, image), or its deadline had already passed
//   error       accepted but serving failed (the model computation failed)
//   ok          a service (cloud, aggregator) computed and answered
//   overloaded  refused because the service had no room (queue full)
enum class Outcome : uint8_t { kExit, kOffload, kDegraded, kRejected, kError, kOk, kOverloaded };
inline constexpr size_t kOutcomeCount = 7;
// "exit", "offload", ... (the label value).
const char* OutcomeName(Outcome outcome);

// Why an input the exit policy would send to the cloud was answered degraded at once: the
// `reason` label of cleave_edge_not_offloaded_total.
//   max_pending  edge.max_pending requests were already waiting for the cloud
// max_pending: edge.max_pending requests were already waiting; deadline: the offload policy
// predicted the cloud's answer would come after the request's deadline; policy: the policy's
// current option answers every input at the edge (a slow link or an overloaded cloud).
enum class NotOffloadedReason : uint8_t { kMaxPending, kDeadline, kPolicy };
inline constexpr size_t kNotOffloadedReasonCount = 3;
const char* NotOffloadedReasonName(NotOffloadedReason reason);

// Why a frame of a streaming source (edge/stream_feeder.h) got no answer: the `reason` label
// of cleave_edge_stream_dropped_total. Every frame received is answered or dropped, once.
//   replaced          latest-frame-wins: a newer frame of its stream took its place while the
//                     stream's in-flight window was full
//   bad_input         oversized, not an image of the configured format, bad framing, or a
//                     stream id that is not allowed
//   error             the daemon answered with an error (e.g. the image does not decode)
//   no_reply          the daemon did not answer within the feeder's reply timeout
//   shutdown          still waiting to be sent when the daemon stopped
//   too_many_streams  its stream would pass edge.stream_max_streams (counted on stream
//                     "_other")
enum class FrameDrop : uint8_t {
  kReplaced,
  kBadInput,
  kError,
  kNoReply,
  kShutdown,
  kTooManyStreams
};
inline constexpr size_t kFrameDropCount = 6;
const char* FrameDropName(FrameDrop reason);

// One stream's children of the streaming-source families. Pointers are never null.
struct StreamMetrics {
  prometheus::Counter* frames = nullptr;  // received, good or bad
  prometheus::Counter* answered_exit = nullptr;
  prometheus::Counter* answered_cloud = nullptr;
  prometheus::Counter* answered_degraded = nullptr;
  std::array<prometheus::Counter*, kFrameDropCount> dropped{};
  prometheus::Gauge* received_fps = nullptr;
  prometheus::Gauge* answered_fps = nullptr;
  prometheus::Histogram* staleness_seconds = nullptr;

  void Drop(FrameDrop reason, double n = 1) const {
    dropped[static_cast<size_t>(reason)]->Increment(n);
  }
};

// The edge's live link estimates and offload policy (edge/link_estimator.h,
// edge/offload_policy.h), refreshed by the serving loop. Pointers are never null.
struct OffloadMetrics {
  prometheus::Gauge* rtt_p50_seconds = nullptr;  // network round trip (queue + compute removed)
  prometheus::Gauge* rtt_p95_seconds = nullptr;
  prometheus::Gauge* uplink_bytes_per_second = nullptr;  // 0 while unknown
  prometheus::Gauge* cloud_queue_p50_seconds = nullptr;
  prometheus::Gauge* cloud_compute_p50_seconds = nullptr;
  prometheus::Gauge* overloaded_fraction = nullptr;  // of recent exchanges
  prometheus::Gauge* timeout_fraction = nullptr;
  prometheus::Gauge* split = nullptr;           // the policy's current split point (-1: local)
  prometheus::Gauge* exit_threshold = nullptr;  // and its exit threshold
  prometheus::Gauge* predicted_latency_seconds = nullptr;  // of that option, at the percentile
  prometheus::Counter* switches = nullptr;
  prometheus::Counter* probes = nullptr;
};

// One component's children of the per-component families. Pointers are never null.
struct ServiceMetrics {
  std::array<prometheus::Counter*, kOutcomeCount> requests{};
  prometheus::Counter* wire_bytes_sent = nullptr;
  prometheus::Counter* wire_bytes_received = nullptr;
  prometheus::Histogram* queue_seconds = nullptr;
  prometheus::Histogram* compute_seconds = nullptr;
  prometheus::Histogram* batch_size = nullptr;
  prometheus::Gauge* pending_requests = nullptr;
  prometheus::Gauge* model_version = nullptr;

  void Count(Outcome outcome, double n = 1) const {
    requests[static_cast<size_t>(outcome)]->Increment(n);
  }
};

// The aggregator's round metrics. Pointers are never null.
struct FederatedMetrics {
  prometheus::Gauge* round = nullptr;
  prometheus::Counter* updates_accepted = nullptr;
  prometheus::Counter* updates_rejected = nullptr;  // stale, unsampled, duplicate, malformed...
  prometheus::Counter* updates_late = nullptr;      // after the round had what it needed
  prometheus::Counter* updates_failed = nullptr;    // sampled clients that left or timed out
  prometheus::Histogram* round_duration_seconds = nullptr;
  prometheus::Gauge* dp_epsilon = nullptr;
  // Refused by identity (federated/aggregator_identity.h): the sender is bound to another
  // client id (mismatch), the id is bound to another sender (taken), or registering one more
  // client would pass aggregator.max_clients (max_clients).
  prometheus::Counter* identity_mismatch = nullptr;
  prometheus::Counter* identity_taken = nullptr;
  prometheus::Counter* identity_max_clients = nullptr;
};

// On-gateway learning (edge/adaptation.h).
struct AdaptationMetrics {
  prometheus::Counter* cycles = nullptr;  // adaptation cycles whose head was swapped in
  prometheus::Counter* cycles_failed = nullptr;
  prometheus::Counter* cycles_kept = nullptr;     // refused by the check against the cloud
  prometheus::Counter* cycles_skipped = nullptr;  // no drift from the calibrated exit rate
  prometheus::Histogram* cycle_seconds = nullptr;
  // Served inputs the learner kept, by label source: teacher (the cloud's answer), pseudo
  // (a confident exit), feedback (the application's label).
  prometheus::Counter* observed_teacher = nullptr;
  prometheus::Counter* observed_pseudo = nullptr;
  prometheus::Counter* observed_feedback = nullptr;
  prometheus::Counter* observations_dropped = nullptr;  // the learner's inbox was full
  prometheus::Counter* feedback_accepted = nullptr;
  prometheus::Counter* feedback_rejected = nullptr;
  prometheus::Gauge* buffer_rows = nullptr;   // the strategy's replay buffer
  prometheus::Gauge* pending_rows = nullptr;  // labelled rows waiting for the next cycle
};

class Metrics {
 public:
  // Families on a fresh registry.
  Metrics();
  // Families on `registry` (which must not already hold cleave_* families). Not null.
  explicit Metrics(std::shared_ptr<prometheus::Registry> registry);
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // What the admin server serializes.
  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

  // The children for `component` ("cloud", "edge", "aggregator"), created on the first call
  // for that component; later calls return the same object.
  const ServiceMetrics& Service(const std::string& component) EXCLUDES(mu_);
  const FederatedMetrics& Federated() EXCLUDES(mu_);
  const AdaptationMetrics& Adaptation() EXCLUDES(mu_);
  prometheus::Gauge& ConnectedEdges() EXCLUDES(mu_);
  // Hand it to the ZAP handler (common/curve.h), which increments it per refusal.
  prometheus::Counter& CurveRefused(const std::string& component) EXCLUDES(mu_);
  // The edge's cleave_edge_not_offloaded_total child for `reason` (every reason is created,
  // at 0, on the first call).
  prometheus::Counter& EdgeNotOffloaded(NotOffloadedReason reason) EXCLUDES(mu_);
  // The children of stream `stream` (edge streaming sources), created on the first call for
  // that stream with every answer source and drop reason at 0; later calls return the same
  // object. The caller bounds how many streams it asks for (label cardinality).
  const StreamMetrics& Stream(const std::string& stream) EXCLUDES(mu_);
  // The edge's link and offload-policy children, created on the first call.
  const OffloadMetrics& Offload() EXCLUDES(mu_);

  // Bucket boundaries (seconds, or requests for batch size).
  static const std::vector<double>& QueueSecondsBuckets();
  static const std::vector<double>& ComputeSecondsBuckets();
  static const std::vector<double>& BatchSizeBuckets();
  static const std::vector<double>& RoundDurationBuckets();
  static const std::vector<double>& StalenessSecondsBuckets();

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  Mutex mu_;
  // Families, registered lazily (the pointers are guarded by mu_; the families themselves
  // are thread-safe and owned by the registry).
  prometheus::Family<prometheus::Counter>* requests_ GUARDED_BY(mu_) = nullptr;
  prometheus::Family<prometheus::Counter>* wire_bytes_ GUARDED_BY(mu_) = nullptr;
  prometheus::Family<prometheus::Histogram>* queue_ GUARDED_BY(mu_) = nullptr;
  prometheus::Family<prometheus::Histogram>* compute_ GUARDED_BY(mu_) = nullptr;
  prometheus::Family<prometheus::Histogram>* batch_ GUARDED_BY(mu_) = nullptr;
  prometheus::Family<prometheus::Gauge>* pending_ GUARDED_BY(mu_) = nullptr;
  prometheus::Family<prometheus::Gauge>* model_version_ GUARDED_BY(mu_) = nullptr;
  prometheus::Family<prometheus::Counter>* curve_refused_ GUARDED_BY(mu_) = nullptr;
  prometheus::Gauge* connected_edges_ GUARDED_BY(mu_) = nullptr;
  prometheus::Family<prometheus::Counter>* stream_frames_ GUARDED_BY(mu_) = nullptr;
  prometheus::Family<prometheus::Counter>* stream_answered_ GUARDED_BY(mu_) = nullptr;
  prometheus::Family<prometheus::Counter>* stream_dropped_ GUARDED_BY(mu_) = nullptr;
  prometheus::Family<prometheus::Gauge>* stream_fps_ GUARDED_BY(mu_) = nullptr;
  prometheus::Family<prometheus::Histogram>* stream_staleness_ GUARDED_BY(mu_) = nullptr;
  std::unique_ptr<FederatedMetrics> federated_ GUARDED_BY(mu_);
  std::unique_ptr<AdaptationMetrics> adaptation_ GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<ServiceMetrics>> services_ GUARDED_BY(mu_);
  std::map<std::string, prometheus::Counter*> refused_ GUARDED_BY(mu_);
  std::array<prometheus::Counter*, kNotOffloadedReasonCount> not_offloaded_ GUARDED_BY(mu_){};
  std::map<std::string, std::unique_ptr<StreamMetrics>> streams_ GUARDED_BY(mu_);
  std::unique_ptr<OffloadMetrics> offload_ GUARDED_BY(mu_);
};

// Distinct peers seen within a sliding window: cleave_connected_edges for a service whose
// clients do not register (the cloud sees only ROUTER routing ids). Seen() is one hash-map
// update, Expire() a sweep to run about once a second. At most `max_peers` are tracked
// (beyond that new peers are not added), so a flood of connections cannot grow it without
// bound. Not thread-safe: the serving loop owns it.
class RecentPeers {
 public:
  explicit RecentPeers(int64_t window_micros = 60'000'000, size_t max_peers = 100'000)
      : window_micros_(window_micros), max_peers_(max_peers) {}
  void Seen(const std::string& peer, int64_t now_micros);
  // Forgets peers not seen within the window before `now_micros`; returns how many remain.
  size_t Expire(int64_t now_micros);
  size_t size() const { return last_seen_.size(); }

 private:
  int64_t window_micros_;
  size_t max_peers_;
  std::unordered_map<std::string, int64_t> last_seen_;
};

}  // namespace cleave
