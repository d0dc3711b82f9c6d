// OffloadClient: a synchronous edge -> cloud exchange for callers that process a batch at a
// time (the one-shot `cleave-edge classify` mode and `cleave bench split`). The daemon's
// event loop (EdgeServer) does the same asynchronously.
//
// Owns one DEALER socket: one thread at a time. Replies are matched by request id; replies
// for ids not (or no longer) awaited are counted and dropped.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/inference_wire.h"
#include "common/status.h"
#include "common/transport.h"

namespace cleave::edge {

class OffloadClient {
 public:
  // Connects to the cloud tail at `endpoint`. `context` must outlive the client.
  static Result<std::unique_ptr<OffloadClient>> Connect(TransportContext& context,
                                                        const std::string& endpoint,
                                                        const SocketOptions& options = {});

  // Sends every (request id, encoded InferRequest) and waits until all are answered or
  // `deadline_ms` passes. Returns the replies received, by request id; a missing id means
  // the cloud did not answer in time (the caller degrades). Unavailable when nothing could be
  // sent at all.
  Result<std::map<uint64_t, wire::InferReply>> Exchange(
      const std::vector<std::pair<uint64_t, std::string>>& requests, int deadline_ms);

  // Bytes put on the wire so far (payload + ZMTP framing).
  uint64_t wire_bytes_sent() const { return dealer_->wire_bytes_sent(); }
  uint64_t stray_replies() const { return stray_replies_; }

 private:
  explicit OffloadClient(std::unique_ptr<DealerClient> dealer) : dealer_(std::move(dealer)) {}
  std::unique_ptr<DealerClient> dealer_;
  uint64_t stray_replies_ = 0;
};

}  // namespace cleave::edge
