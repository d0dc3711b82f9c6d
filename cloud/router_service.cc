#include "cloud/router_service.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include "common/logging.h"

namespace cleave::cloud {
namespace {

// Most messages taken from the ROUTER per turn.
constexpr int kMaxReceivesPerTurn = 256;
// They are taken and admitted in bursts of this many; posted replies go out between bursts,
// so a computed answer never waits behind the admission (or refusal) of a flood: at 70k
// requests/s, 256 take ~1 ms.
constexpr size_t kDeliverEveryReceives = 16;
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

void RouterService::SendCounted(RouterReply& reply, SendTally& tally) {
  switch (reply.kind) {
    case ReplyKind::kOk: ++stats_.replied_ok; break;
    case ReplyKind::kDeadlineExceeded: ++stats_.replied_deadline; break;
    case ReplyKind::kOverloaded: ++stats_.replied_overloaded; break;
    default: ++stats_.replied_error; break;
  }
  ++tally.outcomes[static_cast<size_t>(reply.outcome)];
  const size_t size = reply.bytes.size();
  Status sent = router_->Send(reply.peer, reply.bytes);
  if (!sent.ok()) {
    ++stats_.undeliverable;
    GetLogger("cloud")->debug("reply {} not delivered: {}", reply.request_id, sent.ToString());
  } else {
    tally.wire_bytes += WireBytes(size);
  }
}

void RouterService::Fold(const SendTally& tally) {
  for (size_t i = 0; i < tally.outcomes.size(); ++i) {
    if (tally.outcomes[i] > 0) {
      m_.Count(static_cast<Outcome>(i), static_cast<double>(tally.outcomes[i]));
    }
  }
  if (tally.wire_bytes > 0) {
    m_.wire_bytes_sent->Increment(static_cast<double>(tally.wire_bytes));
  }
}

void RouterService::Send(RouterReply& reply) {
  SendTally tally;
  SendCounted(reply, tally);
  Fold(tally);
}

void RouterService::DeliverReplies() {
  mailbox_.TakeAll(&outgoing_);
  if (outgoing_.empty()) return;
  SendTally tally;
  for (RouterReply& reply : outgoing_) SendCounted(reply, tally);
  Fold(tally);
  in_flight_ -= std::min<uint64_t>(in_flight_, outgoing_.size());
  outgoing_.clear();
  m_.pending_requests->Set(static_cast<double>(in_flight_));
}

void RouterService::ReceiveWaiting(const Hooks& hooks) {
  for (int taken = 0; taken < kMaxReceivesPerTurn;) {
    burst_.clear();
    Result<size_t> got = router_->ReceiveBurst(kDeliverEveryReceives, &burst_);
    if (!got.ok()) {
      GetLogger("cloud")->warn("receive failed: {}", got.status().ToString());
      return;
    }
    if (*got == 0) return;
    if (taken > 0 && mailbox_.HasItems()) DeliverReplies();
    taken += static_cast<int>(*got);
    stats_.received += *got;
    const int64_t received = clock_.NowMicros();
    uint64_t wire_bytes = 0;
    for (const InboundMessage& message : burst_) {
      wire_bytes += WireBytes(message.body.size());
      peers_.Seen(message.peer, received);
    }
    m_.wire_bytes_received->Increment(static_cast<double>(wire_bytes));
    hooks.admit(burst_, received);
  }
  burst_.clear();
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
