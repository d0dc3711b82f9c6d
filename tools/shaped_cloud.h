// A cleave-cloud behind a shaped link, for the benchmarks that measure the edge over a slow,
// distant link (`cleave bench stream`, `cleave bench adaptive`). Two ways, chosen by LinkMode:
//   kernel: the cloud runs in a network namespace behind a veth pair whose uplink `tc tbf`
//           shapes to the trace's bandwidth (tools/kernel_link.h); the relay adds the delay.
//   relay:  the cloud runs on loopback and the relay (tools/link_shaper.h) shapes both.
//   auto:   kernel where the machine allows it (root, iproute2, the kernel agrees), else relay.
// Edges connect to the relay's endpoint in both cases.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "common/transport.h"
#include "tools/daemon_launcher.h"
#include "tools/kernel_link.h"
#include "tools/link_shaper.h"

namespace cleave::tools {

enum class LinkMode { kAuto, kKernel, kRelay };
// "auto", "kernel" or "relay"; InvalidArgument listing them otherwise.
Result<LinkMode> ParseLinkMode(const std::string& text);

struct ShapedCloud {
  LaunchedDaemon cloud;
  std::unique_ptr<KernelLink> kernel;  // null in relay mode
  std::string mode;                    // "kernel" or "relay": what was used
  std::string why_relay;               // in auto mode, why the kernel link was not used
  ~ShapedCloud();                      // stops the cloud before the namespace goes
  ShapedCloud() = default;
  ShapedCloud(ShapedCloud&&) = default;
  ShapedCloud& operator=(ShapedCloud&&) = default;
};

// Starts cleave-cloud with `cloud_args` (plus --cloud.listen on the link's address) as
// LaunchDaemon does, behind a link of `mode` whose initial bandwidth is `trace`'s first step.
// kernel mode fails when the kernel link cannot be made; auto falls back to the relay.
Result<ShapedCloud> LaunchShapedCloud(LinkMode mode, const LinkTrace& trace,
                                      std::vector<std::string> cloud_args,
                                      const std::filesystem::path& work, const std::string& name);

// A relay in front of `cloud` following `trace` from now on (its time 0): shaping the delay,
// and the bandwidth too in relay mode; in kernel mode the kernel link follows the trace's
// bandwidth steps from the same time 0.
Result<std::unique_ptr<LinkShaper>> StartShapedLink(ShapedCloud& cloud, TransportContext& context,
                                                    const LinkTrace& trace,
                                                    const ::cleave::Clock& clock);

}  // namespace cleave::tools
