// StreamFeeder: classifies a continuous feed of frames (edge/frame_source.h) through the edge
// daemon, as an application would: each frame becomes an ordinary ClassifyRequest to the
// daemon's application endpoint (EdgeServer::endpoint(), tcp/ipc/inproc), so streams get the
// same exits, offloading, deadlines and degraded answers as any request.
//
// Flow control, per stream: at most `window` requests are in flight (sent, not answered). With
// the window full a newer frame waits; only one waits per stream, and with
// DropPolicy::kLatestFrameWins a newer one takes its place (the older is dropped, reason
// `replaced`): when the link is slower than the source, answers are about the latest frame,
// never a growing backlog. With kWait the feeder stops reading the source instead (frames
// queue there: files stay in the directory, stdin's writer blocks, a PULL socket's queue
// fills and its PUSHers block).
//
// Accounting: every frame received gets exactly one result - answered (exit, cloud or
// degraded) or dropped with a reason (common/metrics.h FrameDrop) - written as one JSON line
// to `results` and published on `publish`:
//   {"stream":"cam1","seq":17,"answered_by":"cloud","class":3,"class_name":"Dress",
//    "confidence":0.93,"latency_ms":4.1,"staleness_ms":9.8,"time":1718000000.123}
//   {"stream":"cam1","seq":18,"dropped":"replaced"}
// (`error` says why for degraded answers and drops; `origin` names the file of a directory
// source.) seq counts a stream's frames from 1 in arrival order. latency = reply - request
// sent; staleness = reply - frame arrival. So per stream, received = answered + dropped, in
// the JSON lines and in the metrics (cleave_edge_stream_*{stream}).
//
// Threads: the feeder runs on its own thread and owns its sockets (source, the DEALER to the
// daemon, the PUB); its public methods may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "common/clock.h"
#include "common/metrics.h"
#include "common/mutex.h"
#include "common/status.h"
#include "common/thread_annotations.h"
#include "common/transport.h"
#include "edge/frame_source.h"

namespace cleave::edge {

enum class DropPolicy : uint8_t { kLatestFrameWins, kWait };
// "latest" or "wait".
Result<DropPolicy> ParseDropPolicy(std::string_view text);

struct StreamFeederOptions {
  std::string daemon;  // the daemon's application endpoint (EdgeServer::endpoint())
  int window = 2;      // requests in flight per stream, >= 1
  DropPolicy policy = DropPolicy::kLatestFrameWins;
  size_t max_streams = 64;                 // streams tracked; frames of more go to stream "_other"
  std::string default_stream = "default";  // stream of frames that name none
  float exit_threshold = -1.0f;  // of every request; < 0: the bundle's calibrated threshold
  uint32_t deadline_ms = 0;      // of every request; 0: the daemon's default
  // A request the daemon has not answered this long after it was sent is dropped (no_reply)
  // and frees its window slot. The daemon answers every request within its deadline, so this
  // only matters if the daemon is gone.
  int reply_timeout_ms = 10000;
  std::string results = "stdout";    // "stdout", "none", or a file the lines are appended to
  std::string publish;               // PUB endpoint to bind for the lines ([stream, line]); "" none
  std::shared_ptr<Metrics> metrics;  // null: a private registry
  Clock* clock = nullptr;            // null: SystemClock()
};

// Totals over every stream (tests, the final log line).
struct StreamFeederStats {
  uint64_t received = 0;
  uint64_t answered = 0;
  uint64_t dropped = 0;
  uint64_t stray_replies = 0;  // replies matching no request in flight
};

class StreamFeeder {
 public:
  // Checks `options`, opens the results file, connects to the daemon and binds the PUB, then
  // starts the feeder's thread with `source`. `context` must outlive the feeder.
  // InvalidArgument for bad options; the errors of opening the file or sockets.
  static Result<std::unique_ptr<StreamFeeder>> Start(TransportContext& context,
                                                     StreamFeederOptions options,
                                                     std::unique_ptr<FrameSource> source);
  // RequestStop, then waits for the thread.
  ~StreamFeeder();
  StreamFeeder(const StreamFeeder&) = delete;
  StreamFeeder& operator=(const StreamFeeder&) = delete;

  // Stops taking frames; frames waiting to be sent are dropped (shutdown), and the feeder
  // finishes once the requests in flight are answered (at most reply_timeout_ms later; the
  // daemon must keep serving meanwhile). Any thread; returns at once.
  void RequestStop() { stop_.store(true, std::memory_order_release); }
  // True once the thread has finished: stopped and drained, the source ended and everything
  // answered, or failed.
  bool done() const { return done_.load(std::memory_order_acquire); }
  // Why the feeder failed (its source or socket broke for good); OK otherwise.
  Status status() const EXCLUDES(mu_);

  StreamFeederStats stats() const;
  // What the source reads and the resolved PUB endpoint ("" without one).
  const std::string& source_description() const { return source_description_; }
  const std::string& publish_endpoint() const { return publish_endpoint_; }

 private:
  class Loop;  // the thread's state (stream_feeder.cc)
  StreamFeeder() = default;

  std::unique_ptr<Loop> loop_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> done_{false};
  mutable Mutex mu_;
  Status status_ GUARDED_BY(mu_);
  std::string source_description_;
  std::string publish_endpoint_;
};

}  // namespace cleave::edge
