// EdgeServer: the cleave-edge serving loop.
//
// One thread owns both sockets (libzmq's one-thread-per-socket rule): a ROUTER where local
// applications send ClassifyRequests, and a DEALER to the cloud tail. Each loop turn drains
// up to `max_batch` application requests, runs them through the EdgeEngine as one batch,
// answers confident inputs at once, and sends the rest to the cloud. A pending request is
// answered by the cloud's reply or, when its deadline passes or the cloud refuses, by the
// best local exit marked `degraded`. Every request gets exactly one reply; late cloud replies
// are counted and dropped. At most `max_pending` requests wait for the cloud: when that many
// already do, an input the exit policy would offload is answered at once by its best local
// exit, marked `degraded` ("too many requests waiting for the cloud").
//
// Metrics (common/metrics.h, component "edge"): every reply by outcome (exit, offload,
// degraded; rejected for undecodable requests and unusable images; error when the head
// failed), wire bytes on the cloud link (offloaded requests actually queued, cloud replies
// received), queue seconds (arrival -> head), head compute seconds and batch sizes, and the
// requests waiting for the cloud as pending, and the inputs kept from the cloud because
// max_pending were waiting (cleave_edge_not_offloaded_total{reason="max_pending"}). The loop
// only increments pre-built children.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "common/edge_api.h"
#include "common/metrics.h"
#include "common/mutex.h"
#include "common/status.h"
#include "common/thread_annotations.h"
#include "common/transport.h"
#include "edge/adaptation.h"
#include "edge/edge_engine.h"
#include "edge/link_estimator.h"
#include "edge/offload_policy.h"

namespace cleave::edge {

struct EdgeServerOptions {
  std::string listen = "tcp://127.0.0.1:5555";  // local application endpoint (ROUTER)
  std::string cloud = "tcp://127.0.0.1:5560";   // cloud tail endpoint; empty = edge only
  uint32_t default_deadline_ms = 250;           // when a request does not set one
  int max_batch = 32;                           // application requests per head batch
  size_t max_pending = 256;                     // requests waiting for the cloud at most (>= 1)
  SocketOptions socket;
  // Applied to the cloud DEALER only, before it connects (CURVE: SetUpCurveClient).
  std::function<Status(zmq::socket_t&)> cloud_configure;
  // Where the server's metrics go; null = a private registry nobody exports.
  std::shared_ptr<Metrics> metrics;
  // On-gateway learning (edge/adaptation.h): every answered input is observed (with the
  // cloud's logits or the answering exit's), and FeedbackRequests go to it. Null: feedback
  // is refused ("on-gateway learning is off").
  std::shared_ptr<EdgeLearner> learner;
  // Where to compute (edge/offload_policy.h), from the live link estimates and the served
  // bundle's menu (edge/offload_menu.h, rebuilt on every engine swap). kStatic: the bundle's
  // calibrated threshold at split 0, as before; every kind refuses to offload what its
  // estimates say cannot come back before the request's deadline.
  OffloadPolicyKind policy = OffloadPolicyKind::kStatic;
  double slo_ms = 0;             // kSlo: latency objective at slo_percentile
  double slo_percentile = 0.95;  // also the deadline guard's
  double max_bytes_per_s = 0;    // kBytes: uplink budget
  // kStatic: the menu option to run instead of the calibrated one ("local" or
  // "SPLIT:THRESHOLD", edge/offload_menu.h FindOffloadOption); "" = the calibrated one. Create
  // fails when the bundle's menu has no such option (an engine swap keeps the old policy).
  std::string static_option;
  // Request encoding (EdgeEngine::set_wire_version): 2 = compact (default), 1 = for clouds
  // older than version 2.
  uint16_t wire_version = wire::kCompactProtocolVersion;
  // Time of the link estimator and the policy; null = SystemClock(). Must outlive the server.
  const Clock* clock = nullptr;
};

struct EdgeServerStats {
  uint64_t requests = 0;
  uint64_t answered_exit = 0;
  uint64_t answered_cloud = 0;
  uint64_t answered_degraded = 0;
  uint64_t answered_error = 0;
  uint64_t rejected = 0;                // undecodable application requests
  uint64_t feedback = 0;                // feedback messages answered (accepted or not)
  uint64_t late_cloud_replies = 0;      // arrived after the request was answered degraded
  uint64_t pending_full = 0;            // degraded at once: max_pending were waiting for the cloud
  uint64_t not_offloaded_deadline = 0;  // answered at the edge: the cloud could not make it
  uint64_t probes = 0;                  // features sent only to refresh the link estimates
  uint64_t wire_bytes_sent = 0;
};

class EdgeServer {
 public:
  // Binds the local endpoint and connects to the cloud. `context` must outlive the server.
  static Result<std::unique_ptr<EdgeServer>> Create(TransportContext& context,
                                                    EdgeServerOptions options,
                                                    std::unique_ptr<EdgeEngine> engine);
  ~EdgeServer();
  EdgeServer(const EdgeServer&) = delete;
  EdgeServer& operator=(const EdgeServer&) = delete;

  // The bound application endpoint (resolved when the port was 0).
  const std::string& endpoint() const;

  // Runs one blank image through the head and exits (nothing is sent) so the first request
  // does not pay for lazy initialization. Call before Run, never concurrently with it.
  Status WarmUp();

  // Serves until `should_stop()` returns true (checked at least every 50 ms), then answers
  // every still-pending request degraded before returning.
  Status Run(const std::function<bool()>& should_stop);

  // Hot swap (edge.model_repository): `engine` (loaded, verified and warmed by the caller)
  // serves every request the loop takes after its current turn; requests already waiting for
  // the cloud finish as they are (their fallback answer was computed by the old engine). Any
  // thread, also while Run is serving. InvalidArgument (nothing changes) for a null engine.
  Status SwapEngine(uint64_t version, std::unique_ptr<EdgeEngine> engine) EXCLUDES(staged_mu_);
  // The version new requests are served by (the `version` given to the last SwapEngine that
  // took effect, or the one set at start; 0 without a repository). Any thread.
  uint64_t served_version() const { return served_version_.load(std::memory_order_acquire); }
  // The version of the engine given to Create (call before Run).
  void set_initial_version(uint64_t version) {
    served_version_.store(version);
    m_->model_version->Set(static_cast<double>(version));
  }

  // Sets EdgeServerOptions::learner after Create (the learner's swap needs the server).
  // Call before Run.
  void set_learner(std::shared_ptr<EdgeLearner> learner) { options_.learner = std::move(learner); }

  const EdgeServerStats& stats() const { return stats_; }
  // The link estimates and the policy's state now (socket thread, or after Run returned).
  LinkSnapshot link() const { return link_->Snapshot(options_.slo_percentile); }
  OffloadPolicyState policy_state() const { return policy_->State(); }

 private:
  struct Pending {
    std::string peer;
    bool enveloped = false;  // answer with a v2 LocalReply
    uint64_t app_request_id = 0;
    torch::Tensor image;  // the head's input, kept for the learner (undefined without one)
    int64_t deadline_us = 0;
    int64_t received_us = 0;
    uint64_t wire_bytes = 0;
    bool probe = false;            // sent only for the estimates: its reply answers nobody
    OffloadPlan plan;              // the option that served it (reported in the reply)
    float exit_threshold = -1.0f;  // what the exits were held to
    HeadDecision decision;
  };
  struct Incoming {
    std::string peer;
    edge_api::ClassifyRequest request;
    int64_t received_us = 0;
    bool enveloped = false;
  };

  EdgeServer(EdgeServerOptions options, std::unique_ptr<EdgeEngine> engine);
  void ProcessBatch(std::vector<Incoming>& batch);
  void HandleCloudReply(const std::string& bytes);
  void ExpireDeadlines(int64_t now_us);
  void AnswerDegraded(uint64_t wire_id, const std::string& why);
  // Sends `reply` (its class_name filled in from the bundle; a v2 LocalReply when the request
  // was `enveloped`) and counts the outcome.
  void Reply(const std::string& peer, edge_api::ClassifyReply reply, Outcome outcome,
             bool enveloped);
  void HandleFeedback(const std::string& peer, const edge_api::FeedbackRequest& request);
  // Hands an answered input to the learner (no-op without one).
  void Observe(const std::string& peer, uint64_t request_id, const torch::Tensor& image,
               const torch::Tensor& teacher, const torch::Tensor& exit_logits);
  int NextTimeoutMs(int64_t now_us) const;
  // A fresh wire id (below 2^32: version 2 requests carry 32-bit ids).
  uint64_t NextWireId();
  // Builds the policy for the engine being served (its menu); keeps the old one on error.
  Status RebuildPolicy();
  // Feeds the policy the link estimates (at most every 50 ms) and refreshes the gauges.
  void UpdatePolicy(bool force);
  // Sends `d`'s request; `probe`: nobody waits for its answer. Returns whether it was queued.
  bool SendToCloud(uint64_t wire_id, Pending p, double expected_cloud_ms);

  // Socket thread: adopts an engine staged by SwapEngine.
  void AdoptStagedEngine() EXCLUDES(staged_mu_);

  EdgeServerOptions options_;
  std::unique_ptr<EdgeEngine> engine_;  // socket thread
  Mutex staged_mu_;
  std::unique_ptr<EdgeEngine> staged_ GUARDED_BY(staged_mu_);
  uint64_t staged_version_ GUARDED_BY(staged_mu_) = 0;
  std::atomic<uint64_t> served_version_{0};
  std::unique_ptr<RouterServer> local_;
  std::unique_ptr<DealerClient> cloud_;
  std::map<uint64_t, Pending> pending_;            // by wire request id
  std::set<std::pair<int64_t, uint64_t>> expiry_;  // (deadline_us, wire id)
  uint64_t next_wire_id_ = 1;
  EdgeServerStats stats_;
  std::shared_ptr<Metrics> metrics_;
  const ServiceMetrics* m_ = nullptr;              // metrics_->Service("edge")
  prometheus::Counter* pending_full_ = nullptr;    // cleave_edge_not_offloaded_total{max_pending}
  prometheus::Counter* deadline_local_ = nullptr;  // ...{deadline}
  const OffloadMetrics* om_ = nullptr;
  std::unique_ptr<LinkEstimator> link_;
  std::unique_ptr<OffloadPolicy> policy_;
  int64_t last_policy_update_us_ = 0;
  // The static policy runs the bundle's calibrated option: its exits keep the bundle's
  // per-exit thresholds (-1) instead of the option's single one.
  bool calibrated_exits_ = true;
  bool timed_out_ = false;  // a request timed out this turn
  uint64_t reported_switches_ = 0;
  uint64_t reported_probes_ = 0;
};

// Microseconds on the steady clock.
int64_t SteadyMicros();

}  // namespace cleave::edge
