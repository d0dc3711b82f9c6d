#include "common/transport.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

namespace cleave {
namespace {

// A wait budget: timeout_ms < 0 never expires, 0 expires at once.
class Deadline {
 public:
  explicit Deadline(int timeout_ms)
      : forever_(timeout_ms < 0),
        end_(std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms)) {}

  // Milliseconds left, rounded up so a sub-millisecond remainder still waits; -1 = forever.
  int RemainingMs() const {
    if (forever_) return -1;
    const auto left = end_ - std::chrono::steady_clock::now();
    if (left <= std::chrono::steady_clock::duration::zero()) return 0;
    return static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(left).count());
  }

 private:
  bool forever_;
  std::chrono::steady_clock::time_point end_;
};

enum class PollOutcome { kReady, kTimeout, kInterrupted };

// zmq_poll on one socket; EINTR is an outcome (daemons wake up to check for shutdown), any
// other failure throws zmq::error_t for the caller's conversion.
PollOutcome PollSocket(zmq::socket_t& socket, short events, int timeout_ms) {
  zmq_pollitem_t item{socket.handle(), 0, events, 0};
  const int rc = zmq_poll(&item, 1, timeout_ms);
  if (rc < 0) {
    if (zmq_errno() == EINTR) return PollOutcome::kInterrupted;
    throw zmq::error_t();
  }
  return rc > 0 ? PollOutcome::kReady : PollOutcome::kTimeout;
}

// Bytes as lower-case hex, two digits a byte.
std::string Hex(const std::string& bytes) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) {
    const auto byte = static_cast<unsigned char>(c);
    out.push_back(kHex[byte >> 4]);
    out.push_back(kHex[byte & 0xf]);
  }
  return out;
}

// Routing ids are binary; show them as hex in messages (capped: they are at most 255 bytes).
std::string PeerForHumans(const std::string& peer) {
  const size_t shown = peer.size() < 16 ? peer.size() : 16;
  return "0x" + Hex(peer.substr(0, shown)) + (shown < peer.size() ? "..." : "");
}

Status ValidateOptions(const SocketOptions& options) {
  if (options.linger_ms < -1) {
    return Status::InvalidArgument("linger_ms must be >= -1 (got " +
                                   std::to_string(options.linger_ms) + ")");
  }
  if (options.send_hwm < 0 || options.recv_hwm < 0) {
    return Status::InvalidArgument("send_hwm and recv_hwm must be >= 0 (0 = unlimited)");
  }
  if (options.max_message_bytes < -1) {
    return Status::InvalidArgument("max_message_bytes must be >= -1 (-1 = unlimited)");
  }
  return Status::Ok();
}

// Options shared by both socket kinds, then the caller's hook.
Status ApplyCommonOptions(zmq::socket_t& socket, const SocketOptions& options) {
  try {
    socket.set(zmq::sockopt::linger, options.linger_ms);
    socket.set(zmq::sockopt::sndhwm, options.send_hwm);
    socket.set(zmq::sockopt::rcvhwm, options.recv_hwm);
    socket.set(zmq::sockopt::maxmsgsize, options.max_message_bytes);
  } catch (const zmq::error_t& e) {
    return ZmqErrorToStatus(e, "cannot set socket options");
  }
  if (options.configure) {
    CLEAVE_RETURN_IF_ERROR(options.configure(socket));
  }
  return Status::Ok();
}

bool IsInproc(const std::string& endpoint) { return endpoint.rfind("inproc://", 0) == 0; }

}  // namespace

std::string TransportIdentity(const char* user_id, const std::string& routing_id) {
  if (user_id != nullptr && user_id[0] != '\0') return std::string("curve:") + user_id;
  return "conn:" + Hex(routing_id);
}

uint64_t WireBytes(uint64_t payload_bytes) {
  return payload_bytes + (payload_bytes <= 255 ? 2 : 9);
}

Status ZmqErrorToStatus(const zmq::error_t& error, const std::string& context) {
  const std::string message = context + ": " + error.what();
  switch (error.num()) {
    case EHOSTUNREACH:
    case ETERM: return Status::Unavailable(message);
    case EAGAIN:
    case EMFILE: return Status::ResourceExhausted(message);
    case EINVAL:
    case EPROTONOSUPPORT:
    case ENOCOMPATPROTO:
    case EADDRNOTAVAIL:
    case ENODEV: return Status::InvalidArgument(message);
    default: return Status::IoError(message);
  }
}

TransportContext::TransportContext() : context_(/*io_threads=*/1) {}

TransportContext::~TransportContext() {
  // Blocks until every socket of this context is closed: they must be destroyed first.
  context_.close();
}

// --- RouterServer ---

RouterServer::RouterServer(zmq::socket_t socket, std::string endpoint)
    : socket_(std::move(socket)), endpoint_(std::move(endpoint)) {}

RouterServer::~RouterServer() { socket_.close(); }

Result<std::unique_ptr<RouterServer>> RouterServer::Bind(TransportContext& context,
                                                         const std::string& endpoint,
                                                         const SocketOptions& options) {
  CLEAVE_RETURN_IF_ERROR(ValidateOptions(options));
  zmq::socket_t socket;
  try {
    socket = zmq::socket_t(context.raw(), zmq::socket_type::router);
    socket.set(zmq::sockopt::router_mandatory, true);
  } catch (const zmq::error_t& e) {
    return ZmqErrorToStatus(e, "cannot create ROUTER socket for " + endpoint);
  }
  CLEAVE_RETURN_IF_ERROR(ApplyCommonOptions(socket, options).WithContext("bind " + endpoint));
  std::string resolved;
  try {
    socket.bind(endpoint);
    resolved = socket.get(zmq::sockopt::last_endpoint);
  } catch (const zmq::error_t& e) {
    return ZmqErrorToStatus(e, "cannot bind " + endpoint);
  }
  return std::unique_ptr<RouterServer>(new RouterServer(std::move(socket), std::move(resolved)));
}

Result<std::optional<Envelope>> RouterServer::Receive(int timeout_ms) {
  const Deadline deadline(timeout_ms);
  try {
    while (true) {
      zmq::message_t frame;
      while (socket_.recv(frame, zmq::recv_flags::dontwait)) {
        // The frames of one message arrive together, so the rest never needs a wait.
        Envelope envelope;
        envelope.peer = frame.to_string();
        int frames = 1;
        bool more = frame.more();
        while (more) {
          zmq::message_t part;
          if (!socket_.recv(part, zmq::recv_flags::dontwait)) break;
          if (++frames == 2) {
            envelope.body = part.to_string();
            // Connection metadata; only a ZAP handler sets User-Id (null for inproc peers).
            envelope.identity =
                TransportIdentity(zmq_msg_gets(part.handle(), "User-Id"), envelope.peer);
          }
          more = part.more();
        }
        if (frames == 2 && !more) {
          bytes_received_.fetch_add(envelope.body.size(), std::memory_order_relaxed);
          return std::optional<Envelope>(std::move(envelope));
        }
        malformed_frames_.fetch_add(1, std::memory_order_relaxed);
      }
      const int remaining = deadline.RemainingMs();
      if (remaining == 0) return std::optional<Envelope>();
      if (PollSocket(socket_, ZMQ_POLLIN, remaining) != PollOutcome::kReady) {
        return std::optional<Envelope>();
      }
    }
  } catch (const zmq::error_t& e) {
    return ZmqErrorToStatus(e, "receive on " + endpoint_);
  }
}

Result<size_t> RouterServer::ReceiveBurst(size_t max, std::vector<InboundMessage>* out) {
  size_t taken = 0;
  uint64_t bytes = 0;
  try {
    while (taken < max) {
      zmq::message_t peer;
      if (!socket_.recv(peer, zmq::recv_flags::dontwait)) break;
      // The frames of one message arrive together, so the rest never needs a wait.
      zmq::message_t body;
      bool more = peer.more();
      int frames = 1;
      while (more) {
        zmq::message_t part;
        if (!socket_.recv(part, zmq::recv_flags::dontwait)) break;
        more = part.more();
        if (++frames == 2) body = std::move(part);
      }
      if (frames != 2 || more) {
        malformed_frames_.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      bytes += body.size();
      out->push_back(InboundMessage{peer.to_string(), std::move(body)});
      ++taken;
    }
  } catch (const zmq::error_t& e) {
    bytes_received_.fetch_add(bytes, std::memory_order_relaxed);
    return ZmqErrorToStatus(e, "receive on " + endpoint_);
  }
  bytes_received_.fetch_add(bytes, std::memory_order_relaxed);
  return taken;
}

std::string InboundMessage::identity() {
  // Connection metadata; only a ZAP handler sets User-Id (null for inproc peers).
  return TransportIdentity(
      body.data() != nullptr ? zmq_msg_gets(body.handle(), "User-Id") : nullptr, peer);
}

bool RouterServer::SendRoutingFrame(const std::string& peer) {
  if (socket_.send(zmq::const_buffer(peer.data(), peer.size()),
                   zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
    return true;
  }
  pipe_full_.fetch_add(1, std::memory_order_relaxed);
  return false;
}

Status RouterServer::PipeFullMidMessage(const std::string& peer) {
  pipe_full_.fetch_add(1, std::memory_order_relaxed);
  return Status::ResourceExhausted("send queue to peer " + PeerForHumans(peer) + " on " +
                                   endpoint_ + " filled mid-message");
}

Status RouterServer::SendFailed(const zmq::error_t& e, const std::string& peer) {
  if (e.num() == EHOSTUNREACH) {
    unroutable_.fetch_add(1, std::memory_order_relaxed);
    return Status::Unavailable("cannot reply to peer " + PeerForHumans(peer) + " on " + endpoint_ +
                               ": unknown or disconnected peer");
  }
  return ZmqErrorToStatus(e, "send on " + endpoint_);
}

Status RouterServer::Send(const std::string& peer, std::string_view body) {
  try {
    if (!SendRoutingFrame(peer)) {
      return Status::ResourceExhausted("send queue to peer " + PeerForHumans(peer) + " on " +
                                       endpoint_ + " is full (send_hwm reached): overloaded");
    }
    // Once the routing frame is accepted the pipe has room for the rest of the message.
    if (!socket_.send(zmq::const_buffer(body.data(), body.size()), zmq::send_flags::dontwait)) {
      return PipeFullMidMessage(peer);
    }
  } catch (const zmq::error_t& e) {
    return SendFailed(e, peer);
  }
  bytes_sent_.fetch_add(body.size(), std::memory_order_relaxed);
  return Status::Ok();
}

Status RouterServer::Send(const std::string& peer, zmq::message_t& body) {
  const size_t size = body.size();
  try {
    if (!SendRoutingFrame(peer)) {
      return Status::ResourceExhausted("send queue to peer " + PeerForHumans(peer) + " on " +
                                       endpoint_ + " is full (send_hwm reached): overloaded");
    }
    if (!socket_.send(body, zmq::send_flags::dontwait)) return PipeFullMidMessage(peer);
  } catch (const zmq::error_t& e) {
    return SendFailed(e, peer);
  }
  bytes_sent_.fetch_add(size, std::memory_order_relaxed);
  return Status::Ok();
}

// --- DealerClient ---

DealerClient::DealerClient(zmq::socket_t socket, zmq::socket_t monitor, std::string endpoint)
    : socket_(std::move(socket)),
      monitor_(std::move(monitor)),
      endpoint_(std::move(endpoint)),
      link_up_(IsInproc(endpoint_)) {}

DealerClient::~DealerClient() {
  if (monitor_) {
    zmq_socket_monitor(socket_.handle(), nullptr, 0);  // stops the monitor's internal PAIR
    monitor_.close();
  }
  socket_.close();
}

Result<std::unique_ptr<DealerClient>> DealerClient::Connect(TransportContext& context,
                                                            const std::string& endpoint,
                                                            const SocketOptions& options) {
  CLEAVE_RETURN_IF_ERROR(ValidateOptions(options));
  zmq::socket_t socket;
  try {
    socket = zmq::socket_t(context.raw(), zmq::socket_type::dealer);
    socket.set(zmq::sockopt::immediate, true);
  } catch (const zmq::error_t& e) {
    return ZmqErrorToStatus(e, "cannot create DEALER socket for " + endpoint);
  }
  CLEAVE_RETURN_IF_ERROR(ApplyCommonOptions(socket, options).WithContext("connect " + endpoint));

  // Connection events tell "peer down" (Unavailable) from "peer slow" (DeadlineExceeded).
  // Only the two events we act on are requested, and our end of the event pipe has no HWM,
  // so the monitor (which sends blocking from the I/O thread) can never stall.
  zmq::socket_t monitor;
  if (!IsInproc(endpoint)) {
    static std::atomic<uint64_t> next_monitor_id{0};
    const std::string monitor_endpoint =
        "inproc://cleave-dealer-monitor-" + std::to_string(next_monitor_id.fetch_add(1));
    try {
      if (zmq_socket_monitor(socket.handle(), monitor_endpoint.c_str(),
                             ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED) != 0) {
        throw zmq::error_t();
      }
      monitor = zmq::socket_t(context.raw(), zmq::socket_type::pair);
      monitor.set(zmq::sockopt::linger, 0);
      monitor.set(zmq::sockopt::rcvhwm, 0);
      monitor.connect(monitor_endpoint);
    } catch (const zmq::error_t& e) {
      zmq_socket_monitor(socket.handle(), nullptr, 0);
      return ZmqErrorToStatus(e, "cannot monitor connection to " + endpoint);
    }
  }
  try {
    socket.connect(endpoint);
  } catch (const zmq::error_t& e) {
    if (monitor) zmq_socket_monitor(socket.handle(), nullptr, 0);
    return ZmqErrorToStatus(e, "cannot connect to " + endpoint +
                                   " (expected tcp://host:port, ipc://path or inproc://name)");
  }
  auto client = std::unique_ptr<DealerClient>(
      new DealerClient(std::move(socket), std::move(monitor), endpoint));
  client->send_hwm_ = options.send_hwm;
  return client;
}

void DealerClient::DrainMonitorEvents() {
  if (!monitor_) return;
  try {
    zmq::message_t event;
    while (monitor_.recv(event, zmq::recv_flags::dontwait)) {
      // Frame 1: uint16 event id + uint32 value; frame 2: the endpoint.
      const bool more = event.more();
      if (event.size() >= sizeof(uint16_t)) {
        uint16_t id = 0;
        std::memcpy(&id, event.data(), sizeof(id));
        if (id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) link_up_ = true;
        if (id == ZMQ_EVENT_DISCONNECTED) link_up_ = false;
      }
      zmq::message_t rest;
      if (more) (void)monitor_.recv(rest, zmq::recv_flags::dontwait);
    }
  } catch (const zmq::error_t&) {
    // The context is terminating; the link state no longer matters.
  }
}

bool DealerClient::connected() {
  DrainMonitorEvents();
  return link_up_;
}

Status DealerClient::Send(std::string_view body, int timeout_ms) {
  const Deadline deadline(timeout_ms);
  try {
    while (true) {
      if (socket_.send(zmq::const_buffer(body.data(), body.size()), zmq::send_flags::dontwait)) {
        bytes_sent_.fetch_add(body.size(), std::memory_order_relaxed);
        wire_bytes_sent_.fetch_add(WireBytes(body.size()), std::memory_order_relaxed);
        return Status::Ok();
      }
      const int remaining = deadline.RemainingMs();
      if (remaining == 0) break;
      // POLLOUT also fires when a connection comes up (IMMEDIATE attaches its pipe then).
      if (PollSocket(socket_, ZMQ_POLLOUT, remaining) == PollOutcome::kInterrupted) break;
    }
  } catch (const zmq::error_t& e) {
    return ZmqErrorToStatus(e, "send to " + endpoint_);
  }
  DrainMonitorEvents();
  const std::string waited = timeout_ms < 0 ? " (wait interrupted by a signal)"
                                            : " (waited " + std::to_string(timeout_ms) + " ms)";
  if (!link_up_) {
    return Status::Unavailable("no connection to " + endpoint_ +
                               ": server down, unreachable or still connecting" + waited);
  }
  return Status::DeadlineExceeded("send queue to " + endpoint_ + " stayed full (send_hwm " +
                                  std::to_string(send_hwm_) + "): the server is not keeping up" +
                                  waited);
}

Result<size_t> DealerClient::ReceiveBurst(size_t max, std::vector<zmq::message_t>* out) {
  size_t taken = 0;
  try {
    while (taken < max) {
      zmq::message_t frame;
      if (!socket_.recv(frame, zmq::recv_flags::dontwait)) break;
      if (frame.more()) {
        // Multi-frame: discard the remaining parts, which are already queued.
        zmq::message_t part;
        while (socket_.recv(part, zmq::recv_flags::dontwait) && part.more()) {
        }
        malformed_frames_.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      bytes_received_.fetch_add(frame.size(), std::memory_order_relaxed);
      out->push_back(std::move(frame));
      ++taken;
    }
  } catch (const zmq::error_t& e) {
    return ZmqErrorToStatus(e, "receive from " + endpoint_);
  }
  return taken;
}

Result<std::optional<std::string>> DealerClient::Receive(int timeout_ms) {
  const Deadline deadline(timeout_ms);
  try {
    while (true) {
      zmq::message_t frame;
      while (socket_.recv(frame, zmq::recv_flags::dontwait)) {
        if (!frame.more()) {
          bytes_received_.fetch_add(frame.size(), std::memory_order_relaxed);
          return std::optional<std::string>(frame.to_string());
        }
        // Multi-frame: discard the remaining parts, which are already queued.
        zmq::message_t part;
        while (socket_.recv(part, zmq::recv_flags::dontwait) && part.more()) {
        }
        malformed_frames_.fetch_add(1, std::memory_order_relaxed);
      }
      const int remaining = deadline.RemainingMs();
      if (remaining == 0) return std::optional<std::string>();
      if (PollSocket(socket_, ZMQ_POLLIN, remaining) != PollOutcome::kReady) {
        return std::optional<std::string>();
      }
    }
  } catch (const zmq::error_t& e) {
    return ZmqErrorToStatus(e, "receive from " + endpoint_);
  }
}

}  // namespace cleave
