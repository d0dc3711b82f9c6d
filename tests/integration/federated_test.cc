// Integration: a real cleave-aggregator and three cleave-edge processes on loopback run
// federated rounds over ZeroMQ; one edge is killed mid-round and the round still
// completes; compressed and continual rounds; a restarted aggregator resumes from its
// checkpoint.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "common/file_util.h"
#include "testing/bin_dir.h"
#include "testing/federation_fixture.h"
#include "testing/log_wait.h"
#include "testing/tiny_bundle.h"
#include "tools/daemon_launcher.h"

namespace cleave::edge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using tools::LaunchDaemon;
using tools::LaunchedDaemon;

class FederatedTest : public cleave::testing::FederationTest {
 protected:
  FederatedTest() : FederationTest("fl_it") {}

  std::vector<std::string> AggregatorArgs(int rounds) {
    return {"--aggregator.bundle",
            bundle_.string(),
            "--aggregator.listen",
            "tcp://127.0.0.1:0",
            "--aggregator.rounds",
            std::to_string(rounds),
            "--aggregator.wait_for_clients",
            "3",
            "--aggregator.poll_interval_ms",
            "100",
            "--aggregator.client_timeout_ms",
            "2000",
            "--aggregator.checkpoint",
            (dir_ / "agg.ckpt").string(),
            "--aggregator.summary_file",
            (dir_ / "summary.json").string(),
            "--aggregator.publish_dir",
            (dir_ / "published").string(),
            "--aggregator.eval_data_dir",
            "/usr/share/datasets/fashion-mnist",
            "--aggregator.eval_limit",
            "500",
            "--round.fraction",
            "1.0",
            "--round.min_clients",
            "2",
            "--round.quorum",
            "2",
            "--round.deadline_seconds",
            "60",
            "--fit.local_epochs",
            "1",
            "--fit.batch_size",
            "32",
            "--fit.lr",
            "0.05"};
  }

  Result<LaunchedDaemon> StartAggregator(int rounds, const std::string& name) {
    return LaunchDaemon(kBin / "cleave-aggregator", AggregatorArgs(rounds), "aggregator.ready_file",
                        dir_, name);
  }

  Result<LaunchedDaemon> StartEdge(const std::string& aggregator, int index) {
    return LaunchDaemon(
        kBin / "cleave-edge",
        {"serve", "--edge.bundle", bundle_.string(), "--edge.listen", "tcp://127.0.0.1:0",
         "--edge.cloud", "tcp://127.0.0.1:1", "--edge.aggregator", aggregator, "--edge.client_id",
         "edge-" + std::to_string(index), "--edge.fl_partitions", "3", "--edge.fl_partition_index",
         std::to_string(index), "--edge.fl_train_limit", "3000", "--edge.fl_partition",
         "dirichlet:0.5"},
        "edge.ready_file", dir_, "edge" + std::to_string(index));
  }

  void RunWithTwoEdges(int rounds, const std::vector<std::string>& extra, int64_t timeout_ms);
};

// Runs `rounds` rounds with two edges and the aggregator's extra `args`; returns once the
// aggregator exited 0 (fatal failure otherwise).
void FederatedTest::RunWithTwoEdges(int rounds, const std::vector<std::string>& extra,
                                    int64_t timeout_ms) {
  std::vector<std::string> args = AggregatorArgs(rounds);
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == "--aggregator.wait_for_clients") args[i + 1] = "2";
  }
  args.insert(args.end(), extra.begin(), extra.end());
  auto agg =
      LaunchDaemon(kBin / "cleave-aggregator", args, "aggregator.ready_file", dir_, "aggregator");
  ASSERT_TRUE(agg.ok()) << agg.status().ToString();
  aggregator_ = std::make_unique<LaunchedDaemon>(std::move(*agg));
  for (int i = 0; i < 2; ++i) {
    auto edge = StartEdge(aggregator_->endpoint, i);
    ASSERT_TRUE(edge.ok()) << edge.status().ToString();
    edges_.push_back(std::make_unique<LaunchedDaemon>(std::move(*edge)));
  }
  auto code = aggregator_->process->Wait(timeout_ms);
  ASSERT_TRUE(code.ok()) << "aggregator did not finish: " << code.status().ToString();
  ASSERT_EQ(*code, 0) << "see " << aggregator_->log_path;
}

TEST_F(FederatedTest, TwoRoundsWithThreeEdgesSurviveAnEdgeKilledMidRound) {
  auto agg = StartAggregator(2, "aggregator");
  ASSERT_TRUE(agg.ok()) << agg.status().ToString();
  aggregator_ = std::make_unique<LaunchedDaemon>(std::move(*agg));
  for (int i = 0; i < 3; ++i) {
    auto edge = StartEdge(aggregator_->endpoint, i);
    ASSERT_TRUE(edge.ok()) << edge.status().ToString();
    edges_.push_back(std::make_unique<LaunchedDaemon>(std::move(*edge)));
  }
  // Kill edge 2 as soon as round 1 is open: it was sampled and will never answer.
  ASSERT_TRUE(cleave::testing::WaitForLogLine(aggregator_->log_path, "round 1 open", 60000))
      << "round 1 never opened; see " << aggregator_->log_path;
  ASSERT_TRUE(edges_[2]->process->Signal(SIGKILL).ok());

  auto code = aggregator_->process->Wait(120000);
  ASSERT_TRUE(code.ok()) << "aggregator did not finish: " << code.status().ToString();
  EXPECT_EQ(*code, 0) << "see " << aggregator_->log_path;

  const json summary = Summary();
  ASSERT_EQ(summary.at("rounds_completed").get<int>(), 2);
  const json& rounds = summary.at("rounds");
  ASSERT_EQ(rounds.size(), 2u);
  // Round 1: three sampled, the killed edge failed (timed out), the round still applied.
  EXPECT_EQ(rounds[0].at("sampled").get<int>(), 3);
  EXPECT_TRUE(rounds[0].at("applied").get<bool>());
  EXPECT_GE(rounds[0].at("succeeded").get<int>(), 2);
  EXPECT_EQ(rounds[0].at("succeeded").get<int>() + rounds[0].at("failed").get<int>() +
                rounds[0].at("missing").get<int>(),
            3);
  // Round 2 runs with the two survivors.
  EXPECT_EQ(rounds[1].at("sampled").get<int>(), 2);
  EXPECT_TRUE(rounds[1].at("applied").get<bool>());
  EXPECT_EQ(rounds[1].at("succeeded").get<int>(), 2);
  EXPECT_TRUE(rounds[1].contains("accuracy"));
  EXPECT_TRUE(summary.contains("initial_accuracy"));
  // A bundle was published per round and it verifies.
  EXPECT_TRUE(fs::exists(dir_ / "published" / "round-1" / "manifest.json"));
  EXPECT_TRUE(fs::exists(dir_ / "published" / "round-2" / "manifest.json"));
  // The surviving edges still serve (training never took the daemon down).
  EXPECT_TRUE(edges_[0]->process->Running());
  EXPECT_TRUE(edges_[1]->process->Running());
}

// The compression keys reach the real processes: the aggregator asks for int8 updates, the
// edges send Update.compressed, both rounds apply and the uplink is a fraction of float32.
TEST_F(FederatedTest, Int8CompressedUpdatesBetweenProcesses) {
  RunWithTwoEdges(2, {"--compression.kind", "int8"}, 120000);
  if (HasFatalFailure()) return;
  const json summary = Summary();
  ASSERT_EQ(summary.at("rounds_completed").get<int>(), 2);
  for (const json& round : summary.at("rounds")) {
    EXPECT_TRUE(round.at("applied").get<bool>()) << round.dump(2);
    EXPECT_EQ(round.at("succeeded").get<int>(), 2) << round.dump(2);
    EXPECT_EQ(round.at("compression").at("kind"), "int8") << round.dump(2);
    EXPECT_LT(round.at("bytes_up").get<int64_t>(),
              round.at("compression").at("dense_bytes_up").get<int64_t>() / 2)
        << round.dump(2);
  }
  EXPECT_EQ(summary.at("counters").value("update_compressed_undecodable", 0), 0);
}

// Federated continual rounds between processes: the aggregator's continual.* keys reach the
// edges in every RoundConfig; the edges train their rows of each experience with ER and
// consolidate when the experience changes; the summary holds the accuracy matrix.
TEST_F(FederatedTest, ContinualRoundsBetweenProcesses) {
  RunWithTwoEdges(4,
                  {"--continual.enabled", "true", "--continual.experiences", "2",
                   "--continual.strategy", "er", "--continual.buffer_size", "200"},
                  180000);
  if (HasFatalFailure()) return;
  const json summary = Summary();
  ASSERT_EQ(summary.at("rounds_completed").get<int>(), 4);
  const int experiences[] = {0, 0, 1, 1};
  for (size_t r = 0; r < 4; ++r) {
    const json& round = summary.at("rounds")[r];
    EXPECT_TRUE(round.at("applied").get<bool>()) << round.dump(2);
    EXPECT_EQ(round.at("succeeded").get<int>(), 2) << round.dump(2);
    EXPECT_EQ(round.at("continual").at("experience").get<int>(), experiences[r]);
  }
  const json& continual = summary.at("continual");
  EXPECT_EQ(continual.at("strategy").at("strategy"), "er");
  ASSERT_EQ(continual.at("matrix").size(), 2u) << continual.dump(2);
  ASSERT_TRUE(continual.contains("metrics")) << continual.dump(2);
  const double acc = continual.at("metrics").at("acc").get<double>();
  EXPECT_GT(acc, 0.0);
  EXPECT_LE(acc, 1.0);
  // Each edge moved to the second experience, consolidating on its rows of the first.
  for (const auto& edge : edges_) {
    EXPECT_TRUE(
        cleave::testing::WaitForLogLine(edge->log_path, "entering experience 1 of 2", 10000))
        << "see " << edge->log_path;
  }
}

TEST_F(FederatedTest, RestartedAggregatorResumesFromItsCheckpoint) {
  auto agg = StartAggregator(1, "aggregator-a");
  ASSERT_TRUE(agg.ok()) << agg.status().ToString();
  aggregator_ = std::make_unique<LaunchedDaemon>(std::move(*agg));
  for (int i = 0; i < 3; ++i) {
    auto edge = StartEdge(aggregator_->endpoint, i);
    ASSERT_TRUE(edge.ok()) << edge.status().ToString();
    edges_.push_back(std::make_unique<LaunchedDaemon>(std::move(*edge)));
  }
  auto code = aggregator_->process->Wait(120000);
  ASSERT_TRUE(code.ok() && *code == 0) << "see " << aggregator_->log_path;
  ASSERT_EQ(Summary().at("rounds_completed").get<int>(), 1);
  ASSERT_TRUE(fs::exists(dir_ / "agg.ckpt"));

  // Edges got Bye{finished}; start fresh ones for the resumed run.
  edges_.clear();
  auto resumed = StartAggregator(2, "aggregator-b");
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  aggregator_ = std::make_unique<LaunchedDaemon>(std::move(*resumed));
  EXPECT_TRUE(cleave::testing::WaitForLogLine(aggregator_->log_path, "resumed from", 10000));
  for (int i = 0; i < 3; ++i) {
    auto edge = StartEdge(aggregator_->endpoint, i);
    ASSERT_TRUE(edge.ok()) << edge.status().ToString();
    edges_.push_back(std::make_unique<LaunchedDaemon>(std::move(*edge)));
  }
  code = aggregator_->process->Wait(120000);
  ASSERT_TRUE(code.ok() && *code == 0) << "see " << aggregator_->log_path;
  const json summary = Summary();
  EXPECT_EQ(summary.at("rounds_completed").get<int>(), 2);
  ASSERT_EQ(summary.at("rounds").size(), 2u);  // round 1 from the checkpoint, round 2 new
  EXPECT_EQ(summary.at("rounds")[1].at("round").get<int>(), 2);
  EXPECT_EQ(summary.at("counters").at("rounds_started").get<int>(), 1);  // only round 2 ran
}

TEST_F(FederatedTest, DamagedCheckpointIsRefusedNotIgnored) {
  ASSERT_TRUE(WriteFileAtomic(dir_ / "agg.ckpt", "CLVCKPT\ngarbage").ok());
  auto agg = StartAggregator(1, "aggregator");
  ASSERT_FALSE(agg.ok());  // exits before binding, with the reason in its log
  std::ifstream log(dir_ / "aggregator.log");
  std::stringstream text;
  text << log.rdbuf();
  EXPECT_NE(text.str().find("agg.ckpt"), std::string::npos) << text.str();
}

}  // namespace
}  // namespace cleave::edge
