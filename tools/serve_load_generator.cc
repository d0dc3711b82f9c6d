#include "tools/serve_load_generator.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <optional>
#include <string_view>
#include <thread>
#include <utility>

#include "tools/bench_util.h"

namespace cleave::tools {
namespace {

// Most replies taken from a socket at a time.
constexpr size_t kReplyBurst = 64;

}  // namespace

uint64_t PreEncodedRequest::IdOf(uint64_t n, bool wide) {
  uint64_t id = wide ? 0x0101010100000000ULL : 0;
  for (int i = 0; i < 4; ++i) {
    id |= (1 + n % 255) << (8 * i);
    n /= 255;
  }
  return id;
}

Result<PreEncodedRequest> PreEncodedRequest::Make(wire::InferRequest request) {
  const bool wide = request.protocol_version != wire::kCompactProtocolVersion;
  const size_t width = wide ? 8 : 4;
  // Two ids without zero bytes whose bytes all differ: 0x0101... and 0x0202...
  uint64_t ones = 0;
  for (size_t i = 0; i < width; ++i) ones |= uint64_t{1} << (8 * i);
  request.request_id = ones;
  PreEncodedRequest out;
  out.bytes_ = wire::EncodeInferRequest(request);
  request.request_id = 2 * ones;
  const std::string other = wire::EncodeInferRequest(request);
  if (other.size() == out.bytes_.size()) {
    for (size_t i = 0; i < other.size(); ++i) {
      if (other[i] != out.bytes_[i]) out.id_offsets_.push_back(i);
    }
  }
  bool located = out.id_offsets_.size() == width;
  // Check the claim on one more id: the patched bytes must decode to it, and to the rest of
  // the request unchanged.
  if (located) {
    const uint64_t probe = IdOf(12'345'678, wide);
    std::string patched;
    out.WithId(probe, &patched);
    request.request_id = probe;
    located = patched == wire::EncodeInferRequest(request);
  }
  if (!located) {
    return Status::Internal("load generator: cannot locate the request id in a packed request");
  }
  return out;
}

void PreEncodedRequest::WithId(uint64_t id, std::string* out) const {
  out->assign(bytes_);
  for (size_t i = 0; i < id_offsets_.size(); ++i) {
    (*out)[id_offsets_[i]] = static_cast<char>((id >> (8 * i)) & 0xff);
  }
}

Result<std::unique_ptr<LoadGenerator>> LoadGenerator::Connect(
    TransportContext& context, const std::string& endpoint, int sockets,
    std::vector<wire::InferRequest> pool) {
  if (pool.empty()) return Status::InvalidArgument("load generator: the request pool is empty");
  auto gen = std::unique_ptr<LoadGenerator>(new LoadGenerator());
  gen->pool_ = std::move(pool);
  SocketOptions options;
  options.send_hwm = 100000;  // the client never refuses to offer load by itself
  options.recv_hwm = 100000;
  for (int i = 0; i < sockets; ++i) {
    CLEAVE_ASSIGN_OR_RETURN(auto dealer, DealerClient::Connect(context, endpoint, options));
    pollfd fd{};
    try {
      fd.fd = dealer->socket().get(zmq::sockopt::fd);
    } catch (const zmq::error_t& e) {
      return ZmqErrorToStatus(e, "load generator: ZMQ_FD");
    }
    fd.events = POLLIN;
    gen->fds_.push_back(fd);
    gen->recheck_.push_back(0);
    gen->outstanding_.push_back(0);
    gen->sockets_.push_back(std::move(dealer));
  }
  const auto give_up = Clock::now() + std::chrono::seconds(10);
  for (auto& s : gen->sockets_) {
    while (!s->connected()) {
      if (Clock::now() > give_up) {
        return Status::Unavailable("load generator: no connection to " + endpoint);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  return gen;
}

template <typename OnReply>
Status LoadGenerator::Poll(int count, int timeout_ms, Outcomes& out, OnReply&& on_reply) {
  const bool recheck =
      std::any_of(recheck_.begin(), recheck_.begin() + count, [](uint8_t r) { return r != 0; });
  const int ready = ::poll(fds_.data(), static_cast<nfds_t>(count), recheck ? 0 : timeout_ms);
  if (ready < 0) {
    if (errno == EINTR) return Status::Ok();
    return Status::Internal(std::string("load generator: poll: ") + std::strerror(errno));
  }
  if (ready == 0 && !recheck) {
    // Nothing for a whole wait: look at every socket still owed a reply, in case its edge was
    // missed (cheap insurance; an idle wait costs a system call per socket at most).
    for (int s = 0; s < count; ++s) recheck_[s] = outstanding_[s] > 0;
    return Status::Ok();
  }
  for (int s = 0; s < count; ++s) {
    if (!(fds_[s].revents & POLLIN) && !recheck_[s]) continue;
    recheck_[s] = 0;
    // Until the socket says there is nothing more (a receive that finds nothing also resets
    // its ZMQ_FD, so the next reply makes it readable again).
    for (size_t got = kReplyBurst; got == kReplyBurst;) {
      replies_.clear();
      CLEAVE_ASSIGN_OR_RETURN(got, sockets_[s]->ReceiveBurst(kReplyBurst, &replies_));
      const auto now = Clock::now();
      for (const zmq::message_t& msg : replies_) {
        Result<wire::InferReply> reply = wire::DecodeInferReply(
            std::string_view(static_cast<const char*>(msg.data()), msg.size()));
        if (!reply.ok()) {
          ++out.stray;
          continue;
        }
        auto it = in_flight_.find(reply->request_id);
        if (it == in_flight_.end()) {
          ++out.stray;
          continue;
        }
        const double ms = std::chrono::duration<double, std::milli>(now - it->second).count();
        in_flight_.erase(it);
        if (outstanding_[s] > 0) --outstanding_[s];
        switch (reply->status) {
          case wire::ReplyStatus::kOk:
            ++out.ok;
            out.ok_latency_ms.push_back(ms);
            out.ok_server_ms.push_back(static_cast<double>(reply->queue_us + reply->compute_us) /
                                       1000.0);
            out.batch_rows += reply->batch_size;
            out.queue_us += static_cast<double>(reply->queue_us);
            out.compute_us += static_cast<double>(reply->compute_us);
            break;
          case wire::ReplyStatus::kOverloaded: ++out.overloaded; break;
          case wire::ReplyStatus::kDeadlineExceeded: ++out.deadline; break;
          default: ++out.error; break;
        }
        on_reply(static_cast<size_t>(s), reply->status);
      }
    }
  }
  return Status::Ok();
}

Status LoadGenerator::PreEncode(int deadline_ms) {
  if (deadline_ms == encoded_deadline_ms_) return Status::Ok();
  encoded_.clear();
  for (wire::InferRequest request : pool_) {
    request.deadline_ms = static_cast<uint32_t>(deadline_ms);
    CLEAVE_ASSIGN_OR_RETURN(PreEncodedRequest encoded, PreEncodedRequest::Make(std::move(request)));
    encoded_.push_back(std::move(encoded));
  }
  encoded_deadline_ms_ = deadline_ms;
  return Status::Ok();
}

Status LoadGenerator::SendOn(size_t socket, Outcomes& out) {
  const PreEncodedRequest& request = encoded_[sent_ % encoded_.size()];
  const uint64_t id = PreEncodedRequest::IdOf(sent_++, request.wide_id());
  request.WithId(id, &send_buffer_);
  ++out.sent;
  Status sent = sockets_[socket]->Send(send_buffer_, 0);
  if (!sent.ok()) {
    ++out.send_failed;
    return sent;
  }
  in_flight_.emplace(id, Clock::now());
  // A send may take in the socket's pending commands, among them the one announcing a reply
  // that already arrived, and its ZMQ_FD then stays quiet: look at it on the next Poll.
  if (outstanding_[socket]++ > 0) recheck_[socket] = 1;
  return Status::Ok();
}

Result<Outcomes> LoadGenerator::ClosedLoop(int clients, double warmup_s, double seconds,
                                           int deadline_ms, double first_backoff_ms) {
  clients = std::min<int>(clients, static_cast<int>(sockets_.size()));
  CLEAVE_RETURN_IF_ERROR(PreEncode(deadline_ms));
  Outcomes out;
  in_flight_.clear();
  std::fill(outstanding_.begin(), outstanding_.end(), 0);
  // ZeroMQ announces a message on ZMQ_FD only to a reader that has found its pipe empty
  // before: drain every socket once, so each is in that state.
  std::fill(recheck_.begin(), recheck_.end(), 1);
  const auto start = Clock::now();
  const auto measure_from =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(warmup_s));
  const auto stop = measure_from + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(seconds));
  Outcomes ignored;
  for (int c = 0; c < clients; ++c) CLEAVE_RETURN_IF_ERROR(SendOn(c, ignored));
  std::vector<int> refusals(static_cast<size_t>(clients), 0);  // in a row, per client
  std::multimap<Clock::time_point, size_t> backing_off;        // resend time -> client
  while (true) {
    auto now = Clock::now();
    if (now >= stop) break;
    while (!backing_off.empty() && backing_off.begin()->first <= now) {
      (void)SendOn(backing_off.begin()->second, ignored);
      backing_off.erase(backing_off.begin());
    }
    int timeout_ms = 5;
    if (!backing_off.empty()) {
      const auto until =
          std::chrono::ceil<std::chrono::milliseconds>(backing_off.begin()->first - now);
      timeout_ms = static_cast<int>(std::clamp<int64_t>(until.count(), 0, 5));
    }
    Outcomes& sink = now >= measure_from ? out : ignored;
    CLEAVE_RETURN_IF_ERROR(
        Poll(clients, timeout_ms, sink, [&](size_t socket, wire::ReplyStatus status) {
          now = Clock::now();
          if (now >= stop) return;
          if (status == wire::ReplyStatus::kOverloaded && first_backoff_ms > 0) {
            const int k = std::min(refusals[socket]++, 5);
            const auto pause = std::chrono::duration_cast<Clock::duration>(
                std::chrono::duration<double, std::milli>(first_backoff_ms * (1 << k)));
            backing_off.emplace(now + pause, socket);
            return;
          }
          refusals[socket] = 0;
          (void)SendOn(socket, ignored);
        }));
  }
  out.seconds = seconds;
  // Let what is still in flight come back, so the next phase starts clean.
  const auto drain_until = Clock::now() + std::chrono::milliseconds(deadline_ms + 500);
  while (!in_flight_.empty() && Clock::now() < drain_until) {
    CLEAVE_RETURN_IF_ERROR(Poll(clients, 10, ignored, [](size_t, wire::ReplyStatus) {}));
  }
  return out;
}

Result<Outcomes> LoadGenerator::OpenLoop(double rate, double seconds, int deadline_ms,
                                         const std::function<void()>& each_tick) {
  CLEAVE_RETURN_IF_ERROR(PreEncode(deadline_ms));
  Outcomes out;
  in_flight_.clear();
  std::fill(outstanding_.begin(), outstanding_.end(), 0);
  // ZeroMQ announces a message on ZMQ_FD only to a reader that has found its pipe empty
  // before: drain every socket once, so each is in that state.
  std::fill(recheck_.begin(), recheck_.end(), 1);
  const int n = static_cast<int>(sockets_.size());
  const uint64_t total = static_cast<uint64_t>(rate * seconds);
  const auto start = Clock::now();
  auto last_tick = start;
  uint64_t offered = 0;
  size_t next_socket = 0;
  while (offered < total) {
    const auto now = Clock::now();
    const uint64_t due =
        std::min<uint64_t>(total, static_cast<uint64_t>(SecondsBetween(start, now) * rate) + 1);
    while (offered < due) {
      (void)SendOn(next_socket, out);
      next_socket = (next_socket + 1) % static_cast<size_t>(n);
      ++offered;
    }
    CLEAVE_RETURN_IF_ERROR(Poll(n, 1, out, [](size_t, wire::ReplyStatus) {}));
    if (now - last_tick >= std::chrono::milliseconds(10)) {
      each_tick();
      last_tick = now;
    }
  }
  out.seconds = SecondsBetween(start, Clock::now());
  const auto drain_until = Clock::now() + std::chrono::milliseconds(deadline_ms + 2000);
  while (!in_flight_.empty() && Clock::now() < drain_until) {
    CLEAVE_RETURN_IF_ERROR(Poll(n, 10, out, [](size_t, wire::ReplyStatus) {}));
    each_tick();
  }
  return out;
}

}  // namespace cleave::tools
