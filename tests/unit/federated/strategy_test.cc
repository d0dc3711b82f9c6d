#include "federated/strategy.h"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "unit/federated/strategy_test_helpers.h"

// Configuration, rejection paths shared by every strategy, and FedAvg/FedProx.
// Expected values below were computed by hand (and checked with a few lines of plain
// Python), never by calling the code under test.
namespace cleave::federated {
namespace {

using strategy_testing::ExpectValues;
using strategy_testing::Make;
using strategy_testing::Round;
using strategy_testing::T;
using strategy_testing::Update;

// ---- configuration

TEST(StrategyConfigTest, EveryNameConstructsAndReportsItsName) {
  ASSERT_EQ(StrategyNames().size(), 11u);
  for (const auto& name : StrategyNames()) {
    auto s = Make(name);
    ASSERT_NE(s, nullptr) << name;
    EXPECT_EQ(s->name(), name);
  }
}

TEST(StrategyConfigTest, JsonRoundTripsAndRejectsUnknownKeysAndTypes) {
  StrategyConfig c;
  c.name = "multikrum";
  c.server_lr = 0.5;
  c.trim_fraction = 0.25;
  c.byzantine = 2;
  c.multikrum_keep = 3;
  auto back = StrategyConfig::FromJson(c.ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->ToJson(), c.ToJson());
  // Missing keys keep their defaults.
  auto partial = StrategyConfig::FromJson({{"name", "fedyogi"}});
  ASSERT_TRUE(partial.ok());
  EXPECT_EQ(partial->tau, StrategyConfig().tau);

  using json = nlohmann::json;
  for (const json& bad :
       {json::array(), json{{"nmae", "fedavg"}}, json{{"name", 3}}, json{{"byzantine", 1.5}},
        json{{"beta1", "0.9"}}, json{{"name", "fedsgd"}}, json{{"byzantine", 5000000000LL}}}) {
    EXPECT_EQ(StrategyConfig::FromJson(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(StrategyConfigTest, MakeStrategyRejectsUnknownNameAndInvalidParameters) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<StrategyConfig> bad(14);
  bad[0].name = "fedsgd";
  bad[1].name = "";
  bad[2].server_lr = nan;
  bad[3].server_lr = 0;
  bad[4].tau = 0;
  bad[5].tau = inf;
  bad[6].beta1 = 1.0;
  bad[7].beta2 = -0.1;
  bad[8].beta2 = nan;
  bad[9].trim_fraction = 0.5;
  bad[10].trim_fraction = nan;
  bad[11].byzantine = -1;
  bad[12].multikrum_keep = -1;
  bad[13].proximal_mu = nan;
  for (size_t i = 0; i < bad.size(); ++i) {
    auto s = MakeStrategy(bad[i]);
    ASSERT_FALSE(s.ok()) << i;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument) << i;
  }
}

TEST(FitConfigTest, JsonRoundTripAndValidation) {
  FitConfig c;
  c.local_epochs = 3;
  c.lr = 0.125;
  c.max_steps = 40;
  auto back = FitConfig::FromJson(c.ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->ToJson(), c.ToJson());
  EXPECT_EQ(FitConfig::FromJson({{"epochs", 2}}).status().code(), StatusCode::kInvalidArgument);

  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<FitConfig> bad(8);
  bad[0].local_epochs = 0;
  bad[1].batch_size = 0;
  bad[2].lr = -0.1;
  bad[3].lr = nan;
  bad[4].momentum = nan;
  bad[5].weight_decay = -1;
  bad[6].proximal_mu = std::numeric_limits<double>::infinity();
  bad[7].max_steps = -1;
  for (size_t i = 0; i < bad.size(); ++i) {
    EXPECT_EQ(bad[i].Validate().code(), StatusCode::kInvalidArgument) << i;
  }
}

TEST(StrategyConfigTest, FedProxSetsMuAndFedAvgLeavesItAlone) {
  StrategyConfig c;
  c.name = "fedprox";
  c.proximal_mu = 0.25;
  FitConfig fit;
  Make(c)->ConfigureFit(fit);
  EXPECT_EQ(fit.proximal_mu, 0.25);
  FitConfig plain;
  Make("fedavg")->ConfigureFit(plain);
  EXPECT_EQ(plain.proximal_mu, 0.0);
}

// ---- rejection paths shared by every strategy

TEST(StrategyRejectionTest, EveryStrategyRejectsBadUpdatesAndEmptyRounds) {
  const Weights global = {T({0, 0}), torch::zeros({2, 2})};
  const std::vector<bool> mask = {true, true};
  const Weights good = {T({1, 2}), torch::ones({2, 2})};
  for (const auto& name : StrategyNames()) {
    SCOPED_TRACE(name);
    auto strategy = Make(name);
    auto agg = strategy->BeginRound(global, mask);
    EXPECT_EQ(agg->Finish().status().code(), StatusCode::kFailedPrecondition);  // nothing added

    EXPECT_EQ(agg->Add(Update("zero", 0, good)).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(agg->Add(Update("neg", -5, good)).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(agg->Add(Update("count", 1, {T({1, 2})})).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(agg->Add(Update("shape", 1, {T({1, 2, 3}), torch::ones({2, 2})})).code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(agg->Add(Update("shape2", 1, {T({1, 2}), torch::ones({4})})).code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(
        agg->Add(Update("dtype", 1, {T({1, 2}), torch::ones({2, 2}, torch::kFloat64)})).code(),
        StatusCode::kInvalidArgument);
    EXPECT_EQ(agg->Add(Update("undef", 1, {T({1, 2}), torch::Tensor()})).code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(agg->count(), 0);

    // A mask of the wrong length is refused at Add().
    const std::vector<bool> short_mask = {true};
    auto bad_mask = strategy->BeginRound(global, short_mask);
    EXPECT_EQ(bad_mask->Add(Update("c", 1, good)).code(), StatusCode::kInvalidArgument);

    // Apply refuses an aggregate of another layout.
    EXPECT_EQ(strategy->Apply(global, {T({1, 2})}, mask).status().code(),
              StatusCode::kInvalidArgument);

    // Once finished, an aggregator is spent.
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(agg->Add(Update("ok", 1, good)).ok());
    ASSERT_TRUE(agg->Finish().ok());
    EXPECT_EQ(agg->Finish().status().code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(agg->Add(Update("late", 1, good)).code(), StatusCode::kFailedPrecondition);
  }
}

TEST(StrategyRejectionTest, StatelessStrategiesRefuseState) {
  for (const std::string name : {"fedavg", "fedmedian", "krum"}) {
    auto s = Make(name);
    EXPECT_TRUE(s->SaveState().empty());
    EXPECT_TRUE(s->LoadState({}).ok());
    EXPECT_EQ(s->LoadState({{"m.0", torch::zeros({1})}}).code(), StatusCode::kInvalidArgument);
  }
}

// ---- FedAvg / FedProx

TEST(FedAvgTest, WeightsByExampleCounts) {
  const Weights global = {T({0, 0}), T({10})};
  const std::vector<bool> mask = {true, true};
  // n = 1 and n = 3: (1*[1,2] + 3*[5,6]) / 4 = [4, 5]; (1*1 + 3*3) / 4 = 2.5.
  for (const std::string name : {"fedavg", "fedprox"}) {
    auto next = Round(*Make(name), global, mask,
                      {Update("a", 1, {T({1, 2}), T({1})}), Update("b", 3, {T({5, 6}), T({3})})});
    ASSERT_TRUE(next.ok()) << next.status().ToString();
    ExpectValues((*next)[0], {4, 5});
    ExpectValues((*next)[1], {2.5});
  }
}

TEST(FedAvgTest, UntrainedEntriesKeepTheGlobalValues) {
  const Weights global = {T({0, 0}), T({10})};
  const std::vector<bool> mask = {true, false};
  auto next = Round(*Make("fedavg"), global, mask,
                    {Update("a", 2, {T({2, 4}), T({-7})}), Update("b", 2, {T({4, 8}), T({99})})});
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  ExpectValues((*next)[0], {3, 6});
  EXPECT_TRUE(torch::equal((*next)[1], global[1]));
}

TEST(FedAvgTest, AggregatorKeepsNoReferenceToUpdates) {
  const Weights global = {torch::zeros({1000}), torch::zeros({10, 10})};
  const std::vector<bool> mask = {true, true};
  auto agg = Make("fedavg")->BeginRound(global, mask);
  for (int k = 0; k < 3; ++k) {  // the first Add initialises the sums, later ones accumulate
    const float value = static_cast<float>(k);
    ClientUpdate u = Update("c", 1 + k, {torch::full({1000}, value), torch::full({10, 10}, value)});
    ASSERT_EQ(u.weights[0].use_count(), 1);
    const Status added = agg->Add(u);
    ASSERT_TRUE(added.ok()) << added.ToString();
    EXPECT_EQ(u.weights[0].use_count(), 1) << k;
    EXPECT_EQ(u.weights[1].use_count(), 1) << k;
  }
  auto out = agg->Finish();
  ASSERT_TRUE(out.ok());
  // (1*0 + 2*1 + 3*2) / 6 = 4/3.
  EXPECT_NEAR((*out)[0][17].item<float>(), 4.0f / 3.0f, 1e-6);
}

}  // namespace
}  // namespace cleave::federated
