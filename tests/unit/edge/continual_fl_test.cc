// Federated continual rounds in process: the real AggregatorService announces each round's
// experience and strategy (RoundConfig.continual) and real FederatedClients train their rows
// of it with the strategy they keep across rounds; the aggregator evaluates every experience
// and keeps the accuracy matrix. Configurations the aggregator cannot run are refused at start.
#include <gtest/gtest.h>

#include <string>

#include <nlohmann/json.hpp>

#include "edge/fl_client.h"
#include "federated/aggregator_service.h"
#include "testing/tiny_bundle.h"
#include "unit/edge/fl_test_harness.h"

namespace cleave::edge {
namespace {

using nlohmann::json;

constexpr int kContinualWaitMs = 30000;  // generous: the machine is shared

class ContinualFederatedTest : public InProcessFederationTest {
 protected:
  federated::AggregatorOptions ContinualOptions(int rounds, int experiences) {
    federated::AggregatorOptions o = AggregatorOptions(rounds, 2);
    o.continual.enabled = true;
    o.continual.experiences = experiences;
    o.continual.strategy.strategy = "er";
    o.continual.strategy.replay.capacity = 32;
    return o;
  }
};

TEST_F(ContinualFederatedTest, RoundsWalkTheStreamAndTheAggregatorKeepsTheMatrix) {
  eval_data_.images = testing::RandomImages(40, 9);
  eval_data_.labels = torch::arange(40, torch::kLong).remainder(10);
  StartAggregator(ContinualOptions(4, 2));
  StartClient("edge-0");
  StartClient("edge-1");
  ASSERT_TRUE(JoinAggregator(120000)) << run_status_.ToString() << service_->Summary().dump(2);
  const json summary = service_->Summary();
  ASSERT_EQ(summary["rounds"].size(), 4u) << summary.dump(2);
  const int experiences[] = {0, 0, 1, 1};
  for (size_t r = 0; r < 4; ++r) {
    const json& round = summary["rounds"][r];
    EXPECT_TRUE(round["applied"].get<bool>()) << round.dump(2);
    EXPECT_EQ(round["succeeded"], 2) << round.dump(2);
    EXPECT_EQ(round["experience"], experiences[r]) << round.dump(2);
    ASSERT_TRUE(round.contains("continual")) << round.dump(2);
    EXPECT_EQ(round["continual"]["experience"], experiences[r]);
    EXPECT_EQ(round["continual"]["accuracies"].size(), 2u);
    EXPECT_EQ(round["continual"]["end_of_experience"].get<bool>(), r == 1 || r == 3);
  }
  const json& continual = summary["continual"];
  EXPECT_EQ(continual["scenario"], "class");
  EXPECT_EQ(continual["experiences"], 2);
  EXPECT_EQ(continual["strategy"]["strategy"], "er");
  ASSERT_EQ(continual["matrix"].size(), 2u) << continual.dump(2);
  EXPECT_EQ(continual["matrix"][0].size(), 2u);
  // R's last row is the last round's evaluation.
  EXPECT_EQ(continual["matrix"][1], summary["rounds"][3]["continual"]["accuracies"]);
  ASSERT_TRUE(continual.contains("metrics")) << continual.dump(2);
  for (const char* key : {"acc", "bwt", "forgetting", "min_acc"}) {
    EXPECT_TRUE(continual["metrics"].contains(key)) << key;
  }
  for (const auto& c : clients_) {
    ASSERT_TRUE(
        c->WaitFor([](const FederatedClientStats& s) { return s.finished; }, kContinualWaitMs));
    const FederatedClientStats s = c->stats();
    EXPECT_EQ(s.continual_rounds, 4u) << s.ToJson().dump();
    EXPECT_EQ(s.experience, 1) << s.ToJson().dump();
    EXPECT_EQ(s.rounds_without_data, 0u) << s.ToJson().dump();
  }
}

TEST_F(ContinualFederatedTest, StreamsTheAggregatorCannotRunAreRefusedAtStart) {
  federated::AggregatorModel model;
  model.spec = spec_;
  model.initial = initial_;
  model.model_name = "tiny";
  const auto refusal = [&](federated::AggregatorOptions o) {
    auto service = federated::AggregatorService::Create(o, model, context_, SystemClock());
    return service.ok() ? std::string("accepted") : service.status().message();
  };
  EXPECT_NE(refusal(ContinualOptions(3, 4))
                .find("continual.experiences must be in 1..aggregator.rounds (3)"),
            std::string::npos);
  EXPECT_NE(refusal(ContinualOptions(20, 11)).find("exceeds the model's classes (10)"),
            std::string::npos);
  federated::AggregatorOptions unknown = ContinualOptions(4, 2);
  unknown.continual.scenario = "task";
  EXPECT_NE(refusal(unknown).find("continual.scenario"), std::string::npos);
  federated::AggregatorOptions bad_strategy = ContinualOptions(4, 2);
  bad_strategy.continual.strategy.strategy = "gem";
  EXPECT_NE(refusal(bad_strategy).find("gem"), std::string::npos);
}

}  // namespace
}  // namespace cleave::edge
