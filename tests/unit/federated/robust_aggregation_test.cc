#include "federated/strategy.h"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "unit/federated/strategy_test_helpers.h"

// Median, trimmed mean, Krum and Multi-Krum (federated/robust_aggregation.cc).
// Expected values below were computed by hand (and checked with a few lines of plain
// Python), never by calling the code under test.
namespace cleave::federated {
namespace {

using strategy_testing::ExpectValues;
using strategy_testing::Make;
using strategy_testing::Round;
using strategy_testing::T;
using strategy_testing::Update;

// ---- coordinate-wise median and trimmed mean (unweighted)

TEST(FedMedianTest, OddAndEvenCountsIgnoringExampleCounts) {
  auto median = Make("fedmedian");
  const Weights global = {torch::zeros({3})};
  // Odd: per coordinate {1,2,100} -> 2, {10,30,20} -> 20, {-1,-5,-3} -> -3.
  auto odd = Round(*median, global, {true},
                   {Update("a", 1, {T({1, 10, -1})}), Update("b", 1, {T({2, 30, -5})}),
                    Update("c", 1000, {T({100, 20, -3})})});
  ASSERT_TRUE(odd.ok());
  ExpectValues((*odd)[0], {2, 20, -3});
  // Even: {1,3,10,2} -> (2+3)/2, {4,1,2,8} -> (2+4)/2, {0,0,0,-1} -> 0.
  auto even = Round(*median, global, {true},
                    {Update("a", 1, {T({1, 4, 0})}), Update("b", 50, {T({3, 1, 0})}),
                     Update("c", 1, {T({10, 2, 0})}), Update("d", 1, {T({2, 8, -1})})});
  ASSERT_TRUE(even.ok());
  ExpectValues((*even)[0], {2.5f, 3, 0});
  // A single update is its own median; shapes survive.
  auto one = Round(*median, {torch::zeros({2, 2})}, {true},
                   {Update("a", 1, {T({1, 2, 3, 4}).reshape({2, 2})})});
  ASSERT_TRUE(one.ok());
  EXPECT_EQ((*one)[0].sizes(), torch::IntArrayRef({2, 2}));
  ExpectValues((*one)[0], {1, 2, 3, 4});
}

TEST(FedMedianTest, UntrainedEntriesKeepTheGlobalValues) {
  const Weights global = {T({0}), T({7, 7})};
  auto out = Round(*Make("fedmedian"), global, {true, false},
                   {Update("a", 1, {T({1}), T({1, 1})}), Update("b", 1, {T({3}), T({2, 2})})});
  ASSERT_TRUE(out.ok());
  ExpectValues((*out)[0], {2});
  EXPECT_TRUE(torch::equal((*out)[1], global[1]));
}

Result<Weights> TrimmedRound(double beta, const std::vector<std::vector<float>>& values) {
  StrategyConfig c;
  c.name = "fedtrimmedavg";
  c.trim_fraction = beta;
  auto strategy = Make(c);
  const Weights global = {torch::zeros({static_cast<int64_t>(values[0].size())})};
  std::vector<ClientUpdate> updates;
  for (size_t k = 0; k < values.size(); ++k) {
    updates.push_back(Update("c" + std::to_string(k), 1 + 10 * k, {T(values[k])}));
  }
  return Round(*strategy, global, {true}, updates);
}

TEST(FedTrimmedAvgTest, DropsFloorBetaNFromEachEnd) {
  // n = 5, beta = 0.2: k = 1. {1,2,3,4,100} -> (2+3+4)/3 = 3; {-50,0,1,2,3} -> 1.
  auto five = TrimmedRound(0.2, {{1, 3}, {100, -50}, {2, 0}, {4, 2}, {3, 1}});
  ASSERT_TRUE(five.ok());
  ExpectValues((*five)[0], {3, 1});
  // n = 4, beta = 0.2: k = floor(0.8) = 0, the plain unweighted mean.
  auto four = TrimmedRound(0.2, {{1}, {2}, {3}, {10}});
  ASSERT_TRUE(four.ok());
  ExpectValues((*four)[0], {4});
  // n = 4, beta = 0.25: k = 1, mean of the middle two.
  auto quarter = TrimmedRound(0.25, {{1}, {2}, {3}, {10}});
  ASSERT_TRUE(quarter.ok());
  ExpectValues((*quarter)[0], {2.5});
  // beta = 0 is the plain mean; beta just below 0.5 keeps the middle value(s).
  auto zero = TrimmedRound(0.0, {{1}, {2}, {9}});
  ASSERT_TRUE(zero.ok());
  ExpectValues((*zero)[0], {4});
  auto almost_half = TrimmedRound(0.49, {{1}, {2}, {9}, {100}});
  ASSERT_TRUE(almost_half.ok());
  ExpectValues((*almost_half)[0], {5.5});  // k = floor(1.96) = 1: (2+9)/2
}

TEST(FedTrimmedAvgTest, CutCountIsExactWhenBetaTimesNRoundsDown) {
  // 0.29 * 100 = 28.999999999999996 in binary floating point; the cut must still be 29.
  // Values i^2 for i = 0..99: mean of i^2 over i = 29..70 is 109081 / 42 = 2597.1666...
  // (a cut of 28 would give 2611.5).
  std::vector<std::vector<float>> values;
  for (int i = 99; i >= 0; --i) values.push_back({static_cast<float>(i * i)});
  auto out = TrimmedRound(0.29, values);
  ASSERT_TRUE(out.ok());
  ExpectValues((*out)[0], {2597.1666667f}, 1e-3);
}

TEST(FedMedianTest, ManyUpdatesSpanSeveralWorkChunks) {
  // The robust rules work on chunks of about 2^20 / n coordinates; 1001 updates of 2500
  // values cross two chunk boundaries. Update k holds (k * 37 + c) mod 1001 at coordinate c:
  // a permutation of 0..1000 per coordinate, so every median is exactly 500.
  const int64_t n = 1001, size = 2500;
  const torch::Tensor c = torch::arange(size, torch::kInt64);
  std::vector<ClientUpdate> updates;
  for (int64_t k = 0; k < n; ++k) {
    updates.push_back(Update("c", 1, {((c + k * 37) % n).to(torch::kFloat32)}));
  }
  auto out = Round(*Make("fedmedian"), {torch::zeros({size})}, {true}, updates);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(torch::equal((*out)[0], torch::full({size}, 500.0f)));
}

// ---- Krum / Multi-Krum (Blanchard et al. 2017)
//
// Trainable entries 0 and 1 hold one coordinate each, so each update is a point in 2-D.
// Entry 2 is not trained: its values must neither count in the distances nor leave global.
Weights KrumGlobal() { return {T({3}), T({4}), T({7, 7})}; }
const std::vector<bool> kKrumMask = {true, true, false};

ClientUpdate Point(const std::string& id, int64_t n, float x, float y, float junk = 0) {
  return Update(id, n, {T({x}), T({y}), T({junk, junk})});
}

// f = 1, n = 5; neighbours n - f - 2 = 2. Squared distances: a-b 1, a-c 1, b-c 2, d to a/b/c
// 0.5, e ~2e4 from all. Scores: e 39601.5, a 1.5, b 1.5, c 1.5, d 0.5 + 0.5 = 1.
// d's untrained entry is far off: counting it would make d lose.
std::vector<ClientUpdate> KrumPoints() {
  return {Point("e", 1000, 100, 100), Point("a", 1, 0, 0), Point("b", 1, 1, 0), Point("c", 2, 0, 1),
          Point("d", 4, 0.5f, 0.5f, 1e6f)};
}

StrategyConfig KrumConfig(const std::string& name, int f, int keep = 0) {
  StrategyConfig c;
  c.name = name;
  c.byzantine = f;
  c.multikrum_keep = keep;
  return c;
}

TEST(KrumTest, PicksTheMostCentralHonestUpdate) {
  auto out = Round(*Make(KrumConfig("krum", 1)), KrumGlobal(), kKrumMask, KrumPoints());
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ExpectValues((*out)[0], {0.5});
  ExpectValues((*out)[1], {0.5});
  ExpectValues((*out)[2], {7, 7});  // untrained: global
}

TEST(KrumTest, IgnoresTwoColludingOutliersWithFTwo) {
  // n = 7, f = 2, neighbours 3. Scores: the two outliers (1 apart) 39403.5 and 39802;
  // honest a, b, c, g 2.5 and d 1.5.
  std::vector<ClientUpdate> points = {
      Point("e1", 1, 100, 100),  Point("a", 1, 0, 0), Point("b", 1, 1, 0),     Point("c", 1, 0, 1),
      Point("d", 1, 0.5f, 0.5f), Point("g", 1, 1, 1), Point("e2", 1, 101, 100)};
  auto out = Round(*Make(KrumConfig("krum", 2)), KrumGlobal(), kKrumMask, points);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ExpectValues((*out)[0], {0.5});
  ExpectValues((*out)[1], {0.5});
}

TEST(KrumTest, MultiKrumAveragesTheBestByExampleCount) {
  // Default m = n - f = 4: d, a, b, c (not e). Weighted by n = 4, 1, 1, 2:
  // x = (4*0.5 + 0 + 1 + 0) / 8 = 0.375, y = (4*0.5 + 0 + 0 + 2*1) / 8 = 0.5.
  auto out = Round(*Make(KrumConfig("multikrum", 1)), KrumGlobal(), kKrumMask, KrumPoints());
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ExpectValues((*out)[0], {0.375});
  ExpectValues((*out)[1], {0.5});
  ExpectValues((*out)[2], {7, 7});
  // m = 2: d, then the earliest of the tied a, b, c, i.e. a: (4*0.5 + 1*0) / 5 = 0.4.
  auto two = Round(*Make(KrumConfig("multikrum", 1, 2)), KrumGlobal(), kKrumMask, KrumPoints());
  ASSERT_TRUE(two.ok()) << two.status().ToString();
  ExpectValues((*two)[0], {0.4f});
  ExpectValues((*two)[1], {0.4f});
  // m larger than n - f is refused.
  auto five = Round(*Make(KrumConfig("multikrum", 1, 5)), KrumGlobal(), kKrumMask, KrumPoints());
  EXPECT_EQ(five.status().code(), StatusCode::kFailedPrecondition);
}

TEST(KrumTest, ManyUpdatesSpanSeveralWorkChunks) {
  // 1001 updates of 2500 values, so distances accumulate over three chunks. Update k < 1000
  // is k everywhere, the last is 499.5. f = 499 is the largest f that n = 1001 allows
  // (n = 2f + 3), leaving 500 neighbours. Per coordinate the last update's 500 nearest are
  // 0.5, 0.5, 1.5, 1.5, ..., 249.5, 249.5: score 2 * sum_{k<250} (k + 0.5)^2 = 10416625;
  // the best integer point (500) has 0.5, 1, 1, ..., 249, 249, 250: 10416750.25.
  const int64_t size = 2500;
  std::vector<ClientUpdate> updates;
  for (int k = 0; k < 1000; ++k) {
    updates.push_back(Update("c", 1, {torch::full({size}, static_cast<float>(k))}));
  }
  updates.push_back(Update("mid", 1, {torch::full({size}, 499.5f)}));
  auto out = Round(*Make(KrumConfig("krum", 499)), {torch::zeros({size})}, {true}, updates);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(torch::equal((*out)[0], torch::full({size}, 499.5f)));
}

TEST(KrumTest, TooFewUpdatesIsFailedPreconditionAndTheRoundCanContinue) {
  for (const std::string name : {"krum", "multikrum"}) {
    SCOPED_TRACE(name);
    auto strategy = Make(KrumConfig(name, 1));
    const Weights global = KrumGlobal();
    auto agg = strategy->BeginRound(global, kKrumMask);
    const auto points = KrumPoints();
    for (int k = 0; k < 4; ++k) ASSERT_TRUE(agg->Add(points[k]).ok());
    auto early = agg->Finish();  // n = 4 < 2f + 3 = 5
    EXPECT_EQ(early.status().code(), StatusCode::kFailedPrecondition);
    ASSERT_TRUE(agg->Add(points[4]).ok());
    EXPECT_TRUE(agg->Finish().ok());
  }
  // f = 0 still needs three updates (n - f - 2 >= 1 neighbour).
  auto strategy = Make(KrumConfig("krum", 0));
  auto two = Round(*strategy, KrumGlobal(), kKrumMask, {Point("a", 1, 0, 0), Point("b", 1, 1, 1)});
  EXPECT_EQ(two.status().code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace cleave::federated
