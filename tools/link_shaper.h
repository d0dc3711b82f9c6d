// A relay that makes a loopback link behave like a slow, distant one, for `cleave bench
// adaptive` and `cleave bench stream`: edges connect to it instead of to cleave-cloud, and it
// forwards every message after the delay a link of the trace's bandwidth and round-trip time
// would add (serialization at the bandwidth, FIFO, plus half the RTT each way).
//
// Why a relay: the kernel's delay emulation (netem) is not available on the machines we
// measure on. Where the machine allows a network namespace and `tc tbf` (root), the benchmarks
// put the cloud behind a KernelLink (tools/kernel_link.h) that shapes the bandwidth in the
// kernel, and the relay only adds the delay (LinkShaperOptions::shape_bandwidth = false);
// elsewhere the relay shapes both and follows the trace exactly. It shapes the uplink by
// bandwidth and both directions by delay (replies are small; the downlink is taken as fast).
//
// One thread owns every socket: a ROUTER the edges connect to and, per edge, a DEALER to the
// upstream cloud, so the cloud sees each edge as its own peer. Messages are never dropped or
// reordered within a direction; the relay holds at most `max_queued` messages (beyond that it
// stops reading, like a full send buffer).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "common/transport.h"

namespace cleave::tools {

// One constant stretch of a link trace, from `at_s` seconds after the start.
struct LinkStep {
  double at_s = 0;
  double bandwidth_bps = 10e6;  // uplink bits per second
  double rtt_ms = 5;            // added round trip (half each way)
};

// A piecewise-constant trace, steps in time order, the first at 0.
class LinkTrace {
 public:
  // "0:10mbit:5ms,20:200kbit:80ms,40:2mbit:20ms": seconds, bandwidth (bit, kbit, mbit,
  // gbit), RTT (ms). InvalidArgument naming the bad step (unordered, first not at 0,
  // bandwidth <= 0, negative RTT, unknown unit).
  static Result<LinkTrace> Parse(const std::string& text);
  static Result<LinkTrace> FromSteps(std::vector<LinkStep> steps);
  // The step in force `seconds` after the start.
  const LinkStep& At(double seconds) const;
  const std::vector<LinkStep>& steps() const { return steps_; }
  // The index of the step in force at `seconds`.
  size_t IndexAt(double seconds) const;

 private:
  std::vector<LinkStep> steps_;
};

struct LinkShaperStats {
  uint64_t up_messages = 0, down_messages = 0;
  uint64_t up_bytes = 0, down_bytes = 0;  // wire bytes (payload + ZMTP framing)
};

struct LinkShaperOptions {
  size_t max_queued = 4096;  // messages held; beyond, the relay stops reading
  // false: the bandwidth is shaped elsewhere (a KernelLink's tc tbf, tools/kernel_link.h) and
  // the relay only adds the trace's delay.
  bool shape_bandwidth = true;
};

class LinkShaper {
 public:
  // Binds tcp://127.0.0.1:0 for edges and relays to `upstream` (a cleave-cloud endpoint)
  // shaped by `trace`, whose time 0 is now. `context` and `clock` must outlive the shaper.
  static Result<std::unique_ptr<LinkShaper>> Start(TransportContext& context,
                                                   const std::string& upstream, LinkTrace trace,
                                                   const ::cleave::Clock& clock,
                                                   size_t max_queued = 4096);
  static Result<std::unique_ptr<LinkShaper>> Start(TransportContext& context,
                                                   const std::string& upstream, LinkTrace trace,
                                                   const ::cleave::Clock& clock,
                                                   const LinkShaperOptions& options);
  ~LinkShaper();
  LinkShaper(const LinkShaper&) = delete;
  LinkShaper& operator=(const LinkShaper&) = delete;

  // Where edges connect.
  const std::string& endpoint() const { return endpoint_; }
  // The trace's time 0 on its clock.
  int64_t start_us() const;
  // Seconds since the trace started (its clock).
  double Elapsed() const;
  // Starts the trace again from its first step now (e.g. once the edge behind it is up and
  // warm); messages already queued keep the delay they were given. Any thread.
  void RestartTrace();
  LinkShaperStats stats() const;

 private:
  struct State;
  LinkShaper() = default;
  void Loop();

  std::string endpoint_;
  std::unique_ptr<State> state_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace cleave::tools
