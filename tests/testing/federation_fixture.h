// Test support for integration tests that run a federation of real processes: a temporary
// directory with a tiny vision bundle, the aggregator and edge daemons the test launched
// (stopped in TearDown, before the directory goes), and the aggregator's JSON summary.
// The directory is kept when the test failed, for its daemons' logs.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "testing/tiny_bundle.h"
#include "tools/daemon_launcher.h"

namespace cleave::testing {

class FederationTest : public ::testing::Test {
 protected:
  // `dir_prefix` names the temporary directory (TempPath).
  explicit FederationTest(std::string dir_prefix) : dir_prefix_(std::move(dir_prefix)) {}

  void SetUp() override {
    dir_ = TempPath(dir_prefix_);
    std::filesystem::create_directories(dir_);
    bundle_ = dir_ / "bundle";
    ASSERT_TRUE(WriteTinyBundle(bundle_).ok());
  }
  void TearDown() override {
    edges_.clear();
    aggregator_.reset();
    std::error_code ec;
    if (!HasFailure()) std::filesystem::remove_all(dir_, ec);
  }

  // The aggregator's --aggregator.summary_file, which tests point at dir_/summary.json.
  nlohmann::json Summary() {
    auto text = ReadFileToString(dir_ / "summary.json");
    EXPECT_TRUE(text.ok()) << text.status().ToString();
    return text.ok() ? nlohmann::json::parse(*text) : nlohmann::json();
  }

  std::filesystem::path dir_, bundle_;
  std::unique_ptr<tools::LaunchedDaemon> aggregator_;
  std::vector<std::unique_ptr<tools::LaunchedDaemon>> edges_;

 private:
  std::string dir_prefix_;
};

}  // namespace cleave::testing
