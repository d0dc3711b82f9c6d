// KernelLink: a slow link made by the kernel, for the benchmarks that shape the edge -> cloud
// link (`cleave bench adaptive`, `cleave bench stream`). A network namespace holds the cloud;
// a veth pair joins it to the root namespace, and `tc tbf` on the root side's end shapes what
// the edges send into it (the uplink) to the trace's bandwidth, changed at each step of the
// trace. The kernel's delay emulation (netem) is not available on the machines we measure on,
// so the round trip is added by the relay (tools/link_shaper.h with shape_bandwidth = false);
// the bandwidth, with TCP's own behaviour over a narrow link (congestion window, queueing in the
// qdisc), comes from the kernel.
//
// Needs root (CAP_NET_ADMIN) and iproute2's `ip` and `tc`; Probe says whether this machine
// allows it, so a benchmark falls back to the relay shaping both (LinkShaper's default).
//
// Names: namespace "cleave-<pid>-<n>", veths "clv<pid%100000><n>{a,b}" (15 characters at
// most), addresses 10.<200 + n>.<pid % 250>.1 (root side) and .2 (namespace side) on a /24.
// Everything is removed by the destructor (deleting the namespace deletes its veth end and so
// the pair); a crash leaves a namespace `ip netns list` shows, harmless and removed by
// `ip netns del`.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/mutex.h"
#include "common/status.h"
#include "common/thread_annotations.h"
#include "tools/link_shaper.h"

namespace cleave::tools {

class KernelLink {
 public:
  // OK when a namespace, a veth pair and a tbf qdisc can be made here (it makes and removes
  // them); otherwise why not (not root, no `ip`/`tc`, the kernel refused).
  static Status Probe();

  // Makes the namespace and the veth pair, addresses both ends, and shapes the uplink to
  // `bandwidth_bps`. The error names the command that failed and what it printed.
  static Result<std::unique_ptr<KernelLink>> Create(double bandwidth_bps);
  // Stops following a trace and removes the namespace (and with it the pair).
  ~KernelLink();
  KernelLink(const KernelLink&) = delete;
  KernelLink& operator=(const KernelLink&) = delete;

  const std::string& ns() const { return ns_; }
  // The cloud's side (listen on tcp://<inner_address>:0 inside the namespace).
  const std::string& inner_address() const { return inner_; }
  // `argv` run inside the namespace: {"/path/to/ip", "netns", "exec", ns, argv...} (ip execs the
  // command, so the process is the command itself once it runs).
  std::vector<std::string> Wrap(const std::vector<std::string>& argv) const;

  // Shapes the uplink to `bandwidth_bps` from now on (tc qdisc replace ... tbf).
  Status SetBandwidth(double bandwidth_bps);
  // Follows `trace`'s bandwidth steps on a thread of its own, its time 0 being `start_us` on
  // `clock` (the relay's start); replaces any trace followed before. Errors of tc are logged.
  void Follow(LinkTrace trace, const ::cleave::Clock& clock, int64_t start_us);
  // The last error of a SetBandwidth made by Follow (OK when none).
  Status follow_status() const;
  // The current rate as tc reports it ("tc qdisc show"), for logs and tests.
  Result<std::string> Describe() const;

 private:
  KernelLink() = default;
  void StopFollowing();

  std::string ip_, tc_;  // absolute paths of iproute2's ip and tc
  std::string ns_, veth_outer_, veth_inner_, outer_, inner_;
  std::thread follower_;
  std::atomic<bool> stop_{false};
  mutable Mutex mu_;
  Status follow_status_ GUARDED_BY(mu_);
};

// Runs `argv` to completion (up to 10 s) and returns what it printed; the error names the
// command, its exit code and output. For the `ip` and `tc` calls above.
Result<std::string> RunCommand(const std::vector<std::string>& argv);

}  // namespace cleave::tools
