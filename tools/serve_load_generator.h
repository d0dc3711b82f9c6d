// The load generator of `cleave bench serve`: closed-loop and open-loop clients of a
// cleave-cloud daemon on DEALER sockets, recording each reply's latency and status. One
// thread plays many edges: one DEALER socket per client, one zmq_poll over all of them.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <zmq.hpp>

#include "common/inference_wire.h"
#include "common/status.h"
#include "common/transport.h"

namespace cleave::tools {

// What came back for the requests of one phase.
struct Outcomes {
  uint64_t sent = 0;
  uint64_t send_failed = 0;  // the client's own queue was full: never reached the daemon
  uint64_t ok = 0, overloaded = 0, deadline = 0, error = 0;
  uint64_t stray = 0;                 // undecodable replies or ids nobody waited for
  std::vector<double> ok_latency_ms;  // of ok replies
  std::vector<double> ok_server_ms;   // of ok replies: the daemon's queue + compute time
  double batch_rows = 0;              // sum over ok replies of the batch they were computed in
  double queue_us = 0;                // sum over ok replies of the daemon's queue time
  double compute_us = 0;              // sum over ok replies of their batch's compute time
  double seconds = 0;                 // measured window
  uint64_t answered() const { return ok + overloaded + deadline + error; }
};

// One thread playing many edges: one DEALER socket per client, one zmq_poll over all. Owns
// its sockets; use it from one thread only, and destroy it before `context`.
class LoadGenerator {
 public:
  // Connects `sockets` DEALER sockets to `endpoint` and waits up to 10 s for every one to
  // complete its handshake (Unavailable otherwise). Requests are taken round-robin from
  // `pool`, which must not be empty; each gets a fresh request id.
  static Result<std::unique_ptr<LoadGenerator>> Connect(TransportContext& context,
                                                        const std::string& endpoint, int sockets,
                                                        std::vector<wire::InferRequest> pool);

  LoadGenerator(const LoadGenerator&) = delete;
  LoadGenerator& operator=(const LoadGenerator&) = delete;

  // `clients` sockets each keep one request in flight for warm-up + `seconds`; replies in the
  // measured window count. A client answered `overloaded` does what the reply asks ("retry
  // later"): it backs off exponentially (first_backoff_ms, doubling up to 32x) before its next
  // request, and resets after a served one. Without that, every refused client would resend
  // at once and the refusals alone would occupy both cores of the benchmark machine.
  Result<Outcomes> ClosedLoop(int clients, double warmup_s, double seconds, int deadline_ms,
                              double first_backoff_ms);

  // Offers `rate` requests per second for `seconds`, spread round-robin over every socket,
  // whatever comes back; then waits up to the deadline + 2 s for the last replies. `each_tick`
  // runs about every 10 ms (memory sampling).
  Result<Outcomes> OpenLoop(double rate, double seconds, int deadline_ms,
                            const std::function<void()>& each_tick);

  // Requests sent and not yet answered.
  size_t in_flight() const { return in_flight_.size(); }

 private:
  using Clock = std::chrono::steady_clock;

  LoadGenerator() = default;

  // Sends the next request of the pool on `socket`, counting it in `out`.
  Status SendOn(size_t socket, int deadline_ms, Outcomes& out);

  // Waits up to timeout_ms for replies on the first `count` sockets and records each;
  // `on_reply(socket, status)` runs once per reply (closed loop: send the next request there).
  template <typename OnReply>
  Status Poll(int count, int timeout_ms, Outcomes& out, OnReply&& on_reply);

  std::vector<std::unique_ptr<DealerClient>> sockets_;
  std::vector<zmq::pollitem_t> items_;
  std::vector<wire::InferRequest> pool_;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, Clock::time_point> in_flight_;
};

}  // namespace cleave::tools
