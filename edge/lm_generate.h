// `cleave-edge generate`: text generation with hard-token routing (edge/lm_router.h) from
// an lm-split bundle, streaming each byte as it is produced. The cloud link is a ZeroMQ
// DEALER to cleave-cloud serving the same bundle; without one (or while it is unreachable)
// generation continues on the edge alone and the run is reported degraded.
#pragma once

#include <CLI/CLI.hpp>

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

// Adds the `generate` subcommand to cleave-edge's `app`; returns it so main can tell
// whether it ran (its callback does the work and throws CLI::RuntimeError(1) on failure).
CLI::App* AddGenerateCommand(CLI::App& app);

}  // namespace cleave::edge
