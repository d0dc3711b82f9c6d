// ZeroMQ transport: a ROUTER for services, a DEALER for edges. Bytes in, bytes out.
//
// The transport knows nothing about message contents: request ids, versions and replies all
// live inside our Cap'n Proto messages. What it does own is the ZeroMQ pitfalls listed in
// docs/design.md ("Pitfalls"): every socket sets LINGER and both high-water marks; the ROUTER sets
// ROUTER_MANDATORY (so an unknown peer or a full pipe is an error we count, never a silent
// drop) and MAXMSGSIZE; the DEALER sets IMMEDIATE (nothing queues on a dead link) and sends
// without blocking, with a timeout. Every zmq::error_t becomes a Status here; no exception
// leaves this module.
//
// Ownership and lifetime: a TransportContext owns the zmq context and must outlive every
// RouterServer/DealerClient made from it. Destroy (or reset) the sockets first, then the
// context: zmq_ctx_term waits for all sockets to close, so the reverse order hangs. Declaring
// the context before the sockets in the same scope gives the right order automatically.
//
// Threads: ZeroMQ sockets are not thread-safe. A RouterServer or DealerClient belongs to one
// thread at a time (it may be handed over with a full memory barrier, e.g. through a mutex or
// thread start). Other threads talk to it through an inproc socket or a queue. The counters
// are atomics and may be read from any thread (e.g. a metrics exporter).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <zmq.hpp>

#include "common/status.h"

namespace cleave {

struct SocketOptions {
  int linger_ms = 0;    // how long close() may wait to flush unsent messages
  int send_hwm = 1000;  // messages queued per peer before sends are refused
  int recv_hwm = 1000;  // messages queued per peer before zmq stops reading that peer
  // Inbound frames larger than this make zmq drop the offending connection (it never reaches
  // Receive). -1 = unlimited. Applied to both sides: a service is protected from clients and
  // an edge from a hostile or buggy service.
  int64_t max_message_bytes = 16 << 20;
  // Runs on the fresh socket after the options above and before bind/connect. This is where
  // CURVE keys, ZAP domains and similar must be set (they only apply to later connections).
  // Its Status is returned from Bind/Connect as is.
  std::function<Status(zmq::socket_t&)> configure;
};

// Owns one zmq::context_t with one I/O thread. Must outlive its sockets (see file comment).
// Constructing it throws zmq::error_t only if the OS cannot create the context's eventfd
// (process out of file descriptors).
class TransportContext {
 public:
  TransportContext();
  ~TransportContext();
  TransportContext(const TransportContext&) = delete;
  TransportContext& operator=(const TransportContext&) = delete;

  zmq::context_t& raw() { return context_; }

 private:
  zmq::context_t context_;
};

// One inbound message on a RouterServer.
struct Envelope {
  std::string peer;  // ROUTER routing id of the sender (opaque bytes); pass it back to Send
  std::string body;
  // Who sent it, as far as the transport can vouch: "curve:<z85 public key>" when CURVE
  // authenticated the peer (the ZAP handler's user id, common/curve.h), else
  // "conn:<hex routing id>", which names one connection (a reconnect gets a new one). Never
  // taken from the message body, so a peer cannot choose another peer's identity.
  std::string identity;
};

// The Envelope::identity of a message: `user_id` is the ZAP user id of the connection ("" or
// null when none) and `routing_id` the ROUTER routing id of the peer.
std::string TransportIdentity(const char* user_id, const std::string& routing_id);

// One inbound message on a RouterServer as ZeroMQ delivered it: the body frame is kept, not
// copied, so a serving loop can hand it to another thread (RouterServer::ReceiveBurst).
struct InboundMessage {
  std::string peer;     // ROUTER routing id of the sender (a few bytes); pass it back to Send
  zmq::message_t body;  // the message; read it through bytes()

  std::string_view bytes() const {
    return std::string_view(static_cast<const char*>(body.data()), body.size());
  }
  // The sender's Envelope::identity, from the connection's metadata the body frame carries.
  // Only while `body` holds the received frame (not after it was moved from).
  std::string identity();
};

// A bound ROUTER socket. Owned by one thread (see file comment).
class RouterServer {
 public:
  // Binds a ROUTER to `endpoint` ("tcp://127.0.0.1:0" picks an ephemeral port; also ipc://,
  // inproc://). Errors: InvalidArgument for a malformed endpoint or option, IoError when the
  // OS refuses (e.g. "cannot bind tcp://127.0.0.1:5555: Address already in use").
  static Result<std::unique_ptr<RouterServer>> Bind(TransportContext& context,
                                                    const std::string& endpoint,
                                                    const SocketOptions& options = {});
  ~RouterServer();
  RouterServer(const RouterServer&) = delete;
  RouterServer& operator=(const RouterServer&) = delete;

  // The resolved endpoint (ZMQ_LAST_ENDPOINT), e.g. "tcp://127.0.0.1:45123".
  const std::string& endpoint() const { return endpoint_; }

  // Waits up to timeout_ms (0 = poll, -1 = forever) for a message laid out as [peer, body],
  // with the sender's transport identity (see Envelope). nullopt on timeout, and also early when a
  // signal interrupts the wait (so a daemon loop can check ShutdownRequested()). Messages with any
  // other frame layout are discarded, counted in malformed_frames(), and the wait goes on. Error
  // only if the socket itself fails (e.g. the context is being terminated).
  Result<std::optional<Envelope>> Receive(int timeout_ms);

  // Takes up to `max` messages that are already waiting, without waiting, and appends them to
  // `out` (whose capacity the caller reuses from burst to burst); returns how many. The frames
  // are moved, not copied. Layouts other than [peer, body] are discarded and counted in
  // malformed_frames(), as by Receive. Error only if the socket itself fails.
  Result<size_t> ReceiveBurst(size_t max, std::vector<InboundMessage>* out);

  // Queues `body` for `peer` without blocking. Unavailable if the peer is unknown or gone
  // (counted in unroutable()); ResourceExhausted if that peer's pipe is at send_hwm (counted
  // in pipe_full()) - reply "overloaded" or drop it knowingly, the socket never does.
  Status Send(const std::string& peer, std::string_view body);
  // The same, handing `body` to ZeroMQ without a copy: it is empty afterwards if it was queued
  // and unchanged if not.
  Status Send(const std::string& peer, zmq::message_t& body);

  // For zmq::poll together with other sockets; do not change options or bind through it.
  zmq::socket_t& socket() { return socket_; }

  // Body bytes only (routing ids excluded) of messages received / queued.
  uint64_t bytes_received() const { return bytes_received_.load(std::memory_order_relaxed); }
  uint64_t bytes_sent() const { return bytes_sent_.load(std::memory_order_relaxed); }
  // Sends refused because the peer is unknown or disconnected (EHOSTUNREACH).
  uint64_t unroutable() const { return unroutable_.load(std::memory_order_relaxed); }
  // Sends refused because the peer's pipe is at the high-water mark (EAGAIN).
  uint64_t pipe_full() const { return pipe_full_.load(std::memory_order_relaxed); }
  // Inbound messages discarded because they were not exactly [peer, body].
  uint64_t malformed_frames() const { return malformed_frames_.load(std::memory_order_relaxed); }

 private:
  RouterServer(zmq::socket_t socket, std::string endpoint);
  // Sends the routing frame of a message to `peer`; false if its pipe is full.
  bool SendRoutingFrame(const std::string& peer);
  Status PipeFullMidMessage(const std::string& peer);
  Status SendFailed(const zmq::error_t& e, const std::string& peer);

  zmq::socket_t socket_;
  std::string endpoint_;
  std::atomic<uint64_t> bytes_received_{0};
  std::atomic<uint64_t> bytes_sent_{0};
  std::atomic<uint64_t> unroutable_{0};
  std::atomic<uint64_t> pipe_full_{0};
  std::atomic<uint64_t> malformed_frames_{0};
};

// A DEALER connected to one service endpoint. Owned by one thread (see file comment).
// ZeroMQ reconnects by itself after the link drops; messages are never queued while no
// connection is up (ZMQ_IMMEDIATE).
class DealerClient {
 public:
  // Starts connecting to `endpoint`; succeeds before the peer is reachable (connection is
  // asynchronous). InvalidArgument for a malformed endpoint or option.
  static Result<std::unique_ptr<DealerClient>> Connect(TransportContext& context,
                                                       const std::string& endpoint,
                                                       const SocketOptions& options = {});
  ~DealerClient();
  DealerClient(const DealerClient&) = delete;
  DealerClient& operator=(const DealerClient&) = delete;

  const std::string& endpoint() const { return endpoint_; }

  // Queues `body` as one frame, waiting at most timeout_ms (0 = try once, -1 = forever) for
  // room. Unavailable when no connection to a tcp/ipc peer is up (server down, unreachable,
  // still connecting); DeadlineExceeded when connected but the queue stayed at send_hwm (the
  // server is not keeping up). Queued is not delivered: a link that drops later loses it.
  Status Send(std::string_view body, int timeout_ms);

  // Waits up to timeout_ms (0 = poll, -1 = forever) for a one-frame message. nullopt on
  // timeout or when a signal interrupts the wait. Multi-frame messages are discarded and
  // counted in malformed_frames().
  Result<std::optional<std::string>> Receive(int timeout_ms);

  // Takes up to `max` one-frame messages that are already waiting, without waiting, and
  // appends them to `out` as ZeroMQ delivered them (no copy); returns how many. Multi-frame
  // messages are discarded and counted as by Receive.
  Result<size_t> ReceiveBurst(size_t max, std::vector<zmq::message_t>* out);

  // Whether a tcp/ipc connection has completed its ZMTP handshake and not dropped since
  // (from the socket monitor). Always true for inproc, which has no link to lose.
  bool connected();

  zmq::socket_t& socket() { return socket_; }

  // Payload bytes of messages queued / received.
  uint64_t bytes_sent() const { return bytes_sent_.load(std::memory_order_relaxed); }
  uint64_t bytes_received() const { return bytes_received_.load(std::memory_order_relaxed); }
  // Payload plus ZMTP 3.x frame headers of every queued message (see WireBytes); what the
  // link carries without CURVE, which adds its own per-message overhead.
  uint64_t wire_bytes_sent() const { return wire_bytes_sent_.load(std::memory_order_relaxed); }
  uint64_t malformed_frames() const { return malformed_frames_.load(std::memory_order_relaxed); }

 private:
  DealerClient(zmq::socket_t socket, zmq::socket_t monitor, std::string endpoint);
  // Applies queued monitor events to link_up_. Never blocks.
  void DrainMonitorEvents();

  zmq::socket_t socket_;
  zmq::socket_t monitor_;  // PAIR receiving this socket's connection events; empty for inproc
  std::string endpoint_;
  int send_hwm_ = 0;
  bool link_up_ = false;
  std::atomic<uint64_t> bytes_sent_{0};
  std::atomic<uint64_t> bytes_received_{0};
  std::atomic<uint64_t> wire_bytes_sent_{0};
  std::atomic<uint64_t> malformed_frames_{0};
};

// Bytes one ZMTP 3.x frame of `payload_bytes` occupies on TCP: payload + 2 for a short frame
// (flags + 1-byte size, payload <= 255) or + 9 for a long frame (flags + 8-byte size).
uint64_t WireBytes(uint64_t payload_bytes);

// Converts a ZeroMQ failure into a Status whose message reads "<context>: <zmq reason>".
// EHOSTUNREACH/ETERM -> Unavailable, EAGAIN/EMFILE -> ResourceExhausted, EINVAL and
// unsupported protocols/addresses -> InvalidArgument, everything else -> IoError.
Status ZmqErrorToStatus(const zmq::error_t& error, const std::string& context);

}  // namespace cleave
