// Integration: CURVE between real processes. cleave-cloud runs with its CURVE key and an
// allow list; a cleave-edge whose key is listed gets cloud answers, one with an unknown key
// and one without CURVE are refused (their inputs degrade at the edge), the refusals are
// logged, and the cloud keeps serving. A CURVE key without an allow list is a start-up error.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "common/file_util.h"
#include "testing/bin_dir.h"
#include "testing/tiny_bundle.h"
#include "tools/daemon_launcher.h"

namespace cleave::edge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using tools::LaunchDaemon;

const char kImages[] = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";

class CurveTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = cleave::testing::TempPath("curve_it");
    fs::create_directories(dir_);
    // Threshold above any probability: every input is offloaded to the cloud.
    ASSERT_TRUE(cleave::testing::WriteTinyBundle(dir_ / "bundle", 1.5).ok());
    for (const char* name : {"cloud", "edge-a", "edge-b"}) {
      ASSERT_EQ(Run({(kBin / "cleave").string(), "keys", "generate", "--type", "curve", "--out",
                     (dir_ / name).string()},
                    std::string("keys-") + name),
                0);
    }
    ASSERT_TRUE(fs::copy_file(dir_ / "edge-a.pub", dir_ / "allow"));
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  int Run(const std::vector<std::string>& argv, const std::string& name) {
    auto child = ChildProcess::Spawn(argv, (dir_ / (name + ".log")).string());
    EXPECT_TRUE(child.ok()) << child.status().ToString();
    if (!child.ok()) return -1;
    auto code = (*child)->Wait(120000);
    return code.ok() ? *code : -1;
  }
  // Classifies 4 test images through `endpoint`; returns each answer's source.
  std::vector<std::string> Classify(const std::string& endpoint, const std::string& name,
                                    const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {(kBin / "cleave-edge").string(),
                                     "classify",
                                     "--edge.bundle",
                                     (dir_ / "bundle").string(),
                                     "--edge.cloud",
                                     endpoint,
                                     "--limit",
                                     "4",
                                     "--json",
                                     kImages};
    argv.insert(argv.end(), extra.begin(), extra.end());
    EXPECT_EQ(Run(argv, name), 0);
    std::vector<std::string> sources;
    std::ifstream in(dir_ / (name + ".log"));
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("{\"", 0) != 0) continue;
      const json answer = json::parse(line, nullptr, false);
      if (answer.is_object()) sources.push_back(answer.value("source", "?"));
    }
    return sources;
  }
  fs::path dir_;
};

TEST_F(CurveTransportTest, OnlyListedEdgesAreServed) {
  auto cloud =
      LaunchDaemon(kBin / "cleave-cloud",
                   {"--cloud.bundle", (dir_ / "bundle").string(), "--cloud.listen",
                    "tcp://127.0.0.1:0", "--cloud.curve_secret_key", (dir_ / "cloud.key").string(),
                    "--cloud.curve_allow_list", (dir_ / "allow").string()},
                   "cloud.ready_file", dir_, "cloud");
  ASSERT_TRUE(cloud.ok()) << cloud.status().ToString();
  const std::string cloud_pub = (dir_ / "cloud.pub").string();

  const auto listed = Classify(cloud->endpoint, "edge-a",
                               {"--edge.curve_secret_key", (dir_ / "edge-a.key").string(),
                                "--edge.cloud_curve_public_key", cloud_pub});
  ASSERT_EQ(listed.size(), 4u);
  for (const auto& source : listed) EXPECT_EQ(source, "cloud");

  const auto unknown = Classify(cloud->endpoint, "edge-b",
                                {"--edge.curve_secret_key", (dir_ / "edge-b.key").string(),
                                 "--edge.cloud_curve_public_key", cloud_pub});
  ASSERT_EQ(unknown.size(), 4u);
  for (const auto& source : unknown) EXPECT_EQ(source, "degraded");
  const auto plain = Classify(cloud->endpoint, "edge-plain", {});
  ASSERT_EQ(plain.size(), 4u);
  for (const auto& source : plain) EXPECT_EQ(source, "degraded");

  // Still serving the listed edge after the refusals; the refusal was logged.
  const auto again = Classify(cloud->endpoint, "edge-a2",
                              {"--edge.curve_secret_key", (dir_ / "edge-a.key").string(),
                               "--edge.cloud_curve_public_key", cloud_pub});
  ASSERT_EQ(again.size(), 4u);
  EXPECT_EQ(again[0], "cloud");
  EXPECT_TRUE(cloud->process->Running());
  ASSERT_TRUE(cloud->process->Stop(5000).ok());
  const std::string log = ReadFileToString(cloud->log_path).value_or("");
  EXPECT_NE(log.find("refused CURVE client"), std::string::npos) << log;

  // A key without an allow list: refused at start-up, never CURVE without authentication.
  auto open =
      LaunchDaemon(kBin / "cleave-cloud",
                   {"--cloud.bundle", (dir_ / "bundle").string(), "--cloud.listen",
                    "tcp://127.0.0.1:0", "--cloud.curve_secret_key", (dir_ / "cloud.key").string()},
                   "cloud.ready_file", dir_, "cloud-open", 30000);
  ASSERT_FALSE(open.ok());
  EXPECT_NE(open.status().message().find("allow list"), std::string::npos)
      << open.status().ToString();
}

}  // namespace
}  // namespace cleave::edge
