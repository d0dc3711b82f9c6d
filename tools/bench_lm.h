// `cleave bench lm`: hard-token routing measured over the real wire. The edge side (this
// process) runs edge/lm_router.h on held-out fortunes text against a cleave-cloud process
// serving the same lm-split bundle on tcp loopback, in three configurations:
//   cloud_only  raw token bytes go up, the cloud runs every layer for every token;
//   edge_only   the exit head answers every token, nothing goes up;
//   routed      the bundle's calibrated threshold; plus a sweep of thresholds for the plot.
// Text is scored teacher-forced in sessions of the context length (non-overlapping windows
// of context + 1 bytes, as calibration scores them): each byte is fed as generation would
// feed its own output, and the distribution used for the next byte is scored. Bytes are
// what the edge's socket sends: every request (the End of each session too) with its ZMTP
// frame header. See
// docs/benchmarks.md for the keys and the targets of issue 4.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/status.h"

namespace cleave::tools {

struct BenchLmOptions {
  std::string bundle;
  std::string json_out;      // where to write the report ("" = stdout only)
  std::string plot_out;      // PNG of bits per character vs routed fraction ("" = beside json)
  std::string markdown_out;  // the report as markdown tables (for docs/benchmarks.md)
  std::string corpus;        // fortunes directory ("" = the Debian package's)
  int64_t bytes = 32768;     // held-out bytes scored per configuration (rounded to windows)
  int threads = 1;           // libtorch intra-op threads on both sides
  int timeout_ms = 5000;     // per cloud request; generous: this measures, it does not stress
  // Threshold 1 routes every token through the split path (the u8 code's cost against the
  // cloud-only fp32 code shows there).
  std::vector<double> sweep = {0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0};
};

// Runs the whole benchmark and returns the JSON report (also written to json_out).
Result<nlohmann::json> RunBenchLm(const BenchLmOptions& options);

// The report as markdown tables: configurations, sweep, top-level figures and targets.
std::string BenchLmMarkdown(const nlohmann::json& report);

// Adds `bench lm` under `bench`.
void RegisterBenchLmCommand(CLI::App& bench);

}  // namespace cleave::tools
