// DP-FedAvg: clipping, the noise's scale, adaptive clipping's direction, the privacy
// accounting reported per round, checkpoint state, and every rejection. Expected values are
// computed by hand or with the accountant's own functions on explicitly given rates.
#include <gtest/gtest.h>

#include <cmath>

#include "federated/rdp_accountant.h"
#include "federated/strategy.h"
#include "unit/federated/strategy_test_helpers.h"

namespace cleave::federated {
namespace {

using strategy_testing::ExpectValues;
using strategy_testing::Make;
using strategy_testing::Round;
using strategy_testing::T;
using strategy_testing::Update;

StrategyConfig Dp(double clip, double z, bool adaptive = false) {
  StrategyConfig c;
  c.name = "dpfedavg";
  c.dp.clip_norm = clip;
  c.dp.noise_multiplier = z;
  c.dp.adaptive_clip = adaptive;
  c.dp.seed = 7;
  return c;
}

TEST(DpFedAvgTest, ClipsEachDeltaAndAveragesUnweighted) {
  auto s = Make(Dp(1.0, 0.0));
  ASSERT_NE(s, nullptr);
  const Weights global = {T({1, 1}), T({5})};
  // Client a: delta (3, 4 | 0), norm 5 -> scaled to (0.6, 0.8 | 0). Client b: delta
  // (0, 0 | 0.5), norm 0.5 -> kept. The untrained entry never moves.
  const std::vector<bool> mask = {true, false};
  auto next = Round(*s, global, {true, true},
                    {Update("a", 100, {T({4, 5}), T({5})}), Update("b", 1, {T({1, 1}), T({5.5})})});
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  ExpectValues((*next)[0], {1 + 0.6f / 2, 1 + 0.8f / 2});
  ExpectValues((*next)[1], {5 + 0.5f / 2});
  // With a mask only the trainable entry's delta counts (and is clipped by its own norm).
  auto masked = Round(*s, global, mask, {Update("a", 1, {T({4, 5}), T({50})})});
  ASSERT_TRUE(masked.ok());
  ExpectValues((*masked)[0], {1.6f, 1.8f});
  ExpectValues((*masked)[1], {5});
}

TEST(DpFedAvgTest, NoiseHasStddevZTimesClipOverUpdates) {
  auto s = Make(Dp(0.5, 2.0));
  const int64_t n = 200000;
  const Weights global = {torch::zeros({n})};
  std::vector<ClientUpdate> updates;
  for (int k = 0; k < 4; ++k)
    updates.push_back(Update("c" + std::to_string(k), 1, {torch::zeros({n})}));
  auto next = Round(*s, global, {true}, updates);
  ASSERT_TRUE(next.ok());
  const double expected = 2.0 * 0.5 / 4;  // z * C / m
  EXPECT_NEAR((*next)[0].std().item<double>(), expected, 0.01 * expected);
  EXPECT_NEAR((*next)[0].mean().item<double>(), 0.0, 5 * expected / std::sqrt(n));
}

TEST(DpFedAvgTest, AdaptiveClipGrowsWhenEverythingIsClippedAndShrinksOtherwise) {
  auto grow = Make(Dp(1.0, 1.0, /*adaptive=*/true));
  const Weights global = {T({0, 0})};
  std::vector<ClientUpdate> big, small;
  for (int k = 0; k < 20; ++k) {
    big.push_back(Update("b" + std::to_string(k), 1, {T({30, 40})}));
    small.push_back(Update("s" + std::to_string(k), 1, {T({0.01f, 0})}));
  }
  ASSERT_TRUE(Round(*grow, global, {true}, big).ok());
  const auto report = grow->RoundReport();
  ASSERT_TRUE(report.contains("dp"));
  EXPECT_DOUBLE_EQ(report["dp"]["clip_norm"].get<double>(), 1.0);
  EXPECT_EQ(report["dp"]["unclipped_fraction"].get<double>(), 0.0);
  // b ~ 0 +- 0.05 against the target 0.5: C grows by about exp(0.2 * 0.5).
  EXPECT_NEAR(report["dp"]["next_clip_norm"].get<double>(), std::exp(0.1), 0.04);
  auto shrink = Make(Dp(1.0, 1.0, true));
  ASSERT_TRUE(Round(*shrink, global, {true}, small).ok());
  EXPECT_NEAR(shrink->RoundReport()["dp"]["next_clip_norm"].get<double>(), std::exp(-0.1), 0.04);
  // The update noise is raised so that the total noise multiplier stays z (Andrew et al.):
  // z_d = (1 - (2 * 20/20)^-2)^-1/2 = (3/4)^-1/2.
  EXPECT_NEAR(report["dp"]["update_noise_stddev"].get<double>(), 1.0 / std::sqrt(0.75), 1e-9);
}

TEST(DpFedAvgTest, ReportsEpsilonForTheSamplingRateUsed) {
  auto s = Make(Dp(1.0, 1.1));
  EXPECT_TRUE(s->RoundReport().is_null()) << "nothing to report before a round";
  const Weights global = {T({0})};
  dp::RdpAccountant reference;
  for (int round = 1; round <= 3; ++round) {
    s->OnRoundStarted(10, round == 2 ? 40 : 100);  // q = 0.1, 0.25, 0.1
    ASSERT_TRUE(Round(*s, global, {true}, {Update("a", 1, {T({0.5f})})}).ok());
    ASSERT_TRUE(reference.Compose(round == 2 ? 0.25 : 0.1, 1.1).ok());
    const auto dp = s->RoundReport()["dp"];
    EXPECT_NEAR(dp["epsilon"].get<double>(), reference.Spent(1e-5)->epsilon, 1e-12);
    EXPECT_EQ(dp["accounted_rounds"].get<int64_t>(), round);
    EXPECT_DOUBLE_EQ(dp["sampling_rate"].get<double>(), round == 2 ? 0.25 : 0.1);
  }
  // A round that never releases an aggregate costs nothing.
  s->OnRoundStarted(10, 100);
  EXPECT_TRUE(s->RoundReport().is_null());
  auto agg = s->BeginRound(global, {true});
  EXPECT_EQ(agg->Finish().status().code(), StatusCode::kFailedPrecondition);
  s->OnRoundStarted(10, 100);
  ASSERT_TRUE(Round(*s, global, {true}, {Update("a", 1, {T({0.5f})})}).ok());
  EXPECT_EQ(s->RoundReport()["dp"]["accounted_rounds"].get<int64_t>(), 4);
}

TEST(DpFedAvgTest, StateSurvivesACheckpointAndBadStateIsRefused) {
  auto s = Make(Dp(1.0, 1.0, true));
  const Weights global = {T({0, 0})};
  s->OnRoundStarted(5, 50);
  ASSERT_TRUE(Round(*s, global, {true}, {Update("a", 1, {T({3, 4})})}).ok());
  const double next_clip = s->RoundReport()["dp"]["next_clip_norm"].get<double>();
  const double epsilon = s->RoundReport()["dp"]["epsilon"].get<double>();
  auto saved = s->SaveState();

  auto restored = Make(Dp(1.0, 1.0, true));
  const Status loaded = restored->LoadState(saved);
  ASSERT_TRUE(loaded.ok()) << loaded.ToString();
  restored->OnRoundStarted(5, 50);
  ASSERT_TRUE(Round(*restored, global, {true}, {Update("a", 1, {T({0, 0})})}).ok());
  const auto dp = restored->RoundReport()["dp"];
  EXPECT_DOUBLE_EQ(dp["clip_norm"].get<double>(), next_clip);
  EXPECT_EQ(dp["accounted_rounds"].get<int64_t>(), 2);
  EXPECT_GT(dp["epsilon"].get<double>(), epsilon);

  auto fresh = Make(Dp(1.0, 1.0));
  EXPECT_EQ(fresh->LoadState({{"dp.unknown", torch::tensor({1.0})}}).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(fresh->LoadState({{"dp.rdp", torch::ones({3}, torch::kFloat64)}}).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(fresh->LoadState({{"dp.clip_norm", torch::tensor({-1.0}, torch::kFloat64)}}).code(),
            StatusCode::kInvalidArgument);
  auto negative = saved;
  for (auto& [key, t] : negative) {
    if (key == "dp.rdp") t = -t - 1;
  }
  EXPECT_EQ(fresh->LoadState(negative).code(), StatusCode::kInvalidArgument);
}

TEST(DpFedAvgTest, ConfigurationIsValidated) {
  auto round_trip = StrategyConfig::FromJson(Dp(0.7, 1.3, true).ToJson());
  ASSERT_TRUE(round_trip.ok()) << round_trip.status().ToString();
  EXPECT_EQ(round_trip->dp.clip_norm, 0.7);
  EXPECT_EQ(round_trip->dp.noise_multiplier, 1.3);
  EXPECT_TRUE(round_trip->dp.adaptive_clip);
  std::vector<StrategyConfig> bad(7, Dp(1.0, 1.0));
  bad[0].dp.clip_norm = 0;
  bad[1].dp.noise_multiplier = -1;
  bad[2].dp.delta = 1;
  bad[3].dp.target_quantile = 1.5;
  bad[4].dp.seed = -3;
  bad[5].dp.adaptive_clip = true;
  bad[5].dp.clip_count_stddev = 0.4;  // must exceed z / 2 = 0.5
  bad[6].dp.clip_norm = std::nan("");
  for (size_t i = 0; i < bad.size(); ++i) {
    EXPECT_EQ(MakeStrategy(bad[i]).status().code(), StatusCode::kInvalidArgument) << i;
  }
  EXPECT_EQ(StrategyConfig::FromJson({{"dp_adaptive_clip", 1}}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(DpFedAvgTest, NonFiniteUpdatesAreRejected) {
  auto s = Make(Dp(1.0, 0.5));
  const Weights global = {T({0})};
  auto agg = s->BeginRound(global, {true});
  EXPECT_EQ(agg->Add(Update("x", 1, {T({std::nanf("")})})).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(agg->count(), 0);
}

}  // namespace
}  // namespace cleave::federated
