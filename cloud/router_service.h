// RouterService: the socket-thread half that every cleave-cloud server shares (TailServer for
// vision tails, LmServer for lm-split bundles): one ROUTER socket, the ReplyMailbox its
// compute threads post encoded replies to (cloud/reply_mailbox.h), and the serving loop.
//
// The loop (Serve), until `should_stop()`:
//  - about once a second: forget peers not seen for a minute (cleave_connected_edges), then
//    the owner's sweep (e.g. expiring idle LM sessions);
//  - wait up to 100 ms for a request or a posted reply;
//  - send every posted reply, in one burst;
//  - take up to 256 waiting requests in bursts of up to 16, sending the replies posted
//    meanwhile between bursts (so a computed reply never waits behind a flood), and hand each
//    burst to the owner's admit callback, which looks at each request and either queues it
//    (then calls Accepted; its reply comes back through Post) or answers at once (Send);
//  - the owner's after-turn callback.
// The messages move from the socket to the owner without a copy (InboundMessage keeps ZeroMQ's
// frame), and the owner's replies come back as ZeroMQ messages that are sent without one.
// What the protocol is - decoding, validation, what a reply says - stays with the owner;
// replies arrive here encoded, tagged with what they say (ReplyKind) for the counters.
//
// Metrics (common/metrics.h, the component given to Bind): wire bytes of every message
// received and every reply actually queued, every reply counted by outcome, pending
// requests (accepted, reply not sent yet) and cleave_connected_edges. Replies the ROUTER
// cannot route (ROUTER_MANDATORY: peer gone or its pipe full) are counted in
// stats().undeliverable and logged at debug level.
//
// Threads: Post from any thread. Everything else on the socket thread (the caller of Serve),
// or by the owner before Serve starts or after it returned.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cloud/reply_mailbox.h"
#include "common/clock.h"
#include "common/metrics.h"
#include "common/status.h"
#include "common/transport.h"

namespace cleave::cloud {

// What a reply says, for the counters: the statuses InferReply and LmReply share (an LM
// `resync` counts as ok: the protocol working as designed).
enum class ReplyKind : uint8_t { kOk, kError, kOverloaded, kDeadlineExceeded };

// An encoded reply on its way to a peer.
struct RouterReply {
  std::string peer;         // routing id the request came from
  zmq::message_t bytes;     // handed to ZeroMQ as is (no copy on the socket thread)
  uint64_t request_id = 0;  // for logs
  ReplyKind kind = ReplyKind::kOk;
  Outcome outcome = Outcome::kOk;  // cleave_requests_total{outcome}

  // `bytes` copied into a fresh message.
  static RouterReply Of(std::string peer, std::string_view bytes, uint64_t request_id,
                        ReplyKind kind, Outcome outcome) {
    return RouterReply{std::move(peer), zmq::message_t(bytes.data(), bytes.size()), request_id,
                       kind, outcome};
  }
};

struct RouterServiceStats {
  uint64_t received = 0;  // messages handed to admit
  uint64_t replied_ok = 0;
  uint64_t replied_error = 0;
  uint64_t replied_overloaded = 0;
  uint64_t replied_deadline = 0;
  uint64_t undeliverable = 0;  // replies the ROUTER could not route (peer gone)
};

class RouterService {
 public:
  // What the owner does inside the loop; `admit` is required, the others optional.
  struct Hooks {
    // A burst of 1..16 requests in arrival order, taken from the socket at `received_us` (the
    // clock given to Bind). The callback may move the messages' frames away; the burst is
    // cleared after it returns.
    std::function<void(std::vector<InboundMessage>& burst, int64_t received_us)> admit;
    // About once a second, after the peers are swept.
    std::function<void(int64_t now_us)> sweep;
    // After every turn of the loop (e.g. to publish stats to the socket thread's readers).
    std::function<void()> after_turn;
  };

  // Binds a ROUTER to `listen` with `socket` options. `context`, `clock` and `metrics` must
  // outlive the service; the series are those of `component`. IoError when the reply
  // eventfd cannot be created; the errors of RouterServer::Bind.
  static Result<std::unique_ptr<RouterService>> Bind(TransportContext& context,
                                                     const std::string& listen,
                                                     const SocketOptions& socket,
                                                     const Clock& clock, Metrics& metrics,
                                                     const std::string& component);
  RouterService(const RouterService&) = delete;
  RouterService& operator=(const RouterService&) = delete;

  // The resolved endpoint ("tcp://127.0.0.1:45123").
  const std::string& endpoint() const { return router_->endpoint(); }

  // Queues `reply` for the socket thread, which sends it on its next turn. Any thread.
  void Post(RouterReply reply) { mailbox_.Post(std::move(reply)); }
  // Queues every reply of `replies` (moved from, then cleared) with one hand-over: the replies
  // of a batch. Any thread.
  void PostAll(std::vector<RouterReply>& replies) { mailbox_.PostAll(replies); }
  // Sends `reply` now and counts it (socket thread): for answers decided while admitting.
  void Send(RouterReply& reply);
  // A request was queued by the owner; its reply will come through Post.
  void Accepted() { ++in_flight_; }

  // Runs the loop above until `should_stop()` is true (checked at least every 100 ms) or the
  // transport context is terminated (Unavailable). Replies posted after it returned wait for
  // DeliverReplies. Call from one thread at a time.
  Status Serve(const std::function<bool()>& should_stop, const Hooks& hooks);
  // Sends every posted reply now (socket thread): the drain once the owner's workers stopped.
  void DeliverReplies();

  const RouterServiceStats& stats() const { return stats_; }
  // Requests accepted whose reply has not been sent yet.
  uint64_t in_flight() const { return in_flight_; }

 private:
  // What a burst of sends adds to the counters, folded into them once.
  struct SendTally {
    std::array<uint64_t, kOutcomeCount> outcomes{};
    uint64_t wire_bytes = 0;
  };

  RouterService(const Clock& clock, Metrics& metrics, const std::string& component);
  void ReceiveWaiting(const Hooks& hooks);
  void SendCounted(RouterReply& reply, SendTally& tally);
  void Fold(const SendTally& tally);

  const Clock& clock_;
  const ServiceMetrics& m_;
  prometheus::Gauge& connected_;
  std::unique_ptr<RouterServer> router_;
  ReplyMailbox<RouterReply> mailbox_;
  RecentPeers peers_;
  RouterServiceStats stats_;
  uint64_t in_flight_ = 0;
  std::vector<RouterReply> outgoing_;  // DeliverReplies' buffer, reused
  std::vector<InboundMessage> burst_;  // ReceiveWaiting's buffer, reused
};

}  // namespace cleave::cloud
