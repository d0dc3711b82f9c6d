// The figures of `cleave bench adaptive` (tools/bench_adaptive.h), computed from per-request
// records alone so that every definition is unit-tested on synthetic runs.
//
// Definitions (also written into the report's `definitions`):
//  * window i: the requests sent while step i of the link trace was in force.
//  * SLO hit: answered within slo_ms, as the client measured it (send to reply). A request
//    without a reply is a miss, wrong, and counts its timeout as its latency.
//  * figures of a set of requests: slo_hit_rate (hits / requests), p99_ms (linearly
//    interpolated 99th percentile of the latencies), accuracy (correct / requests),
//    bytes_per_request_mean (what the requests put on the edge -> cloud wire / requests). An
//    empty set has no figures (JSON null) and takes part in no comparison.
//  * the pick among configurations for a target hit rate (PickConfiguration): the most
//    accurate whose hit rate >= the target; if none, the one with the highest hit rate. Ties:
//    the other figure (hit rate, resp. accuracy), then fewer bytes, then the earlier one.
//  * best static configuration: the pick among the static runs on their overall figures with
//    the target = the SLO percentile (what a user would configure for this SLO).
//  * oracle: knows the trace: in each window the pick among the static runs on that window's
//    figures (hindsight over the static runs); its overall figures are those of the union of
//    its picks' requests of their windows.
//  * re-convergence of window i (reconvergence_requests[i]; i = 0 counts from the run's start):
//    the requests of the window before the first one of the final run of requests served by
//    the option the policy ends the window with, i.e. from which on it keeps that option for
//    the rest of the window. Probes (the policy trying an option it does not serve with) and
//    requests without a reply neither count as a change nor end the run. 0: it never changed
//    option in the window; null: the window had no request with a known option.
//  * targets: adaptive's hit rate >= the best static's in every window that has requests;
//    adaptive's overall hit rate >= the oracle's - 0.02; adaptive's overall accuracy >= the
//    oracle's - 0.005 (being above the oracle meets both).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace cleave::tools {

// One request of one run, as the benchmark's client saw it.
struct AdaptiveRecord {
  int window = 0;         // trace step in force when it was sent
  bool answered = false;  // a reply arrived before the client's timeout
  double latency_ms = 0;  // send -> reply; the client's timeout when unanswered
  bool correct = false;
  double bytes = 0;    // what it put on the edge -> cloud wire
  std::string option;  // the offload option that served it ("0:0.9", "local"); "" = unknown
  bool probe = false;  // served by the policy's probe option
};

// The figures of a set of requests.
struct AdaptiveFigures {
  size_t requests = 0;  // 0: no figures
  double slo_hit_rate = 0;
  double p99_ms = 0;
  double accuracy = 0;
  double bytes_per_request_mean = 0;
};

// One configuration's run over the whole trace: its name (adaptive, static_0_0.9, ...) and
// its records in send order.
struct AdaptiveRun {
  std::string name;
  std::vector<AdaptiveRecord> records;
};

// The figures of `records` (see the file comment).
AdaptiveFigures SummarizeRecords(const std::vector<const AdaptiveRecord*>& records, double slo_ms);
// Of the records of `run` in `window` (all of them for window < 0).
AdaptiveFigures SummarizeWindow(const AdaptiveRun& run, int window, double slo_ms);

// The index into `figures` picked for `target_hit_rate` (see the file comment); -1 when no
// entry has requests.
int PickConfiguration(const std::vector<AdaptiveFigures>& figures, double target_hit_rate);

// Re-convergence of one window (see the file comment); `records` are that window's, in send
// order. nullopt when none has a known option.
std::optional<size_t> ReconvergenceRequests(const std::vector<const AdaptiveRecord*>& records);

// JSON of figures: {slo_hit_rate, p99_ms, accuracy, bytes_per_request_mean, requests}, null
// when there are no requests.
nlohmann::json FiguresJson(const AdaptiveFigures& figures);

// The whole analysis over `windows` trace steps: policies.<name> (overall figures of
// `adaptive`, every static run and the oracle), windows[i].<name>, best_static,
// oracle_picks[i], reconvergence_requests[i], targets, definitions.
nlohmann::json AnalyzeAdaptiveRuns(const AdaptiveRun& adaptive,
                                   const std::vector<AdaptiveRun>& statics, int windows,
                                   double slo_ms, double slo_percentile);

}  // namespace cleave::tools
