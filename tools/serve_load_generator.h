// The load generator of `cleave bench serve`: closed-loop and open-loop clients of a
// cleave-cloud daemon on DEALER sockets, recording each reply's latency and status. One
// thread plays many edges: one DEALER socket per client, one zmq_poll over all of them.
//
// It shares the benchmark machine with the daemon, so it is built to cost little per request:
// every request of the pool is encoded once per deadline (a send copies its bytes and writes
// the request id in, see PreEncodedRequest), readiness comes from one poll(2) over the
// sockets' ZMQ_FDs, and replies are taken from a ready socket in bursts, straight from
// ZeroMQ's frames.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <poll.h>

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

// A request encoded once, sent many times with different request ids. Cap'n Proto's packed
// encoding keeps a word's nonzero bytes verbatim and drops only its zero bytes (a tag byte says
// which are which, and runs of words are counted by their zero bytes too), so two encodings of
// one request whose ids have no zero byte differ in exactly the id's bytes, at the same
// offsets. Make finds those offsets by encoding the request with two such ids; WithId writes
// an id into a copy. Ids come from IdOf, which has no zero byte by construction.
class PreEncodedRequest {
 public:
  // Encodes `request` (any version; its request_id is ignored). Internal if the id's bytes
  // cannot be located, which would mean the encoding is not what the comment above says.
  static Result<PreEncodedRequest> Make(wire::InferRequest request);
  // The `n`th id (n < 255^4): strictly increasing in n, no zero byte in its low 4 bytes (nor,
  // for a version 1 request's 64-bit id, in the upper 4, which are 0x01).
  static uint64_t IdOf(uint64_t n, bool wide);

  // The encoding with request id `id` (made by IdOf for this request's version) into `out`.
  void WithId(uint64_t id, std::string* out) const;
  bool wide_id() const { return id_offsets_.size() == 8; }
  size_t size() const { return bytes_.size(); }

 private:
  std::string bytes_;
  std::vector<size_t> id_offsets_;  // of the id's bytes, least significant first
};

// One thread playing many edges: one DEALER socket per client, one zmq_poll over all. Owns
// its sockets; use it from one thread only, and destroy it before `context`.
class LoadGenerator {
 public:
  // Connects `sockets` DEALER sockets to `endpoint` and waits up to 10 s for every one to
  // complete its handshake (Unavailable otherwise). Requests are taken round-robin from
  // `pool`, which must not be empty (InvalidArgument); each gets a fresh request id. The
  // requests go out as they are: version 2 (what edges send) or version 1.
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

  // Sends the next request of the pool (encoded by PreEncode) on `socket`, counting it in
  // `out`.
  Status SendOn(size_t socket, Outcomes& out);
  // Encodes the pool for `deadline_ms` unless it already is.
  Status PreEncode(int deadline_ms);

  // Waits up to timeout_ms for replies on the first `count` sockets and records each;
  // `on_reply(socket, status)` runs once per reply (closed loop: send the next request there).
  template <typename OnReply>
  Status Poll(int count, int timeout_ms, Outcomes& out, OnReply&& on_reply);

  std::vector<std::unique_ptr<DealerClient>> sockets_;
  // Readiness of the sockets without zmq_poll, which asks every socket for ZMQ_EVENTS (a
  // system call each) on every call: one poll(2) over their ZMQ_FDs. Those are
  // edge-triggered and announce only messages that reach a reader which found its pipe empty,
  // so a ready socket is always drained until a receive finds nothing, every socket is drained
  // once at the start of a phase, and a socket is looked at again (recheck_) after a send that
  // may have taken in its announcement, or when a wait ends with nothing while it is owed
  // replies.
  std::vector<pollfd> fds_;
  std::vector<uint8_t> recheck_;       // per socket: drain on the next Poll even if quiet
  std::vector<uint32_t> outstanding_;  // per socket: requests sent and not answered
  std::vector<wire::InferRequest> pool_;
  std::vector<PreEncodedRequest> encoded_;  // pool_ encoded with encoded_deadline_ms_
  int encoded_deadline_ms_ = -1;
  uint64_t sent_ = 0;  // requests sent so far: the next one's id is IdOf(sent_)
  std::string send_buffer_;
  std::vector<zmq::message_t> replies_;  // a burst of replies, reused
  std::unordered_map<uint64_t, Clock::time_point> in_flight_;
};

}  // namespace cleave::tools
