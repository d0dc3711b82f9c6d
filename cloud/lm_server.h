// LmServer: the cleave-cloud serving loop for an lm-split bundle. One thread owns a ROUTER
// socket; each request is decoded (hostile input: a malformed one gets an error reply
// naming the problem, the loop goes on), handled by LmTailService and answered. Idle
// sessions are expired about once a second.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "cloud/lm_service.h"
#include "common/status.h"
#include "common/transport.h"

namespace cleave::cloud {

struct LmServerOptions {
  std::string listen = "tcp://127.0.0.1:5561";
  SocketOptions socket;
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
  // Serves until `should_stop()` is true (checked at least every 100 ms).
  Status Run(const std::function<bool()>& should_stop);
  const LmServerStats& stats() const { return stats_; }
  const LmTailService& service() const { return *service_; }

 private:
  LmServer(std::unique_ptr<RouterServer> router, std::unique_ptr<LmTailService> service)
      : router_(std::move(router)), service_(std::move(service)) {}
  void Reply(const std::string& peer, const lm_wire::LmReply& reply);

  std::unique_ptr<RouterServer> router_;
  std::unique_ptr<LmTailService> service_;
  LmServerStats stats_;
};

}  // namespace cleave::cloud
