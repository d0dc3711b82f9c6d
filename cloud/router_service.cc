#include "cloud/router_service.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <optional>

#include "common/logging.h"

namespace cleave::cloud {
namespace {

// Most messages taken from the ROUTER per turn.
constexpr int kMaxReceivesPerTurn = 256;
// While taking them, posted replies go out after every this many, so a computed answer never
// waits behind the admission (or refusal) of a flood: at 70k requests/s, 256 take ~1 ms.
constexpr int kDeliverEveryReceives = 16;
// How long one wait for a request or a reply may take; bounds how late a stop is noticed.
constexpr int kWaitMs = 100;

}  // namespace

RouterService::RouterService(const Clock& clock, Metrics& metrics, const std::string& component)
    : clock_(clock), m_(metrics.Service(component)), connected_(metrics.ConnectedEdges()) {}

Result<std::unique_ptr<RouterService>> RouterService::Bind(TransportContext& context,
                                                           const std::string& listen,
                                                           const SocketOptions& socket,
                                                           const Clock& clock, Metrics& metrics,
                                                           const std::string& component) {
  std::unique_ptr<RouterService> service(new RouterService(clock, metrics, component));
  if (service->mailbox_.fd() < 0) {
    return Status::IoError(std::string("cannot create the reply eventfd: ") + std::strerror(errno));
  }
  CLEAVE_ASSIGN_OR_RETURN(service->router_, RouterServer::Bind(context, listen, socket));
  return service;
}

void RouterService::Send(const RouterReply& reply) {
  switch (reply.kind) {
    case ReplyKind::kOk: ++stats_.replied_ok; break;
    case ReplyKind::kDeadlineExceeded: ++stats_.replied_deadline; break;
    case ReplyKind::kOverloaded: ++stats_.replied_overloaded; break;
    default: ++stats_.replied_error; break;
  }
  m_.Count(reply.outcome);
  Status sent = router_->Send(reply.peer, reply.bytes);
  if (!sent.ok()) {
    ++stats_.undeliverable;
    GetLogger("cloud")->debug("reply {} not delivered: {}", reply.request_id, sent.ToString());
  } else {
    m_.wire_bytes_sent->Increment(static_cast<double>(WireBytes(reply.bytes.size())));
  }
}

void RouterService::DeliverReplies() {
  std::deque<RouterReply> replies = mailbox_.TakeAll();
  for (const RouterReply& reply : replies) Send(reply);
  in_flight_ -= std::min<uint64_t>(in_flight_, replies.size());
  m_.pending_requests->Set(static_cast<double>(in_flight_));
}

void RouterService::ReceiveWaiting(const Hooks& hooks) {
  for (int i = 0; i < kMaxReceivesPerTurn; ++i) {
    Result<std::optional<Envelope>> env = router_->Receive(0);
    if (!env.ok()) {
      GetLogger("cloud")->warn("receive failed: {}", env.status().ToString());
      return;
    }
    if (!env->has_value()) return;
    if (i > 0 && i % kDeliverEveryReceives == 0 && mailbox_.HasItems()) DeliverReplies();
    ++stats_.received;
    const int64_t received = clock_.NowMicros();
    m_.wire_bytes_received->Increment(static_cast<double>(WireBytes((*env)->body.size())));
    peers_.Seen((*env)->peer, received);
    hooks.admit(std::move(**env), received);
  }
}

Status RouterService::Serve(const std::function<bool()>& should_stop, const Hooks& hooks) {
  int64_t last_sweep = clock_.NowMicros();
  while (!should_stop()) {
    if (const int64_t now = clock_.NowMicros(); now - last_sweep > 1'000'000) {
      connected_.Set(static_cast<double>(peers_.Expire(now)));
      if (hooks.sweep) hooks.sweep(now);
      last_sweep = now;
    }
    Result<ReadySockets> ready = WaitForRequestsOrReplies(*router_, mailbox_.fd(), kWaitMs);
    if (!ready.ok()) return ready.status();
    if (ready->replies) DeliverReplies();
    if (ready->requests) ReceiveWaiting(hooks);
    m_.pending_requests->Set(static_cast<double>(in_flight_));
    if (hooks.after_turn) hooks.after_turn();
  }
  return Status::Ok();
}

}  // namespace cleave::cloud
