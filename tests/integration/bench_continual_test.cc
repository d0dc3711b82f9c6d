// `cleave bench continual --quick` as a user runs it: every section, the issue's JSON keys,
// the heat maps and plots, and clear errors for what it cannot run.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "common/file_util.h"
#include "testing/bin_dir.h"
#include "testing/tiny_bundle.h"

namespace cleave {
namespace {

namespace fs = std::filesystem;

class BenchContinualTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cleave_test_bench_continual_" + UniqueSuffix());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  int Run(const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {(kBin / "cleave").string(), "bench", "continual"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto child = ChildProcess::Spawn(argv, (dir_ / "log").string());
    EXPECT_TRUE(child.ok());
    if (!child.ok()) return -1;
    Result<int> code = (*child)->Wait(600000);
    return code.ok() ? *code : -1;
  }
  std::string Log() { return ReadFileToString(dir_ / "log").value_or(""); }
  fs::path dir_;
};

TEST_F(BenchContinualTest, QuickRunReportsEveryKeyOfTheIssue) {
  ASSERT_TRUE(testing::WriteTinyBundle(dir_ / "bundle", 0.9).ok());
  const fs::path json_path = dir_ / "report.json";
  ASSERT_EQ(Run({"--quick", "--seeds", "1", "--bundle", (dir_ / "bundle").string(), "--json",
                 json_path.string()}),
            0)
      << Log();
  const nlohmann::json report = nlohmann::json::parse(ReadFileToString(json_path).value());
  for (const char* method : {"naive", "ewc", "lwf", "er_200", "er_500", "derpp_500", "joint"}) {
    const auto& m = report.at("class_incremental").at(method);
    for (const char* key : {"acc", "bwt", "forgetting", "min_acc"}) {
      ASSERT_TRUE(m.at(key).is_number()) << method << " " << key;
      EXPECT_GE(m.at(key).get<double>(), -1.0);
      EXPECT_LE(m.at(key).get<double>(), 1.0);
    }
    EXPECT_EQ(m.at("matrix").size(), std::string(method) == "joint" ? 1u : 5u) << method;
    if (std::string(method) != "joint") {
      EXPECT_TRUE(fs::exists(m.at("plot").get<std::string>())) << method;
    }
  }
  EXPECT_TRUE(report.at("class_incremental").at("targets").contains("er_500_acc_met"));
  for (const char* mode : {"on", "off"}) {
    const auto& m = report.at("cloud_teacher").at(mode);
    for (const char* key :
         {"exit_rate_clean", "exit_rate_shift_start", "exit_rate_shift_end", "accuracy_clean_end",
          "accuracy_clean_start", "accuracy_shift_start", "accuracy_shift_end",
          "bytes_per_request_start", "bytes_per_request_end"}) {
      ASSERT_TRUE(m.at(key).is_number()) << mode << " " << key;
    }
  }
  // Off never adapts; on adapts at least once (the tiny model offloads almost everything).
  EXPECT_EQ(report.at("cloud_teacher").at("off").at("adaptation_cycles"), 0);
  EXPECT_GT(report.at("cloud_teacher").at("on").at("adaptation_cycles").get<int>(), 0);
  EXPECT_EQ(report.at("cloud_teacher").at("plots").size(), 2u);
  for (const char* method : {"er_500", "naive"}) {
    const auto& m = report.at("federated").at(method);
    ASSERT_TRUE(m.at("acc").is_number()) << method;
    ASSERT_TRUE(m.at("forgetting").is_number()) << method;
  }
}

TEST_F(BenchContinualTest, CloudTeacherWithoutABundleOrWithABadShiftSaysWhy) {
  EXPECT_NE(Run({"--quick", "--sections", "cloud_teacher"}), 0);
  EXPECT_NE(Log().find("--bundle"), std::string::npos) << Log();
  ASSERT_TRUE(testing::WriteTinyBundle(dir_ / "bundle").ok());
  EXPECT_NE(Run({"--quick", "--sections", "cloud_teacher", "--bundle", (dir_ / "bundle").string(),
                 "--shift", "fog:2"}),
            0);
  EXPECT_NE(Log().find("contrast:(0,1]"), std::string::npos) << Log();
  // Streams are 0..6 (7,000 training rows each below the validation rows).
  EXPECT_NE(Run({"--quick", "--sections", "cloud_teacher", "--bundle", (dir_ / "bundle").string(),
                 "--stream", "7"}),
            0);
  EXPECT_NE(Log().find("--stream"), std::string::npos) << Log();
}

}  // namespace
}  // namespace cleave
