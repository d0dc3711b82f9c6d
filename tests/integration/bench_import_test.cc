// `cleave bench import --quick` as a user runs it: trains the example PyTorch model with
// python3 (skipped without python3-torch), imports it, serves it with a real cleave-cloud and
// reports the issue's JSON keys.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "common/file_util.h"
#include "testing/bin_dir.h"

namespace cleave {
namespace {

namespace fs = std::filesystem;

class BenchImportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cleave_test_bench_import_" + UniqueSuffix());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  int Run(const std::vector<std::string>& extra,
          const std::string& script = std::string(CLEAVE_SOURCE_DIR) +
                                      "/examples/train_fashion_mnist.py") {
    std::vector<std::string> argv = {
        (kBin / "cleave").string(), "bench", "import", "--work-dir", (dir_ / "work").string(),
        "--example-script",         script};
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

TEST_F(BenchImportTest, QuickRunReportsEveryKeyOfTheIssue) {
  if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "python3-torch is not installed (scripts/test installs it)";
  }
  const fs::path json_path = dir_ / "report.json";
  ASSERT_EQ(Run({"--quick", "--datasets", "fashion_mnist", "--threads", "1", "--json",
                 json_path.string()}),
            0)
      << Log();
  auto text = ReadFileToString(json_path);
  ASSERT_TRUE(text.ok());
  const nlohmann::json report = nlohmann::json::parse(*text);
  const nlohmann::json& fm = report.at("fashion_mnist");
  EXPECT_GT(fm.at("imported_accuracy").get<double>(), 0.5);
  EXPECT_GT(fm.at("import_seconds").get<double>(), 0.0);
  EXPECT_GT(fm.at("int8_ops_fraction").get<double>(), 0.5);
  for (const char* config :
       {"local_fp32", "cloud_png", "cloud_jpeg", "split_no_exit", "split_exit"}) {
    EXPECT_TRUE(fm.at("configs").at(config).contains("accuracy")) << config;
    EXPECT_TRUE(fm.at("configs").at(config).contains("bytes_per_request_mean")) << config;
  }
  EXPECT_GT(fm["configs"]["cloud_png"]["bytes_per_request_mean"].get<double>(),
            fm["configs"]["split_no_exit"]["bytes_per_request_mean"].get<double>());
  EXPECT_TRUE(fm.at("targets").contains("split_exit_within_0.5pt"));
}

TEST_F(BenchImportTest, RefusesUnknownDatasetsAndAMissingScript) {
  EXPECT_NE(Run({"--datasets", "imagenet"}), 0);
  EXPECT_NE(Log().find("fashion_mnist and rgb_folder"), std::string::npos) << Log();
  EXPECT_NE(Run({"--datasets", "fashion_mnist"}, "/nowhere/train.py"), 0);
  EXPECT_NE(Log().find("/nowhere/train.py not found"), std::string::npos) << Log();
}

}  // namespace
}  // namespace cleave
