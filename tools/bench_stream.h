// `cleave bench stream`: a camera-like source feeding cleave-edge's streaming input (edge.source,
// edge/stream_feeder.h) at several frame rates while the edge reaches cleave-cloud through a
// shaped link (tools/link_shaper.h). Per rate: the rate achieved, staleness, drops by reason,
// which side answered, accuracy of the answers and the edge daemon's memory. See
// docs/benchmarks.md.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/status.h"

namespace cleave::tools {

struct BenchStreamOptions {
  std::string bundle;
  std::string json_out;      // where to write the report ("" = stdout only)
  std::string markdown_out;  // the report as markdown tables (for docs/benchmarks.md)
  std::string data;          // dataset spec of the test split; "" = the bundle's own
  std::vector<int> rates = {30, 100, 1000};  // offered frames per second, one phase each
  double seconds = 10;                       // measured seconds per rate
  // The edge -> cloud link for the whole run (LinkTrace syntax: "AT:BANDWIDTH:RTT,...").
  std::string link = "0:2mbit:20ms";
  // How the link is made (tools/shaped_cloud.h): auto (the kernel's tc tbf where the machine
  // allows it, else the relay), kernel or relay.
  std::string link_mode = "auto";
  int pool = 500;         // distinct test images the frames cycle through
  int threads = 1;        // libtorch threads of each daemon
  int deadline_ms = 0;    // edge.deadline_ms of the edge daemon (0 = its default)
  int stream_window = 0;  // edge.stream_window (0 = the daemon's default)
};

// Runs every rate and returns the JSON report (also written to json_out):
//   rates.<fps>.{offered_fps, achieved_fps, received, answered, dropped, dropped_by_reason,
//                answered_by, accuracy, latency_p50_ms, latency_p99_ms, staleness_p50_ms,
//                staleness_p99_ms, rss_start_bytes, rss_max_bytes, peak_rss_bytes,
//                uplink_bytes}
// plus `targets` computed from those figures.
Result<nlohmann::json> RunBenchStream(const BenchStreamOptions& options);

// The report as markdown (docs/benchmarks.md).
std::string BenchStreamMarkdown(const nlohmann::json& report);

// What one rate's result lines say, for RunBenchStream and its tests. `lines` are the JSON
// lines the feeder wrote (edge/stream_feeder.h); only those of `stream` count. labels[i] is the
// true class of the stream's frame seq i + 1 (frames beyond labels count as unlabeled).
// InvalidArgument for a line that is not JSON or lacks its stream's fields.
struct StreamTally {
  uint64_t received = 0;
  uint64_t answered = 0;
  uint64_t dropped = 0;
  uint64_t correct = 0;  // answered with the label's class (degraded answers included)
  nlohmann::json dropped_by_reason = nlohmann::json::object();
  nlohmann::json answered_by = nlohmann::json::object();
  std::vector<double> latency_ms;    // answered frames
  std::vector<double> staleness_ms;  // answered frames
};
Result<StreamTally> TallyStreamLines(const std::string& lines, const std::string& stream,
                                     const std::vector<int64_t>& labels);

// Adds `bench stream` under `bench`.
void RegisterBenchStreamCommand(CLI::App& bench);

}  // namespace cleave::tools
