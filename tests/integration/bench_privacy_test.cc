// Integration: `cleave sim` runs secure-aggregation rounds (and refuses combinations that
// cannot work) and `cleave bench privacy` runs every phase and writes its report, as real
// processes on the Fashion-MNIST package's data, shortened to a round or two.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "common/datasets.h"
#include "common/file_util.h"
#include "testing/bin_dir.h"
#include "testing/tiny_bundle.h"

namespace cleave {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class BenchPrivacyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(fs::path(kFashionMnistDir) / "train-images-idx3-ubyte.gz")) {
      GTEST_SKIP() << "Fashion-MNIST is missing: install the Debian package "
                      "dataset-fashion-mnist (scripts/packages.txt; scripts/test installs it)";
    }
    dir_ = testing::TempPath("bench_privacy_it");
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    if (!HasFailure()) fs::remove_all(dir_, ec);
  }
  // Runs `cleave args...`; returns the exit code, the log in `log`.
  int Cleave(const std::vector<std::string>& args, std::string* log) {
    std::vector<std::string> argv = {(kBin / "cleave").string()};
    argv.insert(argv.end(), args.begin(), args.end());
    const fs::path log_path = dir_ / "cleave.log";
    auto proc = ChildProcess::Spawn(argv, log_path.string());
    EXPECT_TRUE(proc.ok()) << proc.status().ToString();
    if (!proc.ok()) return -1;
    auto code = (*proc)->Wait(600000);
    EXPECT_TRUE(code.ok()) << code.status().ToString();
    *log = ReadFileToString(log_path.string()).value_or("");
    return code.ok() ? *code : -1;
  }
  fs::path dir_;
};

TEST_F(BenchPrivacyTest, SimRunsSecureRoundsAndRefusesRobustStrategiesWithThem) {
  const std::vector<std::string> common = {"sim",
                                           "--sim.clients",
                                           "20",
                                           "--sim.rounds",
                                           "2",
                                           "--sim.train_limit",
                                           "4000",
                                           "--sim.test_limit",
                                           "500",
                                           "--round.fraction",
                                           "0.25",
                                           "--sim.dropout",
                                           "0.2",
                                           "--secure_aggregation.enabled",
                                           "true",
                                           "--out",
                                           (dir_ / "sim").string()};
  std::string log;
  ASSERT_EQ(Cleave(common, &log), 0) << log;
  auto text = ReadFileToString((dir_ / "sim" / "history.json").string());
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  const json history = json::parse(*text);
  const json& rounds = history.at("rounds");
  ASSERT_EQ(rounds.size(), 2u);
  int applied = 0;
  for (const json& r : rounds) {
    if (!r.at("applied").get<bool>()) continue;
    ++applied;
    ASSERT_TRUE(r.contains("secure_aggregation")) << r.dump();
    EXPECT_EQ(r["secure_aggregation"]["contributors"].get<int>(), r["succeeded"].get<int>());
    EXPECT_GT(r["secure_client_seconds"].get<double>(), 0.0);
  }
  EXPECT_GT(applied, 0);

  std::vector<std::string> krum = common;
  krum.push_back("--strategy.name");
  krum.push_back("krum");
  EXPECT_NE(Cleave(krum, &log), 0);
  EXPECT_NE(log.find("cannot run with secure aggregation"), std::string::npos) << log;
  std::vector<std::string> clipped = common;
  clipped.push_back("--strategy.norm_bound");
  clipped.push_back("1.0");
  EXPECT_NE(Cleave(clipped, &log), 0);
  EXPECT_NE(log.find("norm_bound"), std::string::npos) << log;
}

TEST_F(BenchPrivacyTest, EveryPhaseRunsAndTheDropoutRoundIsExact) {
  const fs::path out = dir_ / "privacy.json";
  std::string log;
  ASSERT_EQ(Cleave({"bench", "privacy", "--rounds", "1", "--json", out.string(), "--markdown",
                    (dir_ / "privacy.md").string()},
                   &log),
            0)
      << log;
  auto text = ReadFileToString(out.string());
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  const json r = json::parse(*text);
  for (const char* key : {"plain_accuracy", "secure_accuracy", "plain_seconds", "secure_seconds"}) {
    EXPECT_GT(r["secagg"][key].get<double>(), 0.0) << key;
  }
  EXPECT_TRUE(r["secagg"]["dropout_exact"].get<bool>());
  EXPECT_EQ(r["secagg"]["dropout_round"]["recovered_dropouts"].get<int>(), 6);
  ASSERT_EQ(r["dp"]["runs"].size(), 2u);
  for (const json& run : r["dp"]["runs"]) {
    EXPECT_GT(run["epsilon"].get<double>(), 0.0);
    EXPECT_GE(run["accuracy"].get<double>(), 0.0);
  }
  EXPECT_GT(r["dp"]["distributed_noise"]["epsilon"].get<double>(), 0.0);
  EXPECT_TRUE(r["dp"]["distributed_noise"]["secure_aggregation"].get<bool>());
  // More noise, less privacy spent.
  EXPECT_LT(r["dp"]["runs"][1]["epsilon"].get<double>(),
            r["dp"]["runs"][0]["epsilon"].get<double>());
  for (const char* key : {"clean_fedavg_accuracy", "fedavg_accuracy", "median_accuracy",
                          "trimmed_mean_accuracy", "multikrum_accuracy"}) {
    const double a = r["byzantine"][key].get<double>();
    EXPECT_TRUE(a >= 0 && a <= 1) << key;
  }
  const double none = r["compression"]["none"]["bytes_up_per_round"].get<double>();
  const double int8 = r["compression"]["int8"]["bytes_up_per_round"].get<double>();
  const double topk = r["compression"]["topk"]["bytes_up_per_round"].get<double>();
  EXPECT_LT(int8, 0.3 * none);
  EXPECT_LT(topk, int8);
  EXPECT_TRUE(r["targets"].is_object());
  EXPECT_TRUE(fs::exists(dir_ / "privacy.md"));

  EXPECT_NE(Cleave({"bench", "privacy", "--data-dir", (dir_ / "nowhere").string()}, &log), 0);
  EXPECT_NE(log.find("cleave bench privacy"), std::string::npos) << log;
}

}  // namespace
}  // namespace cleave
