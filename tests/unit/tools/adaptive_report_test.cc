// The figures of `cleave bench adaptive` on synthetic per-request records: windows, the best
// static configuration, the oracle, re-convergence and the targets, with ties and empty
// windows (tools/adaptive_report.h defines each).
#include "tools/adaptive_report.h"

#include <gtest/gtest.h>

namespace cleave::tools {
namespace {

constexpr double kSlo = 50;

// `n` records in `window`: the first `hits` answered in 10 ms, the rest in 100 ms; the first
// `correct` right; `bytes` each; served by `option`.
std::vector<AdaptiveRecord> Records(int window, int n, int hits, int correct, double bytes = 0,
                                    const std::string& option = "0:0.9") {
  std::vector<AdaptiveRecord> out(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    AdaptiveRecord& r = out[static_cast<size_t>(i)];
    r.window = window;
    r.answered = true;
    r.latency_ms = i < hits ? 10 : 100;
    r.correct = i < correct;
    r.bytes = bytes;
    r.option = option;
  }
  return out;
}

AdaptiveRun MakeRun(const std::string& name, std::vector<std::vector<AdaptiveRecord>> parts) {
  AdaptiveRun run;
  run.name = name;
  for (auto& part : parts) run.records.insert(run.records.end(), part.begin(), part.end());
  return run;
}

std::vector<const AdaptiveRecord*> Pointers(const std::vector<AdaptiveRecord>& records) {
  std::vector<const AdaptiveRecord*> out;
  for (const AdaptiveRecord& r : records) out.push_back(&r);
  return out;
}

AdaptiveFigures Figures(double hit, double accuracy, double bytes = 0, size_t requests = 100) {
  AdaptiveFigures f;
  f.requests = requests;
  f.slo_hit_rate = hit;
  f.accuracy = accuracy;
  f.bytes_per_request_mean = bytes;
  return f;
}

TEST(AdaptiveReportTest, FiguresCountHitsAccuracyAndBytesOverEveryRequest) {
  std::vector<AdaptiveRecord> records = Records(0, 4, 3, 2, 100);
  records[3].answered = false;  // a miss and wrong, whatever else it says
  records[3].correct = true;
  records[3].latency_ms = 2200;
  records[0].latency_ms = kSlo;  // exactly at the objective is a hit
  const AdaptiveFigures f = SummarizeRecords(Pointers(records), kSlo);
  EXPECT_EQ(f.requests, 4u);
  EXPECT_DOUBLE_EQ(f.slo_hit_rate, 0.75);
  EXPECT_DOUBLE_EQ(f.accuracy, 0.5);
  EXPECT_DOUBLE_EQ(f.bytes_per_request_mean, 100);
  // The unanswered request's timeout is in the tail: p99 lies between 10 and 2200 ms.
  EXPECT_GT(f.p99_ms, 1000);
  EXPECT_LE(f.p99_ms, 2200);
}

TEST(AdaptiveReportTest, AnEmptySetHasNoFigures) {
  const AdaptiveFigures f = SummarizeRecords({}, kSlo);
  EXPECT_EQ(f.requests, 0u);
  EXPECT_TRUE(FiguresJson(f).is_null());
  const AdaptiveRun run = MakeRun("adaptive", {Records(0, 5, 5, 5)});
  EXPECT_EQ(SummarizeWindow(run, 1, kSlo).requests, 0u);
  EXPECT_EQ(SummarizeWindow(run, -1, kSlo).requests, 5u);
  const nlohmann::json j = FiguresJson(SummarizeWindow(run, 0, kSlo));
  for (const char* key : {"slo_hit_rate", "p99_ms", "accuracy", "bytes_per_request_mean"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
}

TEST(AdaptiveReportTest, PickIsTheMostAccurateMeetingTheTarget) {
  // 1 is more accurate but misses; 2 meets and beats 0 on accuracy.
  EXPECT_EQ(
      PickConfiguration({Figures(0.99, 0.80), Figures(0.90, 0.95), Figures(0.96, 0.85)}, 0.95), 2);
  // Exactly at the target meets it (19 of 20).
  EXPECT_EQ(PickConfiguration({Figures(1.0, 0.80), Figures(19.0 / 20.0, 0.9)}, 0.95), 1);
}

TEST(AdaptiveReportTest, PickFallsBackToTheHighestHitRateWhenNoneMeets) {
  EXPECT_EQ(PickConfiguration({Figures(0.50, 0.95), Figures(0.90, 0.70), Figures(0.80, 0.9)}, 0.95),
            1);
}

TEST(AdaptiveReportTest, PickBreaksTiesByTheOtherFigureThenBytesThenOrder) {
  // Equal accuracy among those meeting: the higher hit rate.
  EXPECT_EQ(PickConfiguration({Figures(0.96, 0.9), Figures(0.99, 0.9)}, 0.95), 1);
  // Equal accuracy and hit rate: fewer bytes.
  EXPECT_EQ(PickConfiguration({Figures(0.99, 0.9, 500), Figures(0.99, 0.9, 50)}, 0.95), 1);
  // Equal in everything: the earlier one.
  EXPECT_EQ(PickConfiguration({Figures(0.99, 0.9, 50), Figures(0.99, 0.9, 50)}, 0.95), 0);
  // None meets, equal hit rates: the more accurate.
  EXPECT_EQ(PickConfiguration({Figures(0.5, 0.7), Figures(0.5, 0.8)}, 0.95), 1);
}

TEST(AdaptiveReportTest, PickSkipsConfigurationsWithoutRequests) {
  EXPECT_EQ(PickConfiguration({Figures(1.0, 1.0, 0, 0), Figures(0.5, 0.5)}, 0.95), 1);
  EXPECT_EQ(PickConfiguration({Figures(1.0, 1.0, 0, 0)}, 0.95), -1);
  EXPECT_EQ(PickConfiguration({}, 0.95), -1);
}

TEST(AdaptiveReportTest, ReconvergenceCountsRequestsBeforeTheFinalOptionHeld) {
  std::vector<AdaptiveRecord> records = Records(1, 10, 10, 10, 0, "local");
  EXPECT_EQ(ReconvergenceRequests(Pointers(records)), 0u);  // never changed
  for (int i = 0; i < 3; ++i) records[static_cast<size_t>(i)].option = "1:off";
  EXPECT_EQ(ReconvergenceRequests(Pointers(records)), 3u);
  // Flip-flopping: the final run starts after the last other option.
  records[6].option = "0:0.9";
  EXPECT_EQ(ReconvergenceRequests(Pointers(records)), 7u);
}

TEST(AdaptiveReportTest, ReconvergenceIgnoresProbesAndUnansweredRequests) {
  std::vector<AdaptiveRecord> records = Records(0, 8, 8, 8, 0, "local");
  records[0].option = "1:off";
  records[1].option = "0:0.9";  // a probe of another option: no change
  records[1].probe = true;
  records[4].option = "0:0.9";
  records[4].probe = true;
  records[5].answered = false;  // unknown option
  records[5].option.clear();
  // The run of "local" starts at 2 (1 was a probe, inside the transition).
  EXPECT_EQ(ReconvergenceRequests(Pointers(records)), 2u);
  // A window of probes and unanswered requests only: no answer.
  std::vector<AdaptiveRecord> probes = Records(0, 3, 3, 3);
  for (AdaptiveRecord& r : probes) r.probe = true;
  EXPECT_FALSE(ReconvergenceRequests(Pointers(probes)).has_value());
  EXPECT_FALSE(ReconvergenceRequests({}).has_value());
}

// Two windows; static_fast meets the SLO everywhere at lower accuracy, static_accurate only in
// window 0. The best static is static_fast, the oracle takes static_accurate in window 0 and
// static_fast in window 1.
TEST(AdaptiveReportTest, BestStaticAndOracleFromTheStaticRuns) {
  const AdaptiveRun fast =
      MakeRun("static_local", {Records(0, 100, 100, 80), Records(1, 100, 100, 80)});
  const AdaptiveRun accurate =
      MakeRun("static_1_off", {Records(0, 100, 100, 95, 3000), Records(1, 100, 40, 95, 3000)});
  const AdaptiveRun adaptive = MakeRun(
      "adaptive", {Records(0, 100, 99, 95, 2970, "1:off"), Records(1, 100, 98, 80, 0, "local")});
  const nlohmann::json r = AnalyzeAdaptiveRuns(adaptive, {fast, accurate}, 2, kSlo, 0.95);
  EXPECT_EQ(r["best_static"], "static_local");
  EXPECT_EQ(r["oracle_picks"][0], "static_1_off");
  EXPECT_EQ(r["oracle_picks"][1], "static_local");
  // The oracle overall: the union of its picks' windows.
  const nlohmann::json& oracle = r["policies"]["oracle"];
  EXPECT_EQ(oracle["requests"], 200);
  EXPECT_DOUBLE_EQ(oracle["slo_hit_rate"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(oracle["accuracy"].get<double>(), (95 + 80) / 200.0);
  EXPECT_DOUBLE_EQ(oracle["bytes_per_request_mean"].get<double>(), 1500);
  EXPECT_EQ(r["windows"][0]["oracle"], r["windows"][0]["static_1_off"]);
  for (const char* name : {"adaptive", "static_local", "static_1_off"}) {
    EXPECT_TRUE(r["policies"].contains(name)) << name;
    EXPECT_TRUE(r["windows"][1].contains(name)) << name;
  }
  // Adaptive: 99 % and 98 % against the best static's 100 %: below it in every window.
  EXPECT_FALSE(r["targets"]["adaptive_ge_best_static_every_window"].get<bool>());
  // 98.5 % vs the oracle's 100 %: within 2 points; accuracy 87.5 % vs 87.5 %.
  EXPECT_TRUE(r["targets"]["adaptive_within_2pt_of_oracle"].get<bool>());
  EXPECT_TRUE(r["targets"]["adaptive_accuracy_within_0.5pt_of_oracle"].get<bool>());
  EXPECT_EQ(r["reconvergence_requests"][0], 0);
  EXPECT_EQ(r["reconvergence_requests"][1], 0);
  EXPECT_TRUE(r.contains("definitions"));
}

TEST(AdaptiveReportTest, TargetsCompareWithTheStatedMargins) {
  const AdaptiveRun fast =
      MakeRun("static_local", {Records(0, 100, 96, 80), Records(1, 100, 96, 80)});
  // Equal to the best static (and the oracle) in each window: ties meet ">="; but 1 point
  // less accurate than the oracle.
  const AdaptiveRun adaptive =
      MakeRun("adaptive", {Records(0, 100, 96, 78), Records(1, 100, 96, 80)});
  nlohmann::json r = AnalyzeAdaptiveRuns(adaptive, {fast}, 2, kSlo, 0.95);
  EXPECT_TRUE(r["targets"]["adaptive_ge_best_static_every_window"].get<bool>());
  EXPECT_TRUE(r["targets"]["adaptive_within_2pt_of_oracle"].get<bool>());
  EXPECT_FALSE(r["targets"]["adaptive_accuracy_within_0.5pt_of_oracle"].get<bool>());
  // 2.5 points below the oracle's hit rate overall: outside 2 points.
  const AdaptiveRun slow = MakeRun("adaptive", {Records(0, 100, 94, 80), Records(1, 100, 93, 80)});
  r = AnalyzeAdaptiveRuns(slow, {fast}, 2, kSlo, 0.95);
  EXPECT_FALSE(r["targets"]["adaptive_within_2pt_of_oracle"].get<bool>());
  EXPECT_TRUE(r["targets"]["adaptive_accuracy_within_0.5pt_of_oracle"].get<bool>());
}

TEST(AdaptiveReportTest, EmptyWindowsHaveNullFiguresAndTakeNoPartInTheTargets) {
  const AdaptiveRun fast =
      MakeRun("static_local", {Records(0, 50, 50, 40), Records(2, 50, 50, 40)});
  const AdaptiveRun adaptive =
      MakeRun("adaptive", {Records(0, 50, 50, 45, 0, "local"), Records(2, 50, 50, 45, 0, "local")});
  const nlohmann::json r = AnalyzeAdaptiveRuns(adaptive, {fast}, 3, kSlo, 0.95);
  ASSERT_EQ(r["windows"].size(), 3u);
  EXPECT_TRUE(r["windows"][1]["adaptive"].is_null());
  EXPECT_TRUE(r["windows"][1]["oracle"].is_null());
  EXPECT_TRUE(r["oracle_picks"][1].is_null());
  EXPECT_TRUE(r["reconvergence_requests"][1].is_null());
  EXPECT_TRUE(r["targets"]["adaptive_ge_best_static_every_window"].get<bool>());
  EXPECT_TRUE(r["targets"]["adaptive_within_2pt_of_oracle"].get<bool>());
  // Without any static run nothing is comparable: no target is met.
  const nlohmann::json alone = AnalyzeAdaptiveRuns(adaptive, {}, 3, kSlo, 0.95);
  EXPECT_TRUE(alone["best_static"].is_null());
  EXPECT_FALSE(alone["targets"]["adaptive_ge_best_static_every_window"].get<bool>());
  EXPECT_FALSE(alone["targets"]["adaptive_within_2pt_of_oracle"].get<bool>());
}

}  // namespace
}  // namespace cleave::tools
