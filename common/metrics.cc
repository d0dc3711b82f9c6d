#include "common/metrics.h"

#include <iterator>

namespace cleave {

const char* OutcomeName(Outcome outcome) {
  switch (outcome) {
    case Outcome::kExit: return "exit";
    case Outcome::kOffload: return "offload";
    case Outcome::kDegraded: return "degraded";
    case Outcome::kRejected: return "rejected";
    case Outcome::kError: return "error";
    case Outcome::kOk: return "ok";
    case Outcome::kOverloaded: return "overloaded";
  }
  return "unknown";
}

const char* NotOffloadedReasonName(NotOffloadedReason reason) {
  switch (reason) {
    case NotOffloadedReason::kMaxPending: return "max_pending";
    case NotOffloadedReason::kDeadline: return "deadline";
    case NotOffloadedReason::kPolicy: return "policy";
  }
  return "unknown";
}

const char* FrameDropName(FrameDrop reason) {
  switch (reason) {
    case FrameDrop::kReplaced: return "replaced";
    case FrameDrop::kBadInput: return "bad_input";
    case FrameDrop::kError: return "error";
    case FrameDrop::kNoReply: return "no_reply";
    case FrameDrop::kShutdown: return "shutdown";
    case FrameDrop::kTooManyStreams: return "too_many_streams";
  }
  return "unknown";
}

// Requests answered on the gateway or by a batcher: 50 us .. 2.5 s.
const std::vector<double>& Metrics::QueueSecondsBuckets() {
  static const std::vector<double> buckets = {0.00005, 0.0001, 0.00025, 0.0005, 0.001,
                                              0.0025,  0.005,  0.01,    0.025,  0.05,
                                              0.1,     0.25,   0.5,     1,      2.5};
  return buckets;
}

// One head batch on a gateway CPU up to a large tail batch or an aggregation: 100 us .. 10 s.
const std::vector<double>& Metrics::ComputeSecondsBuckets() {
  static const std::vector<double> buckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                              0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                              1,      2.5,     5,      10};
  return buckets;
}

// Powers of two up to the largest configurable batch sizes.
const std::vector<double>& Metrics::BatchSizeBuckets() {
  static const std::vector<double> buckets = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
  return buckets;
}

// Federated rounds last seconds (tests, small models) to an hour (round deadline).
const std::vector<double>& Metrics::RoundDurationBuckets() {
  static const std::vector<double> buckets = {0.5, 1,   2.5, 5,   10,   30,
                                              60,  120, 300, 600, 1800, 3600};
  return buckets;
}

// A frame's age when answered: an exit on the gateway (ms) up to a stalled link (30 s).
const std::vector<double>& Metrics::StalenessSecondsBuckets() {
  static const std::vector<double> buckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                              0.25,  0.5,    1,     2.5,  5,     10,   30};
  return buckets;
}

Metrics::Metrics() : Metrics(std::make_shared<prometheus::Registry>()) {}

Metrics::Metrics(std::shared_ptr<prometheus::Registry> registry) : registry_(std::move(registry)) {}

const ServiceMetrics& Metrics::Service(const std::string& component) {
  MutexLock lock(&mu_);
  auto found = services_.find(component);
  if (found != services_.end()) return *found->second;
  prometheus::Registry& r = *registry_;
  if (requests_ == nullptr) {
    requests_ = &prometheus::BuildCounter()
                     .Name("cleave_requests_total")
                     .Help(
                         "Requests by how they ended (exit, offload, degraded, rejected, error, "
                         "ok, overloaded)")
                     .Register(r);
    wire_bytes_ = &prometheus::BuildCounter()
                       .Name("cleave_wire_bytes_total")
                       .Help(
                           "Bytes of messages sent and received on the service link (payload "
                           "plus ZeroMQ frame headers)")
                       .Register(r);
    queue_ = &prometheus::BuildHistogram()
                  .Name("cleave_queue_seconds")
                  .Help("Time from a request's arrival until its computation starts")
                  .Register(r);
    compute_ = &prometheus::BuildHistogram()
                    .Name("cleave_compute_seconds")
                    .Help("Time to compute one batch (or one request where nothing is batched)")
                    .Register(r);
    batch_ = &prometheus::BuildHistogram()
                  .Name("cleave_batch_size")
                  .Help("Requests computed together in one batch")
                  .Register(r);
    pending_ = &prometheus::BuildGauge()
                    .Name("cleave_pending_requests")
                    .Help("Requests received and not yet answered")
                    .Register(r);
    model_version_ = &prometheus::BuildGauge()
                          .Name("cleave_model_version")
                          .Help(
                              "Version of the model repository that new requests are served "
                              "by (0 when serving a single bundle)")
                          .Register(r);
  }
  auto m = std::make_unique<ServiceMetrics>();
  for (size_t i = 0; i < kOutcomeCount; ++i) {
    m->requests[i] = &requests_->Add(
        {{"component", component}, {"outcome", OutcomeName(static_cast<Outcome>(i))}});
  }
  m->wire_bytes_sent = &wire_bytes_->Add({{"component", component}, {"direction", "sent"}});
  m->wire_bytes_received = &wire_bytes_->Add({{"component", component}, {"direction", "received"}});
  m->queue_seconds = &queue_->Add({{"component", component}}, QueueSecondsBuckets());
  m->compute_seconds = &compute_->Add({{"component", component}}, ComputeSecondsBuckets());
  m->batch_size = &batch_->Add({{"component", component}}, BatchSizeBuckets());
  m->pending_requests = &pending_->Add({{"component", component}});
  m->model_version = &model_version_->Add({{"component", component}});
  return *services_.emplace(component, std::move(m)).first->second;
}

const AdaptationMetrics& Metrics::Adaptation() {
  MutexLock lock(&mu_);
  if (adaptation_) return *adaptation_;
  prometheus::Registry& r = *registry_;
  auto m = std::make_unique<AdaptationMetrics>();
  auto& cycles = prometheus::BuildCounter()
                     .Name("cleave_edge_adapt_cycles_total")
                     .Help(
                         "On-gateway adaptation cycles by result: swapped (the adapted head "
                         "serves) or failed")
                     .Register(r);
  m->cycles = &cycles.Add({{"result", "swapped"}});
  m->cycles_failed = &cycles.Add({{"result", "failed"}});
  m->cycles_kept = &cycles.Add({{"result", "kept"}});
  m->cycles_skipped = &cycles.Add({{"result", "no_drift"}});
  m->cycle_seconds = &prometheus::BuildHistogram()
                          .Name("cleave_edge_adapt_cycle_seconds")
                          .Help("Wall time of an adaptation cycle (training, re-quantization)")
                          .Register(r)
                          .Add({}, RoundDurationBuckets());
  auto& observed = prometheus::BuildCounter()
                       .Name("cleave_edge_adapt_observed_total")
                       .Help(
                           "Served inputs kept for learning, by label source: teacher (the "
                           "cloud's answer), pseudo (a confident exit), feedback (the "
                           "application's label)")
                       .Register(r);
  m->observed_teacher = &observed.Add({{"source", "teacher"}});
  m->observed_pseudo = &observed.Add({{"source", "pseudo"}});
  m->observed_feedback = &observed.Add({{"source", "feedback"}});
  m->observations_dropped = &prometheus::BuildCounter()
                                 .Name("cleave_edge_adapt_dropped_total")
                                 .Help(
                                     "Served inputs not kept because the learner's inbox "
                                     "was full (serving never waits for the learner)")
                                 .Register(r)
                                 .Add({});
  auto& feedback = prometheus::BuildCounter()
                       .Name("cleave_edge_feedback_total")
                       .Help("Feedback messages by result: accepted or rejected")
                       .Register(r);
  m->feedback_accepted = &feedback.Add({{"result", "accepted"}});
  m->feedback_rejected = &feedback.Add({{"result", "rejected"}});
  auto& rows = prometheus::BuildGauge()
                   .Name("cleave_edge_adapt_rows")
                   .Help(
                       "Rows the learner holds: buffer (the strategy's replay buffer) and "
                       "pending (labelled rows waiting for the next cycle)")
                   .Register(r);
  m->buffer_rows = &rows.Add({{"kind", "buffer"}});
  m->pending_rows = &rows.Add({{"kind", "pending"}});
  adaptation_ = std::move(m);
  return *adaptation_;
}

const FederatedMetrics& Metrics::Federated() {
  MutexLock lock(&mu_);
  if (federated_) return *federated_;
  prometheus::Registry& r = *registry_;
  auto m = std::make_unique<FederatedMetrics>();
  m->round = &prometheus::BuildGauge()
                  .Name("cleave_federated_round")
                  .Help("The federated round that is open, or the last one when none is")
                  .Register(r)
                  .Add({});
  auto& updates = prometheus::BuildCounter()
                      .Name("cleave_federated_updates_total")
                      .Help(
                          "Client updates by status: accepted, rejected, late; failed counts "
                          "sampled clients that left or timed out")
                      .Register(r);
  m->updates_accepted = &updates.Add({{"status", "accepted"}});
  m->updates_rejected = &updates.Add({{"status", "rejected"}});
  m->updates_late = &updates.Add({{"status", "late"}});
  m->updates_failed = &updates.Add({{"status", "failed"}});
  m->round_duration_seconds = &prometheus::BuildHistogram()
                                   .Name("cleave_federated_round_duration_seconds")
                                   .Help("Time from a round's opening to its close")
                                   .Register(r)
                                   .Add({}, RoundDurationBuckets());
  m->dp_epsilon = &prometheus::BuildGauge()
                       .Name("cleave_federated_dp_epsilon")
                       .Help(
                           "Client-level differential privacy spent so far: epsilon of the RDP "
                           "accountant at the configured delta (dpfedavg; 0 before the first "
                           "noisy release, +Inf when unbounded)")
                       .Register(r)
                       .Add({});
  auto& identity = prometheus::BuildCounter()
                       .Name("cleave_federated_identity_refused_total")
                       .Help(
                           "Client messages refused by identity: the sender's transport "
                           "identity speaks for another client (mismatch), the client id "
                           "belongs to another sender (taken), or aggregator.max_clients "
                           "clients are registered (max_clients)")
                       .Register(r);
  m->identity_mismatch = &identity.Add({{"reason", "mismatch"}});
  m->identity_taken = &identity.Add({{"reason", "taken"}});
  m->identity_max_clients = &identity.Add({{"reason", "max_clients"}});
  federated_ = std::move(m);
  return *federated_;
}

prometheus::Gauge& Metrics::ConnectedEdges() {
  MutexLock lock(&mu_);
  if (connected_edges_ == nullptr) {
    connected_edges_ = &prometheus::BuildGauge()
                            .Name("cleave_connected_edges")
                            .Help(
                                "Edges connected: registered and live (aggregator) or seen in "
                                "the last minute (cloud)")
                            .Register(*registry_)
                            .Add({});
  }
  return *connected_edges_;
}

prometheus::Counter& Metrics::CurveRefused(const std::string& component) {
  MutexLock lock(&mu_);
  auto found = refused_.find(component);
  if (found != refused_.end()) return *found->second;
  if (curve_refused_ == nullptr) {
    curve_refused_ = &prometheus::BuildCounter()
                          .Name("cleave_curve_refused_total")
                          .Help(
                              "CURVE clients refused by the ZAP handler (unknown key, other "
                              "mechanism or domain)")
                          .Register(*registry_);
  }
  prometheus::Counter& counter = curve_refused_->Add({{"component", component}});
  refused_.emplace(component, &counter);
  return counter;
}

prometheus::Counter& Metrics::EdgeNotOffloaded(NotOffloadedReason reason) {
  MutexLock lock(&mu_);
  if (not_offloaded_[0] == nullptr) {
    auto& family = prometheus::BuildCounter()
                       .Name("cleave_edge_not_offloaded_total")
                       .Help(
                           "Inputs the exit policy would send to the cloud that the edge "
                           "answered at once, by reason (max_pending: edge.max_pending "
                           "requests were already waiting for the cloud; deadline: the answer "
                           "would come after the deadline; policy: the offload policy answers "
                           "at the edge)")
                       .Register(*registry_);
    for (size_t i = 0; i < kNotOffloadedReasonCount; ++i) {
      not_offloaded_[i] =
          &family.Add({{"reason", NotOffloadedReasonName(static_cast<NotOffloadedReason>(i))}});
    }
  }
  return *not_offloaded_[static_cast<size_t>(reason)];
}

const StreamMetrics& Metrics::Stream(const std::string& stream) {
  MutexLock lock(&mu_);
  auto found = streams_.find(stream);
  if (found != streams_.end()) return *found->second;
  prometheus::Registry& r = *registry_;
  if (stream_frames_ == nullptr) {
    stream_frames_ = &prometheus::BuildCounter()
                          .Name("cleave_edge_stream_frames_total")
                          .Help("Frames a streaming source delivered to cleave-edge, good or bad")
                          .Register(r);
    stream_answered_ = &prometheus::BuildCounter()
                            .Name("cleave_edge_stream_answered_total")
                            .Help(
                                "Frames of a stream answered, by source (exit, cloud, "
                                "degraded)")
                            .Register(r);
    stream_dropped_ = &prometheus::BuildCounter()
                           .Name("cleave_edge_stream_dropped_total")
                           .Help(
                               "Frames of a stream that got no answer, by reason (replaced: "
                               "latest-frame-wins; bad_input; error; no_reply; shutdown; "
                               "too_many_streams)")
                           .Register(r);
    stream_fps_ = &prometheus::BuildGauge()
                       .Name("cleave_edge_stream_fps")
                       .Help(
                           "Frames per second of a stream over the last second or so, by kind "
                           "(received, answered)")
                       .Register(r);
    stream_staleness_ = &prometheus::BuildHistogram()
                             .Name("cleave_edge_stream_staleness_seconds")
                             .Help("Time from a frame's arrival at cleave-edge to its answer")
                             .Register(r);
  }
  auto m = std::make_unique<StreamMetrics>();
  m->frames = &stream_frames_->Add({{"stream", stream}});
  m->answered_exit = &stream_answered_->Add({{"stream", stream}, {"source", "exit"}});
  m->answered_cloud = &stream_answered_->Add({{"stream", stream}, {"source", "cloud"}});
  m->answered_degraded = &stream_answered_->Add({{"stream", stream}, {"source", "degraded"}});
  for (size_t i = 0; i < kFrameDropCount; ++i) {
    m->dropped[i] = &stream_dropped_->Add(
        {{"stream", stream}, {"reason", FrameDropName(static_cast<FrameDrop>(i))}});
  }
  m->received_fps = &stream_fps_->Add({{"stream", stream}, {"kind", "received"}});
  m->answered_fps = &stream_fps_->Add({{"stream", stream}, {"kind", "answered"}});
  m->staleness_seconds = &stream_staleness_->Add({{"stream", stream}}, StalenessSecondsBuckets());
  return *streams_.emplace(stream, std::move(m)).first->second;
}

const OffloadMetrics& Metrics::Offload() {
  MutexLock lock(&mu_);
  if (offload_) return *offload_;
  prometheus::Registry& r = *registry_;
  auto gauge = [&r](const char* name, const char* help) -> prometheus::Family<prometheus::Gauge>& {
    return prometheus::BuildGauge().Name(name).Help(help).Register(r);
  };
  auto m = std::make_unique<OffloadMetrics>();
  auto& rtt = gauge("cleave_edge_link_rtt_seconds",
                    "Network round trip to the cloud (reply time minus the cloud's queue and "
                    "compute time), by quantile over recent requests");
  m->rtt_p50_seconds = &rtt.Add({{"quantile", "0.5"}});
  m->rtt_p95_seconds = &rtt.Add({{"quantile", "0.95"}});
  m->uplink_bytes_per_second = &gauge("cleave_edge_link_uplink_bytes_per_second",
                                      "Estimated uplink throughput to the cloud (0 while unknown)")
                                    .Add({});
  m->cloud_queue_p50_seconds =
      &gauge("cleave_edge_cloud_queue_seconds", "Median queueing time the cloud reports")
           .Add({{"quantile", "0.5"}});
  m->cloud_compute_p50_seconds =
      &gauge("cleave_edge_cloud_compute_seconds", "Median batch compute time the cloud reports")
           .Add({{"quantile", "0.5"}});
  auto& outcome = gauge("cleave_edge_link_outcome_fraction",
                        "Share of recent cloud exchanges by outcome (overloaded, timeout)");
  m->overloaded_fraction = &outcome.Add({{"outcome", "overloaded"}});
  m->timeout_fraction = &outcome.Add({{"outcome", "timeout"}});
  m->split = &gauge("cleave_edge_offload_split",
                    "Split point the offload policy offloads at now (-1: answers at the edge)")
                  .Add({});
  m->exit_threshold =
      &gauge("cleave_edge_offload_exit_threshold", "Exit threshold of the policy's option").Add({});
  m->predicted_latency_seconds =
      &gauge("cleave_edge_offload_predicted_latency_seconds",
             "Predicted latency of the policy's option at its percentile")
           .Add({});
  m->switches = &prometheus::BuildCounter()
                     .Name("cleave_edge_offload_switches_total")
                     .Help("Times the offload policy changed its option")
                     .Register(r)
                     .Add({});
  m->probes = &prometheus::BuildCounter()
                   .Name("cleave_edge_offload_probes_total")
                   .Help("Requests sent to refresh the link estimates while the cloud was silent")
                   .Register(r)
                   .Add({});
  offload_ = std::move(m);
  return *offload_;
}

void RecentPeers::Seen(const std::string& peer, int64_t now_micros) {
  auto it = last_seen_.find(peer);
  if (it != last_seen_.end()) {
    it->second = now_micros;
  } else if (last_seen_.size() < max_peers_) {
    last_seen_.emplace(peer, now_micros);
  }
}

size_t RecentPeers::Expire(int64_t now_micros) {
  for (auto it = last_seen_.begin(); it != last_seen_.end();) {
    it = now_micros - it->second > window_micros_ ? last_seen_.erase(it) : std::next(it);
  }
  return last_seen_.size();
}

}  // namespace cleave
