#include "tools/shaped_cloud.h"

#include "common/logging.h"

namespace cleave::tools {

Result<LinkMode> ParseLinkMode(const std::string& text) {
  if (text == "auto") return LinkMode::kAuto;
  if (text == "kernel") return LinkMode::kKernel;
  if (text == "relay") return LinkMode::kRelay;
  return Status::InvalidArgument("link mode '" + text + "': expected auto, kernel or relay");
}

ShapedCloud::~ShapedCloud() {
  if (cloud.process) (void)cloud.process->Stop(3000);
}

Result<ShapedCloud> LaunchShapedCloud(LinkMode mode, const LinkTrace& trace,
                                      std::vector<std::string> cloud_args,
                                      const std::filesystem::path& work, const std::string& name) {
  ShapedCloud shaped;
  if (mode != LinkMode::kRelay) {
    Result<std::unique_ptr<KernelLink>> link =
        KernelLink::Create(trace.steps().front().bandwidth_bps);
    if (link.ok()) {
      shaped.kernel = std::move(link).value();
    } else if (mode == LinkMode::kKernel) {
      return link.status().WithContext("kernel link (netns + veth + tc tbf)");
    } else {
      shaped.why_relay = link.status().ToString();
      GetLogger("bench")->info("kernel link not available ({}); the relay shapes the bandwidth",
                               shaped.why_relay);
    }
  }
  shaped.mode = shaped.kernel ? "kernel" : "relay";
  const std::string listen =
      shaped.kernel ? "tcp://" + shaped.kernel->inner_address() + ":0" : "tcp://127.0.0.1:0";
  cloud_args.insert(cloud_args.end(), {"--cloud.listen", listen});
  const std::filesystem::path binary = SelfBinaryDir() / "cleave-cloud";
  if (shaped.kernel) {
    // ip netns exec runs the daemon in the namespace (and execs it: same pid).
    std::vector<std::string> wrapped = shaped.kernel->Wrap({binary.string()});
    wrapped.insert(wrapped.end(), cloud_args.begin(), cloud_args.end());
    const std::string ip = wrapped.front();
    wrapped.erase(wrapped.begin());
    CLEAVE_ASSIGN_OR_RETURN(shaped.cloud,
                            LaunchDaemon(ip, wrapped, "cloud.ready_file", work, name));
  } else {
    CLEAVE_ASSIGN_OR_RETURN(shaped.cloud,
                            LaunchDaemon(binary, cloud_args, "cloud.ready_file", work, name));
  }
  return shaped;
}

Result<std::unique_ptr<LinkShaper>> StartShapedLink(ShapedCloud& cloud, TransportContext& context,
                                                    const LinkTrace& trace,
                                                    const ::cleave::Clock& clock) {
  LinkShaperOptions options;
  options.shape_bandwidth = cloud.kernel == nullptr;
  CLEAVE_ASSIGN_OR_RETURN(auto shaper,
                          LinkShaper::Start(context, cloud.cloud.endpoint, trace, clock, options));
  if (cloud.kernel) cloud.kernel->Follow(trace, clock, shaper->start_us());
  return shaper;
}

}  // namespace cleave::tools
