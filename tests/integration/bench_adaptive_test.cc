// `cleave bench adaptive --quick` as a user runs it: a real cleave-cloud, the in-process link
// relay following a two-step trace, a real cleave-edge per configuration, over loopback, with
// the bundle the integration suites share (testing/trained_bundles.h). Checks that the report
// has every key of the issue with sane values; the figures themselves are the benchmark's.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "common/file_util.h"
#include "testing/bin_dir.h"
#include "testing/trained_bundles.h"

namespace cleave {
namespace {

namespace fs = std::filesystem;

class BenchAdaptiveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto bundle = testing::EnsureTrainedBundle(testing::VisionQuickBundle());
    ASSERT_TRUE(bundle.ok()) << bundle.status().ToString();
    bundle_ = *bundle;
    dir_ = fs::temp_directory_path() / ("cleave_test_bench_adaptive_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  int Run(const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {
        (kBin / "cleave").string(), "bench", "adaptive", "--bundle", bundle_.string(), "--work-dir",
        (dir_ / "work").string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto child = ChildProcess::Spawn(argv, (dir_ / "log").string());
    EXPECT_TRUE(child.ok()) << child.status().ToString();
    if (!child.ok()) return -1;
    Result<int> code = (*child)->Wait(900000);
    return code.ok() ? *code : -1;
  }
  std::string Log() { return ReadFileToString(dir_ / "log").value_or("(no log)"); }

  fs::path bundle_;
  fs::path dir_;
};

void ExpectFigures(const nlohmann::json& f, const std::string& where) {
  ASSERT_TRUE(f.is_object()) << where;
  for (const char* key : {"slo_hit_rate", "p99_ms", "accuracy", "bytes_per_request_mean"}) {
    ASSERT_TRUE(f.contains(key) && f[key].is_number()) << where << "." << key;
  }
  EXPECT_GE(f["slo_hit_rate"].get<double>(), 0.0) << where;
  EXPECT_LE(f["slo_hit_rate"].get<double>(), 1.0) << where;
  EXPECT_GE(f["accuracy"].get<double>(), 0.0) << where;
  EXPECT_LE(f["accuracy"].get<double>(), 1.0) << where;
  EXPECT_GT(f["p99_ms"].get<double>(), 0.0) << where;
  EXPECT_GE(f["bytes_per_request_mean"].get<double>(), 0.0) << where;
}

TEST_F(BenchAdaptiveTest, QuickRunReportsEveryKeyOfTheIssue) {
  const fs::path json_path = dir_ / "adaptive.json";
  ASSERT_EQ(
      Run({"--quick", "--json", json_path.string(), "--markdown", (dir_ / "adaptive.md").string()}),
      0)
      << Log();
  auto text = ReadFileToString(json_path);
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  const nlohmann::json report = nlohmann::json::parse(*text);

  const nlohmann::json& policies = report.at("policies");
  ExpectFigures(policies.at("adaptive"), "policies.adaptive");
  ExpectFigures(policies.at("oracle"), "policies.oracle");
  int statics = 0;
  for (const auto& [name, figures] : policies.items()) {
    if (name.rfind("static_", 0) != 0) continue;
    ++statics;
    ExpectFigures(figures, "policies." + name);
    // The same request stream for every configuration: 6 s at 25 per second.
    EXPECT_EQ(figures["requests"], 150) << name;
  }
  // --quick: the calibrated option, local only, and each split point with its exits off
  // (the bench added a raw cut to the one-split bundle).
  EXPECT_GE(statics, 3);
  ASSERT_TRUE(policies.contains("static_local"));
  EXPECT_DOUBLE_EQ(policies["static_local"]["bytes_per_request_mean"].get<double>(), 0.0);
  EXPECT_EQ(report["setup"]["split_points_added"].size(), 1u);
  // The adaptive policy answered (almost) everything it was sent, with a useful accuracy.
  EXPECT_GT(policies["adaptive"]["accuracy"].get<double>(), 0.3);

  const nlohmann::json& windows = report.at("windows");
  ASSERT_EQ(windows.size(), 2u);  // the quick trace has two steps
  for (size_t i = 0; i < windows.size(); ++i) {
    ExpectFigures(windows[i].at("adaptive"), "windows[" + std::to_string(i) + "].adaptive");
    ExpectFigures(windows[i].at("oracle"), "windows[" + std::to_string(i) + "].oracle");
    ExpectFigures(windows[i].at("static_local"), "windows[" + std::to_string(i) + "].static_local");
    EXPECT_TRUE(report["oracle_picks"][i].is_string());
  }
  ASSERT_EQ(report.at("reconvergence_requests").size(), 2u);
  for (const auto& r : report["reconvergence_requests"]) {
    ASSERT_TRUE(r.is_number_integer()) << r;
    EXPECT_GE(r.get<int>(), 0);
    EXPECT_LE(r.get<int>(), 150);
  }
  EXPECT_TRUE(report["best_static"].is_string());
  for (const char* target :
       {"adaptive_ge_best_static_every_window", "adaptive_within_2pt_of_oracle",
        "adaptive_accuracy_within_0.5pt_of_oracle"}) {
    ASSERT_TRUE(report["targets"].contains(target)) << target;
    EXPECT_TRUE(report["targets"][target].is_boolean()) << target;
  }
  auto markdown = ReadFileToString(dir_ / "adaptive.md");
  ASSERT_TRUE(markdown.ok());
  EXPECT_NE(markdown->find("| `adaptive` |"), std::string::npos) << *markdown;
}

// Checked before anything starts (an option missing from the menu is refused by
// FindOffloadOption, tested in tests/unit/edge/offload_menu_test.cc).
TEST_F(BenchAdaptiveTest, RefusesABadTraceOrOneLongerThanTheRun) {
  EXPECT_NE(Run({"--trace", "0:10mbit:5ms,2:fast:80ms"}), 0);
  EXPECT_NE(Log().find("link trace step"), std::string::npos) << Log();
  EXPECT_NE(Run({"--trace", "0:10mbit:5ms,30:1mbit:5ms", "--seconds", "20"}), 0);
  EXPECT_NE(Log().find("not before --seconds"), std::string::npos) << Log();
}

}  // namespace
}  // namespace cleave
