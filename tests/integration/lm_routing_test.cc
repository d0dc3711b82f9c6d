// Integration: hard-token routing with real processes on loopback. `cleave train-lm`
// writes a tiny lm-split bundle; cleave-cloud serves its cloud layers; `cleave-edge
// generate` routes hard tokens to it. Killing the cloud mid-generation leaves generation to
// finish on the edge, marked degraded.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "common/file_util.h"
#include "edge/daemon_launcher.h"
#include "testing/tiny_bundle.h"

namespace cleave::edge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kBin = CLEAVE_BIN_DIR;

class LmRoutingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(cleave::testing::TempPath("lm_it"));
    fs::create_directories(*dir_);
    auto train =
        ChildProcess::Spawn({(kBin / "cleave").string(), "train-lm", "--out",
                             (*dir_ / "lm").string(), "--quick", "--model", "tiny", "--quiet"},
                            (*dir_ / "train.log").string());
    ASSERT_TRUE(train.ok()) << train.status().ToString();
    auto code = (*train)->Wait(300000);
    ASSERT_TRUE(code.ok() && *code == 0) << "train-lm failed; see " << (*dir_ / "train.log");
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*dir_, ec);
    delete dir_;
  }

  LaunchedDaemon StartCloud(const std::string& name) {
    auto cloud = LaunchDaemon(
        kBin / "cleave-cloud",
        {"--cloud.bundle", (*dir_ / "lm").string(), "--cloud.listen", "tcp://127.0.0.1:0"},
        "cloud.ready_file", *dir_, name);
    EXPECT_TRUE(cloud.ok()) << cloud.status().ToString();
    return cloud.ok() ? std::move(*cloud) : LaunchedDaemon{};
  }

  // Runs generate to completion; returns (exit code, stdout text, JSON summary).
  struct Generated {
    int code = -1;
    std::string text;
    json summary;
  };
  Generated Generate(const std::string& cloud, int max_tokens, const std::string& name,
                     std::function<void()> meanwhile = nullptr) {
    const fs::path log = *dir_ / (name + ".log");
    std::vector<std::string> argv = {(kBin / "cleave-edge").string(),
                                     "generate",
                                     "--bundle",
                                     (*dir_ / "lm").string(),
                                     "--prompt",
                                     "The cat ",
                                     "--max-tokens",
                                     std::to_string(max_tokens),
                                     "--threshold",
                                     "0.3",
                                     "--timeout-ms",
                                     "500",
                                     "--json"};
    if (!cloud.empty()) {
      argv.push_back("--cloud");
      argv.push_back(cloud);
    }
    auto child = ChildProcess::Spawn(argv, log.string());
    Generated g;
    EXPECT_TRUE(child.ok()) << child.status().ToString();
    if (!child.ok()) return g;
    if (meanwhile) meanwhile();
    auto code = (*child)->Wait(120000);
    EXPECT_TRUE(code.ok()) << code.status().ToString();
    g.code = code.ok() ? *code : -1;
    auto text = ReadFileToString(log.string());
    if (text.ok()) {
      g.text = *text;
      // The summary is the last line that parses as JSON.
      std::istringstream lines(*text);
      for (std::string line; std::getline(lines, line);) {
        if (!line.empty() && line[0] == '{') {
          auto parsed = json::parse(line, nullptr, false);
          if (!parsed.is_discarded()) g.summary = parsed;
        }
      }
    }
    return g;
  }

  static fs::path* dir_;
};

fs::path* LmRoutingTest::dir_ = nullptr;

TEST_F(LmRoutingTest, HardTokensGoToTheCloudProcess) {
  LaunchedDaemon cloud = StartCloud("cloud-a");
  ASSERT_NE(cloud.process, nullptr);
  const Generated g = Generate(cloud.endpoint, 60, "gen-a");
  ASSERT_EQ(g.code, 0) << g.text;
  ASSERT_TRUE(g.summary.is_object()) << g.text;
  EXPECT_EQ(g.summary["generated"], 60);
  EXPECT_GT(g.summary["routed"].get<int>(), 0) << g.text;
  EXPECT_EQ(g.summary["degraded"], 0) << g.text;
  EXPECT_GT(g.summary["bytes_sent"].get<int>(), 0);
  EXPECT_NE(g.text.find("The cat "), std::string::npos);
  ASSERT_TRUE(cloud.process->Stop(5000).ok());
  auto log = ReadFileToString(cloud.log_path.string());
  ASSERT_TRUE(log.ok());
  EXPECT_NE(log->find("predictions"), std::string::npos) << *log;
}

TEST_F(LmRoutingTest, KillingTheCloudMidGenerationFinishesDegraded) {
  LaunchedDaemon cloud = StartCloud("cloud-b");
  ASSERT_NE(cloud.process, nullptr);
  const fs::path log = *dir_ / "gen-b.log";
  const Generated g = Generate(cloud.endpoint, 4000, "gen-b", [&] {
    // Kill once generation is visibly under way (streamed bytes reach the log).
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    std::error_code ec;
    while (std::chrono::steady_clock::now() < give_up &&
           (!fs::exists(log, ec) || fs::file_size(log, ec) < 200)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(cloud.process->Signal(SIGKILL).ok());
  });
  ASSERT_EQ(g.code, 0) << g.text;
  ASSERT_TRUE(g.summary.is_object()) << g.text;
  EXPECT_EQ(g.summary["generated"], 4000);
  EXPECT_GT(g.summary["routed"].get<int>(), 0) << g.text;    // before the kill
  EXPECT_GT(g.summary["degraded"].get<int>(), 0) << g.text;  // after it
  EXPECT_NE(g.text.find("degraded"), std::string::npos);
}

TEST_F(LmRoutingTest, WithoutACloudGenerationIsEdgeOnlyAndSaysSo) {
  const Generated g = Generate("", 30, "gen-c");
  ASSERT_EQ(g.code, 0) << g.text;
  EXPECT_EQ(g.summary["routed"], 0);
  EXPECT_NE(g.text.find("edge alone"), std::string::npos) << g.text;
  // A missing bundle is a clear error and exit status 1.
  auto bad = ChildProcess::Spawn({(kBin / "cleave-edge").string(), "generate", "--bundle",
                                  (*dir_ / "nope").string(), "--prompt", "x"},
                                 (*dir_ / "gen-bad.log").string());
  ASSERT_TRUE(bad.ok());
  auto code = (*bad)->Wait(60000);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 1);
  auto text = ReadFileToString((*dir_ / "gen-bad.log").string());
  EXPECT_NE(text->find("cannot load"), std::string::npos) << *text;
}

}  // namespace
}  // namespace cleave::edge
