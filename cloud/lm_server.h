// LmServer: the cleave-cloud serving loop for an lm-split bundle. One thread owns a ROUTER
// socket; each request is decoded (hostile input: a malformed one gets an error reply
// naming the problem, the loop goes on), handled by LmTailService and answered. Idle
// sessions are expired about once a second.
//
// Metrics (common/metrics.h, component "cloud"): replies by outcome (ok, also for resync
// replies; rejected for undecodable or invalid requests; error when the model failed), wire
// bytes, compute seconds per request, and the peers seen in the last minute. Requests are
// served one at a time: there is no queue or batch to report.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "cloud/lm_service.h"
#include "common/metrics.h"
#include "common/status.h"
#include "common/transport.h"

namespace cleave::cloud {

struct LmServerOptions {
  std::string listen = "tcp://127.0.0.1:5561";
  SocketOptions socket;
  std::shared_ptr<Metrics> metrics;  // null = a private registry nobody exports
};

struct LmServerStats {
  uint64_t received = 0, malformed = 0, undeliverable = 0;
};

class LmServer {
 public:
  static Result<std::unique_ptr<LmServer>> Create(TransportContext& context,
                                                  LmServerOptions options,
                                                  std::unique_ptr<LmTailService> service);
  const std::string& endpoint() const { return router_->endpoint(); }
  // LmTailService::WarmUp; call before Run, never concurrently with it.
  Status WarmUp() { return service_->WarmUp(); }
  // Serves until `should_stop()` is true (checked at least every 100 ms).
  Status Run(const std::function<bool()>& should_stop);
  const LmServerStats& stats() const { return stats_; }
  const LmTailService& service() const { return *service_; }

 private:
  LmServer(std::unique_ptr<RouterServer> router, std::unique_ptr<LmTailService> service,
           std::shared_ptr<Metrics> metrics);
  void Reply(const std::string& peer, const lm_wire::LmReply& reply, Outcome outcome);

  std::unique_ptr<RouterServer> router_;
  std::unique_ptr<LmTailService> service_;
  LmServerStats stats_;
  std::shared_ptr<Metrics> metrics_;
  const ServiceMetrics* m_;
  prometheus::Gauge* connected_;
  RecentPeers peers_;
};

}  // namespace cleave::cloud
