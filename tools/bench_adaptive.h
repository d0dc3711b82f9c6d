// `cleave bench adaptive` (issue 19): the offload policy against every static configuration
// of the bundle and an oracle, on a link whose bandwidth and round trip follow a scripted
// trace. See docs/design.md ("The adaptive benchmark") and docs/benchmarks.md.
//
// Set-up, all fixed before any result is looked at:
//  * processes: one cleave-cloud (tcp loopback, kept for the whole run); per configuration a
//    fresh LinkShaper relay in this process (tools/link_shaper.h: uplink bandwidth
//    serialization and half the RTT each way, following the trace) and a fresh cleave-edge
//    daemon connected to the cloud through it. The kernel's delay emulation (netem) is not
//    available on our machines, so the relay adds the delay; it shapes the bandwidth too. A
//    network namespace with a veth pair and `tc tbf` for the bandwidth (root only; tbf works
//    on our machines) would shape it in the kernel, TCP included: not built yet.
//  * the bundle: the one given, copied with `cleave split --add-split` when it has only its
//    deployment split (a raw cut: the most accurate option, whose features are far larger than
//    the bottleneck's), so the policy has split points with very different byte costs.
//  * configurations, one after the other on the same trace from its start: `adaptive`
//    (edge.offload_policy = slo with edge.slo_ms and edge.slo_percentile), then
//    `static_<split>_<threshold>` for every option of the bundle's offload menu
//    (edge/offload_menu.h; `static_local` = the exits answer everything), run by
//    edge.offload_policy = static with edge.static_option.
//  * requests: the same stream for every configuration: test images in a permutation fixed by
//    --seed, sent open loop at --rate per second, each with deadline --deadline-ms; the first
//    --warmup-seconds of requests (the link in its first step) only warm the edge up and are
//    not counted, then the relay restarts the trace and the counted requests start.
//  * every figure, the oracle, the best static configuration, the re-convergence counts and
//    the targets are defined in tools/adaptive_report.h and computed from the per-request
//    records.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/status.h"

namespace cleave::tools {

struct BenchAdaptiveOptions {
  std::string bundle;
  std::string work_dir;      // the bundle copy and the daemons' logs; "" = a temp directory
  std::string json_out;      // "" = stdout only
  std::string markdown_out;  // the report as markdown tables ("" = none)
  std::string data;          // dataset spec of the requests; "" = the bundle's own
  // SECONDS:BANDWIDTH:RTTms steps (tools/link_shaper.h); the last one lasts until `seconds`.
  std::string trace = "0:10mbit:5ms,8:200kbit:80ms,16:2mbit:20ms";
  // How the link is made (tools/shaped_cloud.h): auto (the kernel's tc tbf shapes the bandwidth
  // where the machine allows it, the relay adds the delay), kernel, or relay (shapes both).
  std::string link_mode = "auto";
  double seconds = 24;  // counted requests are sent for this long
  double slo_ms = 50;
  double slo_percentile = 0.95;
  double rate = 40;  // requests per second
  int deadline_ms = 200;
  double warmup_seconds = 1.0;
  uint32_t seed = 1;
  // Cuts added to the bench's copy of a bundle with one split point (cleave split --add-split).
  std::vector<std::string> add_splits = {"1"};
  // Static configurations to run (option specs, "local" or SPLIT:THRESHOLD); empty = every
  // option of the menu.
  std::vector<std::string> statics;
  std::string int8_engine = "onednn";  // the edge's (auto would time engines at every start)
  bool quick = false;                  // the short set-up of the tests (see --help)
};

// Runs every configuration and returns the JSON report (also written to json_out).
Result<nlohmann::json> RunBenchAdaptive(BenchAdaptiveOptions options);

// The report as markdown tables.
std::string BenchAdaptiveMarkdown(const nlohmann::json& report);

// Adds `bench adaptive` under `bench`.
void RegisterBenchAdaptiveCommand(CLI::App& bench);

}  // namespace cleave::tools
