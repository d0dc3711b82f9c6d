#include "tools/adaptive_report.h"

#include <algorithm>

#include "tools/bench_util.h"

namespace cleave::tools {
namespace {

using nlohmann::json;

// Rates are ratios of counts: compare with a little room for rounding (19 / 20 vs 0.95).
constexpr double kAdaptiveRateEpsilon = 1e-9;

bool AdaptiveAtLeast(double value, double bound) { return value + kAdaptiveRateEpsilon >= bound; }

// Whether figures `a` are preferred to `b` after the primary criterion tied: the secondary
// figure (higher is better), then fewer bytes. Equal: false (the earlier index stays).
bool AdaptiveBreaksTie(double a_secondary, double b_secondary, const AdaptiveFigures& a,
                       const AdaptiveFigures& b) {
  if (a_secondary > b_secondary + kAdaptiveRateEpsilon) return true;
  if (a_secondary + kAdaptiveRateEpsilon < b_secondary) return false;
  return a.bytes_per_request_mean < b.bytes_per_request_mean;
}

const char* const kAdaptiveDefinitions[][2] = {
    {"window", "the requests sent while one step of the link trace was in force"},
    {"slo_hit",
     "answered within slo_ms as the client measured it (send to reply); no reply is a miss"},
    {"best_static",
     "the static configuration a user would pick for this SLO: the most accurate whose overall "
     "hit rate >= the SLO percentile, else the one with the highest hit rate (ties: the other "
     "figure, then fewer bytes)"},
    {"oracle",
     "knows the trace: per window, the static configuration that is most accurate among those "
     "whose hit rate in that window >= the SLO percentile, else the highest hit rate (hindsight "
     "over the static runs); overall figures over the union of its picks' requests"},
    {"reconvergence_requests",
     "per window (0 = from the run's start): requests before the adaptive policy settles on "
     "the option it then keeps for the rest of the window (probes and unanswered requests "
     "ignored); null when the window has none"},
    {"targets",
     "adaptive hit rate >= best static's in every window with requests; overall hit rate >= "
     "oracle's - 0.02; overall accuracy >= oracle's - 0.005"}};

}  // namespace

AdaptiveFigures SummarizeRecords(const std::vector<const AdaptiveRecord*>& records, double slo_ms) {
  AdaptiveFigures f;
  f.requests = records.size();
  if (records.empty()) return f;
  size_t hits = 0, correct = 0;
  double bytes = 0;
  std::vector<double> latencies;
  latencies.reserve(records.size());
  for (const AdaptiveRecord* r : records) {
    hits += r->answered && r->latency_ms <= slo_ms;
    correct += r->answered && r->correct;
    bytes += r->bytes;
    latencies.push_back(r->latency_ms);
  }
  const double n = static_cast<double>(records.size());
  f.slo_hit_rate = static_cast<double>(hits) / n;
  f.accuracy = static_cast<double>(correct) / n;
  f.bytes_per_request_mean = bytes / n;
  f.p99_ms = Percentile(std::move(latencies), 99);
  return f;
}

AdaptiveFigures SummarizeWindow(const AdaptiveRun& run, int window, double slo_ms) {
  std::vector<const AdaptiveRecord*> records;
  for (const AdaptiveRecord& r : run.records) {
    if (window < 0 || r.window == window) records.push_back(&r);
  }
  return SummarizeRecords(records, slo_ms);
}

int PickConfiguration(const std::vector<AdaptiveFigures>& figures, double target_hit_rate) {
  int meeting = -1, fastest = -1;
  for (size_t i = 0; i < figures.size(); ++i) {
    const AdaptiveFigures& f = figures[i];
    if (f.requests == 0) continue;
    const int index = static_cast<int>(i);
    if (AdaptiveAtLeast(f.slo_hit_rate, target_hit_rate)) {
      if (meeting < 0) {
        meeting = index;
      } else {
        const AdaptiveFigures& m = figures[static_cast<size_t>(meeting)];
        if (f.accuracy > m.accuracy + kAdaptiveRateEpsilon ||
            (AdaptiveAtLeast(f.accuracy, m.accuracy) &&
             AdaptiveBreaksTie(f.slo_hit_rate, m.slo_hit_rate, f, m))) {
          meeting = index;
        }
      }
    }
    if (fastest < 0) {
      fastest = index;
    } else {
      const AdaptiveFigures& b = figures[static_cast<size_t>(fastest)];
      if (f.slo_hit_rate > b.slo_hit_rate + kAdaptiveRateEpsilon ||
          (AdaptiveAtLeast(f.slo_hit_rate, b.slo_hit_rate) &&
           AdaptiveBreaksTie(f.accuracy, b.accuracy, f, b))) {
        fastest = index;
      }
    }
  }
  return meeting >= 0 ? meeting : fastest;
}

std::optional<size_t> ReconvergenceRequests(const std::vector<const AdaptiveRecord*>& records) {
  const AdaptiveRecord* last = nullptr;
  for (const AdaptiveRecord* r : records) {
    if (!r->probe && r->answered && !r->option.empty()) last = r;
  }
  if (last == nullptr) return std::nullopt;
  // Walk back from the end while the option holds; the run starts after the last other one.
  size_t start = 0;
  bool changed = false;
  for (size_t i = records.size(); i-- > 0;) {
    const AdaptiveRecord* r = records[i];
    if (r->probe || !r->answered || r->option.empty()) continue;
    if (r->option != last->option) {
      start = i + 1;
      changed = true;
      break;
    }
  }
  // Requests ignored at the start of the run (probes, unanswered) belong to the transition.
  while (changed && start < records.size() &&
         (records[start]->probe || !records[start]->answered || records[start]->option.empty())) {
    ++start;
  }
  return start;
}

json FiguresJson(const AdaptiveFigures& f) {
  if (f.requests == 0) return json();
  return {{"slo_hit_rate", f.slo_hit_rate},
          {"p99_ms", f.p99_ms},
          {"accuracy", f.accuracy},
          {"bytes_per_request_mean", f.bytes_per_request_mean},
          {"requests", f.requests}};
}

json AnalyzeAdaptiveRuns(const AdaptiveRun& adaptive, const std::vector<AdaptiveRun>& statics,
                         int windows, double slo_ms, double slo_percentile) {
  json report;
  json& policies = report["policies"];
  policies = json::object();
  policies[adaptive.name] = FiguresJson(SummarizeWindow(adaptive, -1, slo_ms));
  std::vector<AdaptiveFigures> overall;
  for (const AdaptiveRun& run : statics) {
    overall.push_back(SummarizeWindow(run, -1, slo_ms));
    policies[run.name] = FiguresJson(overall.back());
  }
  const int best = PickConfiguration(overall, slo_percentile);
  report["best_static"] = best >= 0 ? json(statics[static_cast<size_t>(best)].name) : json();

  json window_reports = json::array();
  json picks = json::array();
  json reconvergence = json::array();
  std::vector<const AdaptiveRecord*> oracle_records;
  bool every_window = true;
  for (int w = 0; w < windows; ++w) {
    json window = json::object();
    const AdaptiveFigures a = SummarizeWindow(adaptive, w, slo_ms);
    window[adaptive.name] = FiguresJson(a);
    std::vector<AdaptiveFigures> figures;
    for (const AdaptiveRun& run : statics) {
      figures.push_back(SummarizeWindow(run, w, slo_ms));
      window[run.name] = FiguresJson(figures.back());
    }
    const int pick = PickConfiguration(figures, slo_percentile);
    window["oracle"] = pick >= 0 ? window[statics[static_cast<size_t>(pick)].name] : json();
    picks.push_back(pick >= 0 ? json(statics[static_cast<size_t>(pick)].name) : json());
    if (pick >= 0) {
      for (const AdaptiveRecord& r : statics[static_cast<size_t>(pick)].records) {
        if (r.window == w) oracle_records.push_back(&r);
      }
    }
    if (best >= 0 && a.requests > 0 && figures[static_cast<size_t>(best)].requests > 0 &&
        !AdaptiveAtLeast(a.slo_hit_rate, figures[static_cast<size_t>(best)].slo_hit_rate)) {
      every_window = false;
    }
    std::vector<const AdaptiveRecord*> in_window;
    for (const AdaptiveRecord& r : adaptive.records) {
      if (r.window == w) in_window.push_back(&r);
    }
    const std::optional<size_t> settle = ReconvergenceRequests(in_window);
    reconvergence.push_back(settle ? json(*settle) : json());
    window_reports.push_back(window);
  }
  const AdaptiveFigures oracle = SummarizeRecords(oracle_records, slo_ms);
  policies["oracle"] = FiguresJson(oracle);
  report["windows"] = window_reports;
  report["oracle_picks"] = picks;
  report["reconvergence_requests"] = reconvergence;

  const AdaptiveFigures a = SummarizeWindow(adaptive, -1, slo_ms);
  const bool comparable = a.requests > 0 && oracle.requests > 0;
  report["targets"] = {
      {"adaptive_ge_best_static_every_window", best >= 0 && a.requests > 0 && every_window},
      {"adaptive_within_2pt_of_oracle",
       comparable && AdaptiveAtLeast(a.slo_hit_rate, oracle.slo_hit_rate - 0.02)},
      {"adaptive_accuracy_within_0.5pt_of_oracle",
       comparable && AdaptiveAtLeast(a.accuracy, oracle.accuracy - 0.005)}};
  json definitions = json::object();
  for (const auto& d : kAdaptiveDefinitions) definitions[d[0]] = d[1];
  report["definitions"] = definitions;
  return report;
}

}  // namespace cleave::tools
