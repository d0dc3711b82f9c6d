// The options an offload policy (edge/offload_policy.h) chooses from, read from a bundle:
// every split point crossed with every exit threshold of its calibrated sweep, plus the
// local-only option (the exits answer everything), each with the accuracy and exit share the
// bundle measured on held-out data, the edge and cloud milliseconds its latency profile
// predicts, and the request bytes its wire layout costs.
//
// A bundle without sweeps or a profile (made before issue 19, or imported) gives a menu of
// its calibrated option alone: the static policy's, whatever the policy kind.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "edge/offload_policy.h"
#include "split/split_runtime.h"

namespace cleave::edge {

struct OffloadMenu {
  std::vector<OffloadOption> options;
  int calibrated = 0;  // index of the bundle's calibrated option (split 0, its threshold)
};

// Bytes on the wire of a version 2 request whose features code to `coded_bytes` bytes: the
// packed Cap'n Proto envelope plus ZeroMQ's frame header, measured by encoding one.
double CompactRequestWireBytes(double coded_bytes);

// The menu of `model` (an edge model of a vision-split bundle; `int8`: the head runs int8).
// Never fails: what the bundle does not describe is left out (see the file comment).
OffloadMenu BuildOffloadMenu(const split::EdgeModel& model, bool int8);

// The option's name in configuration and reports: "local" for the local-only option, else
// "SPLIT:THRESHOLD" (the threshold as %g, "off" when the exits are off), e.g. "0:0.9", "1:off".
std::string OffloadOptionSpec(const OffloadOption& option);

// The menu index of the first option whose OffloadOptionSpec is `spec` (thresholds compare
// within 1e-6, so "0:0.90" finds 0:0.9). NotFound listing the menu's specs otherwise.
Result<int> FindOffloadOption(const OffloadMenu& menu, const std::string& spec);

// One line per option ("split 0 @0.75: acc 0.9248, exit 0.71, edge 0.20 ms, cloud 0.36 ms,
// 57 B"), for logs and --help of the benchmark.
std::string DescribeMenu(const OffloadMenu& menu);

}  // namespace cleave::edge
