// The edge's link to the cloud's language-model tail over ZeroMQ (hard-token routing,
// edge/lm_router.h): one LmRequest per hard token on a DEALER to cleave-cloud.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "common/transport.h"
#include "edge/lm_router.h"

namespace cleave::edge {

// LmCloudLink over a DealerClient: one request, then replies are read until the one with
// the same request id arrives (late replies to timed-out requests are skipped) or the
// timeout passes. After a failure the link reports Unavailable at once for `backoff`, so
// a dead cloud costs one timeout, not one per token.
class ZmqLmLink : public LmCloudLink {
 public:
  static Result<std::unique_ptr<ZmqLmLink>> Connect(TransportContext& context,
                                                    const std::string& endpoint, int timeout_ms,
                                                    std::chrono::milliseconds backoff);
  Result<lm_wire::LmReply> Call(const lm_wire::LmRequest& request) override;
  int64_t bytes_sent() const { return static_cast<int64_t>(client_->bytes_sent()); }
  // bytes_sent plus the ZMTP frame headers: what the link carries (without CURVE).
  int64_t wire_bytes_sent() const { return static_cast<int64_t>(client_->wire_bytes_sent()); }

 private:
  ZmqLmLink(std::unique_ptr<DealerClient> client, int timeout_ms, std::chrono::milliseconds backoff)
      : client_(std::move(client)), timeout_ms_(timeout_ms), backoff_(backoff) {}
  std::unique_ptr<DealerClient> client_;
  int timeout_ms_;
  std::chrono::milliseconds backoff_;
  std::chrono::steady_clock::time_point down_until_{};
};

}  // namespace cleave::edge
