// LmServer: the cleave-cloud serving loop for an lm-split bundle.
//
// Threads, as in TailServer (cloud/tail_server.h):
//  - The socket thread (the caller of Run) alone touches the ROUTER socket. It decodes each
//    request (hostile input: a malformed one gets an error reply naming the problem, the loop
//    goes on) and submits it to a DynamicBatcher (cloud/dynamic_batcher.h). The queue is
//    bounded (`max_queue`) and, with `max_queue_wait_us`, admits by estimated queueing time:
//    beyond either the request is answered `overloaded` at once. Idle sessions are expired
//    about once a second.
//  - One compute thread takes requests one at a time, in arrival order, and hands them to
//    LmTailService. A request whose deadline (`deadline_ms` after arrival) passed while it
//    waited gets `deadlineExceeded` and is not computed. Replies go back through the
//    RouterService (cloud/router_service.h), whose loop the socket thread runs.
// Requests are not batched across sessions: each carries its own session's KV cache and
// length, and one worker in arrival order keeps every session's requests in sequence. A
// session whose request was refused or expired loses nothing: the cloud's cache stays where
// it was and the edge re-sends from there (LmRouter), or gets `resync`.
// Run stops accepting when asked to stop, then drains: every accepted request is answered.
//
// Metrics (common/metrics.h, component "cloud"): replies by outcome (ok, also for resync
// replies; overloaded; rejected for undecodable or invalid requests and those past their
// deadline; error when the model failed), wire bytes, queue and compute seconds per request,
// pending requests, and the peers seen in the last minute.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "cloud/dynamic_batcher.h"
#include "cloud/lm_service.h"
#include "cloud/router_service.h"
#include "common/clock.h"
#include "common/metrics.h"
#include "common/mutex.h"
#include "common/status.h"
#include "common/transport.h"

namespace cleave::cloud {

struct LmServerOptions {
  std::string listen = "tcp://127.0.0.1:5561";
  size_t max_queue = 1024;        // most accepted requests waiting; beyond: `overloaded`
  int64_t max_queue_wait_us = 0;  // estimated queueing bound (0 = none); see DynamicBatcher
  SocketOptions socket;
  std::shared_ptr<Metrics> metrics;  // null = a private registry nobody exports
  // Time for queueing and deadlines; null = SystemClock(). Must outlive the server.
  const Clock* clock = nullptr;
  // Test hook: runs on the compute thread before each request is computed.
  std::function<void()> before_compute;
};

struct LmServerStats {
  uint64_t received = 0, malformed = 0, undeliverable = 0;
  uint64_t overloaded = 0, deadline_exceeded = 0;
};

class LmServer {
 public:
  // Binds `options.listen`. InvalidArgument for bad queue options.
  static Result<std::unique_ptr<LmServer>> Create(TransportContext& context,
                                                  LmServerOptions options,
                                                  std::unique_ptr<LmTailService> service);
  ~LmServer();
  LmServer(const LmServer&) = delete;
  LmServer& operator=(const LmServer&) = delete;

  const std::string& endpoint() const { return router_->endpoint(); }
  // LmTailService::WarmUp; call before Run, never concurrently with it.
  Status WarmUp() EXCLUDES(service_mu_);
  // Serves until `should_stop()` is true (checked at least every 100 ms), then answers every
  // accepted request. Call once.
  Status Run(const std::function<bool()>& should_stop) EXCLUDES(service_mu_);
  // Read only from the socket thread, or after Run returned.
  const LmServerStats& stats() const { return stats_; }
  // Not while Run is serving (the compute thread owns the service then). Unchecked by the lock
  // analysis: that contract, not service_mu_, makes the returned reference safe to read.
  const LmTailService& service() const NO_THREAD_SAFETY_ANALYSIS { return *service_; }

 private:
  struct Job;
  using Batcher = DynamicBatcher<Job>;

  LmServer(LmServerOptions options, std::unique_ptr<LmTailService> service);
  // Socket thread.
  void Admit(InboundMessage& message, int64_t received_us);
  void ReplyNow(const std::string& peer, uint64_t request_id, lm_wire::LmStatus status,
                const std::string& error, Outcome outcome);
  void ExpireIdleSessions() EXCLUDES(service_mu_);
  void PublishStats();
  // Compute thread.
  void Compute(std::vector<Job>& jobs) EXCLUDES(service_mu_);
  void Reject(Rejection why, Job& job);

  LmServerOptions options_;
  const Clock& clock_;
  std::shared_ptr<Metrics> metrics_;
  const ServiceMetrics* m_;
  Mutex service_mu_;  // Handle on the compute thread, ExpireIdle on the socket thread
  std::unique_ptr<LmTailService> service_ PT_GUARDED_BY(service_mu_);
  std::unique_ptr<RouterService> router_;  // the socket, the reply mailbox and the loop
  std::unique_ptr<Batcher> batcher_;       // stopped by ~LmServer before anything else goes
  LmServerStats stats_;
};

}  // namespace cleave::cloud
