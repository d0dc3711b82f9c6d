// Integration: secure aggregation with real processes on loopback. A cleave-aggregator with
// secure_aggregation.enabled and four cleave-edge daemons run SecAgg rounds over ZeroMQ; in a
// second run one edge drops out (and is then killed) after sharing its keys, and the round
// still applies with its masks recovered from the other edges' shares.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>

#include <nlohmann/json.hpp>

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

constexpr int kEdges = 4;

class SecureAggregationTest : public cleave::testing::FederationTest {
 protected:
  SecureAggregationTest() : FederationTest("secagg_it") {}

  void StartAggregator(int rounds, int min_clients) {
    auto agg = LaunchDaemon(kBin / "cleave-aggregator",
                            {"--aggregator.bundle",
                             bundle_.string(),
                             "--aggregator.listen",
                             "tcp://127.0.0.1:0",
                             "--aggregator.rounds",
                             std::to_string(rounds),
                             "--aggregator.wait_for_clients",
                             std::to_string(kEdges),
                             "--aggregator.poll_interval_ms",
                             "100",
                             "--aggregator.client_timeout_ms",
                             "2000",
                             "--aggregator.summary_file",
                             (dir_ / "summary.json").string(),
                             "--round.fraction",
                             "1.0",
                             "--round.min_clients",
                             std::to_string(min_clients),
                             "--round.quorum",
                             "2",
                             "--round.deadline_seconds",
                             "60",
                             "--fit.local_epochs",
                             "1",
                             "--fit.batch_size",
                             "32",
                             "--fit.lr",
                             "0.05",
                             "--secure_aggregation.enabled",
                             "true"},
                            "aggregator.ready_file", dir_, "aggregator");
    ASSERT_TRUE(agg.ok()) << agg.status().ToString();
    aggregator_ = std::make_unique<LaunchedDaemon>(std::move(*agg));
  }

  void StartEdge(int index, int drop_round = 0) {
    auto edge = LaunchDaemon(kBin / "cleave-edge",
                             {"serve",
                              "--edge.bundle",
                              bundle_.string(),
                              "--edge.listen",
                              "tcp://127.0.0.1:0",
                              "--edge.cloud",
                              "tcp://127.0.0.1:1",
                              "--edge.aggregator",
                              aggregator_->endpoint,
                              "--edge.client_id",
                              "edge-" + std::to_string(index),
                              "--edge.fl_partitions",
                              std::to_string(kEdges),
                              "--edge.fl_partition_index",
                              std::to_string(index),
                              "--edge.fl_train_limit",
                              "2000",
                              "--edge.fl_partition",
                              "iid",
                              "--edge.fl_max_steps",
                              "20",
                              "--edge.fl_secure_drop_round",
                              std::to_string(drop_round)},
                             "edge.ready_file", dir_, "edge" + std::to_string(index));
    ASSERT_TRUE(edge.ok()) << edge.status().ToString();
    edges_.push_back(std::make_unique<LaunchedDaemon>(std::move(*edge)));
  }
};

TEST_F(SecureAggregationTest, FourEdgesApplyTwoSecureRounds) {
  StartAggregator(2, kEdges);
  for (int i = 0; i < kEdges; ++i) StartEdge(i);
  auto code = aggregator_->process->Wait(180000);
  ASSERT_TRUE(code.ok()) << "aggregator did not finish: " << code.status().ToString();
  ASSERT_EQ(*code, 0) << "see " << aggregator_->log_path;

  const json summary = Summary();
  ASSERT_EQ(summary.at("rounds_completed").get<int>(), 2);
  for (const json& round : summary.at("rounds")) {
    EXPECT_TRUE(round.at("applied").get<bool>()) << round.dump(2);
    EXPECT_EQ(round.at("sampled").get<int>(), kEdges);
    EXPECT_EQ(round.at("succeeded").get<int>(), kEdges) << round.dump(2);
    const json& secure = round.at("secure_aggregation");
    EXPECT_EQ(secure.at("contributors").get<int>(), kEdges);
    EXPECT_EQ(secure.at("recovered_dropouts").get<int>(), 0);
    EXPECT_EQ(round.at("secure_stages").at("unmasked").get<int>(), kEdges);
    // 2000 rows split over four edges: the example count comes out of the unmasked sum.
    EXPECT_EQ(round.at("examples").get<int>(), 2000) << round.dump(2);
  }
  // Only masked contributions reached the aggregator.
  const json& counters = summary.at("counters");
  EXPECT_FALSE(counters.contains("received_update")) << counters.dump(2);
  EXPECT_EQ(counters.at("received_secagg_masked_input").get<int>(), 2 * kEdges);
  EXPECT_FALSE(counters.contains("secure_rounds_failed"));
  for (const auto& edge : edges_) EXPECT_TRUE(edge->process->Running());
}

TEST_F(SecureAggregationTest, EdgeKilledAfterSharingKeysIsRecovered) {
  StartAggregator(1, 3);
  for (int i = 0; i < kEdges - 1; ++i) StartEdge(i);
  StartEdge(kEdges - 1, /*drop_round=*/1);
  // The edge announces that it shared its keys and drops out; then it is killed for good.
  ASSERT_TRUE(cleave::testing::WaitForLogLine(edges_.back()->log_path, "dropping out now", 120000))
      << "see " << edges_.back()->log_path;
  ASSERT_TRUE(edges_.back()->process->Signal(SIGKILL).ok());

  auto code = aggregator_->process->Wait(180000);
  ASSERT_TRUE(code.ok()) << "aggregator did not finish: " << code.status().ToString();
  ASSERT_EQ(*code, 0) << "see " << aggregator_->log_path;
  const json round = Summary().at("rounds").at(0);
  EXPECT_TRUE(round.at("applied").get<bool>()) << round.dump(2);
  EXPECT_EQ(round.at("sampled").get<int>(), kEdges);
  EXPECT_EQ(round.at("succeeded").get<int>(), kEdges - 1) << round.dump(2);
  EXPECT_EQ(round.at("failed").get<int>() + round.at("missing").get<int>(), 1) << round.dump(2);
  EXPECT_EQ(round.at("secure_stages").at("shared").get<int>(), kEdges) << round.dump(2);
  EXPECT_EQ(round.at("secure_aggregation").at("contributors").get<int>(), kEdges - 1);
  EXPECT_EQ(round.at("secure_aggregation").at("recovered_dropouts").get<int>(), 1) << round.dump(2);
  EXPECT_EQ(round.at("examples").get<int>(), 1500) << round.dump(2);
}

}  // namespace
}  // namespace cleave::edge
