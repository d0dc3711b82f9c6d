// `cleave bench serve`: the cloud tail under load. A cleave-cloud process on tcp loopback
// serves the vision tail of a bundle; this process plays many edges at once (one DEALER
// socket per client, one load-generator thread) with real feature requests made by the
// bundle's int8 head from Fashion-MNIST test images. See docs/benchmarks.md.
//
// Phases:
//  1. compute ceiling: the same tail's batched throughput in process (no wire, no queue),
//     at the daemon's max batch size and thread count;
//  2. closed loop at increasing numbers of concurrent clients (each keeps one request in
//     flight), with the dynamic batcher and with batching disabled (max batch 1);
//  3. unloaded latency: one client, batcher on;
//  4. overload: an open-loop offered rate of `overload_factor` x the measured capacity for
//     `overload_seconds`; every request must be answered (served or `overloaded`), admitted
//     requests' p99 latency and the daemon's resident memory are watched.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/status.h"

namespace cleave::tools {

struct BenchServeOptions {
  std::string bundle;
  std::string json_out;      // "" = stdout only
  std::string markdown_out;  // the report as markdown tables ("" = none)
  std::string data;          // dataset spec of the request pool; "" = the bundle's own dataset
  int threads = 1;  // intra-op threads of the daemon's worker and of the in-process ceiling
  // Arithmetic of the tail in the daemons and in the ceiling: fp32, bf16 or auto (the
  // daemon's cloud.precision and its default).
  std::string tail_precision = "auto";
  std::vector<int> clients = {1, 4, 16, 64, 128};
  double seconds = 4.0;  // measured time per closed-loop point (after a 0.5 s warm-up)
  double overload_seconds = 20.0;
  double overload_factor = 3.0;  // offered rate / measured capacity in the overload phase
  int overload_clients = 32;     // sockets the open-loop load is spread over
  int max_batch = 64;
  int64_t max_queue_delay_us = 2000;
  int max_queue = 256;
  // cloud.max_queue_wait_us of the serving daemon, which the unloaded-latency and overload
  // phases run against (0 = off): admission by estimated queueing time, what keeps the
  // admitted requests' latency bounded under overload. The default is the batching delay:
  // an admitted request waits about as long as a lone one does.
  int64_t max_queue_wait_us = 2000;
  // cloud.max_queue_wait_us of the daemons of the throughput sweeps (a): 0, so they measure
  // what batching and no batching can serve, bounded by max_queue only. With a wait bound,
  // closed-loop clients that are refused back off and leave the worker idle, which measures
  // the clients' backoff rather than the batcher.
  int64_t throughput_queue_wait_us = 0;
  // A closed-loop client answered `overloaded` backs off this long, doubling per refusal in a
  // row (up to 32x), as a client honouring "retry later" does.
  double overloaded_backoff_ms = 1.0;
  int deadline_ms = 2000;  // per request
  int pool = 512;          // distinct test images whose features are sent
  // Request encoding (wire::kCompactProtocolVersion, what edges send by default, or 1).
  int wire_version = 2;
};

// Runs every phase and returns the JSON report (also written to json_out).
Result<nlohmann::json> RunBenchServe(const BenchServeOptions& options);

// The report as markdown tables (for docs/benchmarks.md).
std::string BenchServeMarkdown(const nlohmann::json& report);

// Adds `bench serve` under `bench`.
void RegisterBenchServeCommand(CLI::App& bench);

}  // namespace cleave::tools
