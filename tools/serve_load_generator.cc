#include "tools/serve_load_generator.h"

#include <algorithm>
#include <cerrno>
#include <map>
#include <optional>
#include <thread>
#include <utility>

#include "tools/bench_util.h"

namespace cleave::tools {

Result<std::unique_ptr<LoadGenerator>> LoadGenerator::Connect(
    TransportContext& context, const std::string& endpoint, int sockets,
    std::vector<wire::InferRequest> pool) {
  auto gen = std::unique_ptr<LoadGenerator>(new LoadGenerator());
  gen->pool_ = std::move(pool);
  SocketOptions options;
  options.send_hwm = 100000;  // the client never refuses to offer load by itself
  options.recv_hwm = 100000;
  for (int i = 0; i < sockets; ++i) {
    CLEAVE_ASSIGN_OR_RETURN(auto dealer, DealerClient::Connect(context, endpoint, options));
    gen->items_.push_back({dealer->socket().handle(), 0, ZMQ_POLLIN, 0});
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
  int ready = 0;
  try {
    ready =
        zmq::poll(items_.data(), static_cast<size_t>(count), std::chrono::milliseconds(timeout_ms));
  } catch (const zmq::error_t& e) {
    if (e.num() == EINTR) return Status::Ok();
    return Status::Internal(std::string("load generator: zmq_poll: ") + e.what());
  }
  if (ready <= 0) return Status::Ok();
  for (int s = 0; s < count; ++s) {
    if (!(items_[s].revents & ZMQ_POLLIN)) continue;
    while (true) {
      CLEAVE_ASSIGN_OR_RETURN(std::optional<std::string> msg, sockets_[s]->Receive(0));
      if (!msg) break;
      const auto now = Clock::now();
      Result<wire::InferReply> reply = wire::DecodeInferReply(*msg);
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
  return Status::Ok();
}

Status LoadGenerator::SendOn(size_t socket, int deadline_ms, Outcomes& out) {
  wire::InferRequest& request = pool_[next_id_ % pool_.size()];
  request.request_id = next_id_++;
  request.deadline_ms = static_cast<uint32_t>(deadline_ms);
  const std::string bytes = wire::EncodeInferRequest(request);
  ++out.sent;
  Status sent = sockets_[socket]->Send(bytes, 0);
  if (!sent.ok()) {
    ++out.send_failed;
    return sent;
  }
  in_flight_.emplace(request.request_id, Clock::now());
  return Status::Ok();
}

Result<Outcomes> LoadGenerator::ClosedLoop(int clients, double warmup_s, double seconds,
                                           int deadline_ms, double first_backoff_ms) {
  clients = std::min<int>(clients, static_cast<int>(sockets_.size()));
  Outcomes out;
  in_flight_.clear();
  const auto start = Clock::now();
  const auto measure_from =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(warmup_s));
  const auto stop = measure_from + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(seconds));
  Outcomes ignored;
  for (int c = 0; c < clients; ++c) CLEAVE_RETURN_IF_ERROR(SendOn(c, deadline_ms, ignored));
  std::vector<int> refusals(static_cast<size_t>(clients), 0);  // in a row, per client
  std::multimap<Clock::time_point, size_t> backing_off;        // resend time -> client
  while (true) {
    auto now = Clock::now();
    if (now >= stop) break;
    while (!backing_off.empty() && backing_off.begin()->first <= now) {
      (void)SendOn(backing_off.begin()->second, deadline_ms, ignored);
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
          (void)SendOn(socket, deadline_ms, ignored);
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
  Outcomes out;
  in_flight_.clear();
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
      (void)SendOn(next_socket, deadline_ms, out);
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
