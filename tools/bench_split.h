// `cleave bench split`: accuracy against bytes against latency for split inference, measured
// over the real wire against a cleave-cloud process on tcp loopback. See docs/benchmarks.md.
#pragma once

#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/status.h"

namespace cleave::tools {

struct BenchSplitOptions {
  std::string bundle;
  std::string json_out;      // where to write the report ("" = stdout only)
  std::string plot_out;      // PNG of accuracy vs bytes per request ("" = beside json)
  std::string markdown_out;  // the report as markdown tables (for docs/benchmarks.md)
  // Dataset spec of the test split (common/image_data.h); "" = the one the bundle declares
  // it was trained on (manifest "input"), Fashion-MNIST for older bundles.
  std::string data;
  int limit = 0;  // test images (0 = all)
  // A test split whose converted images (float32) exceed this is read an image at a time.
  int64_t memory_mb = 4096;
  int threads = 1;              // libtorch intra-op threads on both sides
  int timing_iterations = 300;  // batch-1 compute timings
  int deadline_ms = 1000;       // per request; generous: this measures, it does not stress
  std::string int8_engine = "auto";
  // Arithmetic of the cloud tail (in process and in the cleave-cloud it starts): fp32, bf16
  // or auto, as cloud.precision. When it is not fp32 the report also carries the fp32 tail's
  // accuracy, so the cost of bf16 is measured on this bundle.
  std::string tail_precision = "auto";
};

// Runs the whole benchmark and returns the JSON report (also written to json_out).
Result<nlohmann::json> RunBenchSplit(const BenchSplitOptions& options);

// The report as markdown: a table per configuration and the top-level figures and targets.
std::string BenchSplitMarkdown(const nlohmann::json& report);

// Adds `bench split` under `bench`.
void RegisterBenchSplitCommand(CLI::App& bench);

}  // namespace cleave::tools
