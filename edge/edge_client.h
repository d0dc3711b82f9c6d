// EdgeClient: what a local application uses to talk to cleave-edge (ClassifyRequest over a
// DEALER socket). Keeps a window of requests in flight and matches replies by request id.
// Used by `cleave demo` and the integration tests. One thread at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/edge_api.h"
#include "common/status.h"
#include "common/transport.h"

namespace cleave::edge {

struct ClassifyOutcome {
  bool answered = false;          // a reply arrived within the client's timeout
  edge_api::ClassifyReply reply;  // valid when answered
  double latency_ms = 0;          // send to reply, as the application sees it
};

class EdgeClient {
 public:
  // `context` must outlive the client.
  static Result<std::unique_ptr<EdgeClient>> Connect(TransportContext& context,
                                                     const std::string& endpoint);

  // Sends every request (their request_ids must be unique) keeping at most `window` in
  // flight, and waits for each reply up to `reply_timeout_ms` after it was sent. Outcomes
  // are in request order. `progress(done)` is called now and then.
  Result<std::vector<ClassifyOutcome>> Run(const std::vector<edge_api::ClassifyRequest>& requests,
                                           int window, int reply_timeout_ms,
                                           const std::function<void(size_t)>& progress = {});

  // Replies that matched no outstanding request (duplicates, unknown ids).
  uint64_t stray_replies() const { return stray_replies_; }

 private:
  explicit EdgeClient(std::unique_ptr<DealerClient> dealer) : dealer_(std::move(dealer)) {}
  std::unique_ptr<DealerClient> dealer_;
  uint64_t stray_replies_ = 0;
};

}  // namespace cleave::edge
