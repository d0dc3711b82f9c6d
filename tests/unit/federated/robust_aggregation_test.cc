#include "federated/strategy.h"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "unit/federated/strategy_test_helpers.h"

// Median, trimmed mean, Krum, Multi-Krum and Bulyan (federated/robust_aggregation.cc), and
// norm bounding (federated/norm_bound.cc).
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

// ---- Bulyan (El Mhamdi et al. 2018)

StrategyConfig BulyanConfig(int f) {
  StrategyConfig c;
  c.name = "bulyan";
  c.byzantine = f;
  return c;
}

// n = 7, f = 1: theta = 5 Krum selections, then beta = 3 values per coordinate. Points in the
// trainable plane (the untrained third entry holds junk that must not count):
//   A(4,3) B(3,3) C(4,-1) D(2,-2) E(-3,-1) F(4,0) Z(100,-100)
// Squared distances among A..F:
//   AB 1  AC 16  AD 29  AE 65  AF 9   BC 17  BD 26  BE 52  BF 10
//   CD 5  CE 49  CF 1   DE 26  DF 8   EF 50;  Z is >= 9604 + 10201 from all of them.
// Krum on the remaining set R with k = max(1, |R| - f - 2) neighbours:
//   |R| = 7, k = 4: A 1+9+16+29 = 55, B 1+10+17+26 = 54, C 1+5+16+17 = 39,
//                   D 5+8+26+26 = 65, E 26+49+50+52 = 177, F 1+8+9+10 = 28     -> F
//   |R| = 6, k = 3: A 1+16+29 = 46, B 1+17+26 = 44, C 5+16+17 = 38, D 57, E 127 -> C
//   |R| = 5, k = 2: A 1+29 = 30, B 1+26 = 27, D 26+26 = 52, E 26+52 = 78        -> B
//   |R| = 4, k = 1: A 29, D 26, E 26: a tie, the earlier added wins              -> D
//   |R| = 3, k = 1: A 65, E 65: a tie again                                       -> A
// Selection {F, C, B, D, A}. x: 4 4 3 2 4, sorted 2 3 4 4 4, median 4, the 3 closest are
// 4 4 4 -> 4. y: 0 -1 3 -2 3, sorted -2 -1 0 3 3, median 0, distances 2 1 0 3 3, the 3
// closest are -2 -1 0 -> -1 (a window below the median: not the middle three).
std::vector<ClientUpdate> BulyanPoints() {
  return {Point("A", 1, 4, 3, 1e6f),  Point("B", 7, 3, 3),    Point("C", 2, 4, -1),
          Point("D", 1, 2, -2),       Point("E", 50, -3, -1), Point("F", 3, 4, 0),
          Point("Z", 1000, 100, -100)};
}

TEST(BulyanTest, HandComputedSelectionAndBetaClosestMean) {
  auto out = Round(*Make(BulyanConfig(1)), KrumGlobal(), kKrumMask, BulyanPoints());
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ExpectValues((*out)[0], {4});
  ExpectValues((*out)[1], {-1});
  ExpectValues((*out)[2], {7, 7});  // untrained: global
}

TEST(BulyanTest, KrumTiesGoToTheEarliestAdded) {
  // E added before D: at |R| = 4 the tie D/E (26) now goes to E; at |R| = 3, A and D tie at
  // 29 and A (added first) wins. Selection {F, C, B, E, A}: x 4 4 3 -3 4, sorted -3 3 4 4 4,
  // median 4 -> 4 4 4 -> 4; y 0 -1 3 -1 3, sorted -1 -1 0 3 3, median 0 -> -1 -1 0 -> -2/3.
  std::vector<ClientUpdate> points = BulyanPoints();
  std::swap(points[3], points[4]);
  auto out = Round(*Make(BulyanConfig(1)), KrumGlobal(), kKrumMask, points);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ExpectValues((*out)[0], {4});
  ExpectValues((*out)[1], {-2.0f / 3});
}

TEST(BulyanTest, BetaClosestWindowAcrossRepeatedValues) {
  // f = 3, n = 15: theta = 9, beta = 3. Entry 0 steers the selection: the nine "cluster"
  // updates are 0 there, the six outliers 1000 on their own axis (1e6 from the cluster, 2e6
  // from each other), so Krum always prefers a cluster update (score about 2e6 against 3e6
  // or more) and the selection is exactly the cluster. Entry 1 of the cluster, sorted:
  // 0 0 0 0 2 3 3 3 3, median 2. Windows of three: costs 6 6 4 3 2 3 3, best [2 3 3] -> 8/3.
  // (Counting the starts where sliding up helps would stop at [0 2 3], 5/3: the repeated
  // zeros make that test non-monotone.)
  const std::vector<float> cluster = {3, 0, 3, 0, 2, 3, 0, 3, 0};
  std::vector<ClientUpdate> updates;
  for (size_t k = 0; k < cluster.size(); ++k) {
    updates.push_back(Update("c" + std::to_string(k), 1, {torch::zeros({6}), T({cluster[k]})}));
  }
  for (int j = 0; j < 6; ++j) {
    torch::Tensor axis = torch::zeros({6});
    axis[j] = 1000;
    updates.push_back(Update("o" + std::to_string(j), 1, {axis, T({-50})}));
  }
  auto out =
      Round(*Make(BulyanConfig(3)), {torch::zeros({6}), torch::zeros({1})}, {true, true}, updates);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ExpectValues((*out)[0], {0, 0, 0, 0, 0, 0});
  ExpectValues((*out)[1], {8.0f / 3}, 1e-6);
}

TEST(BulyanTest, WithoutByzantineClientsItIsThePlainMean) {
  // f = 0: theta = n, beta = n: every update, every value, unweighted.
  auto out = Round(
      *Make(BulyanConfig(0)), {torch::zeros({2})}, {true},
      {Update("a", 1, {T({1, -1})}), Update("b", 5, {T({2, 0})}), Update("c", 9, {T({9, 4})})});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ExpectValues((*out)[0], {4, 1});
}

TEST(BulyanTest, TooFewUpdatesIsFailedPreconditionAndTheRoundCanContinue) {
  // f = 1 needs n >= 4f + 3 = 7.
  auto strategy = Make(BulyanConfig(1));
  const Weights global = KrumGlobal();
  auto agg = strategy->BeginRound(global, kKrumMask);
  const auto points = BulyanPoints();
  for (int k = 0; k < 6; ++k) ASSERT_TRUE(agg->Add(points[k]).ok());
  auto early = agg->Finish();
  EXPECT_EQ(early.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(early.status().message().find("n >= 4f + 3 = 7"), std::string::npos)
      << early.status().ToString();
  EXPECT_NE(early.status().message().find("got 6"), std::string::npos);
  ASSERT_TRUE(agg->Add(points[6]).ok());
  auto full = agg->Finish();
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  ExpectValues((*full)[1], {-1});
  // f = 2: 10 updates are refused, 11 accepted.
  std::vector<ClientUpdate> many;
  for (int k = 0; k < 11; ++k) many.push_back(Point("p", 1, static_cast<float>(k), 0));
  auto f2 = Make(BulyanConfig(2));
  EXPECT_EQ(Round(*f2, global, kKrumMask, {many.begin(), many.begin() + 10}).status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Round(*f2, global, kKrumMask, many).ok());
  // f = 0 still needs three updates.
  EXPECT_EQ(
      Round(*Make(BulyanConfig(0)), global, kKrumMask, {points[0], points[1]}).status().code(),
      StatusCode::kFailedPrecondition);
}

TEST(BulyanTest, SignFlippedBoostedOutliersBarelyMoveTheResult) {
  // 9 honest updates around 1 (noise of stddev 0.1) in 64 coordinates and f = 2 attackers
  // that sign-flip and boost two honest updates by 10 (global = 0): about -10 everywhere.
  // The plain mean moves by about 2; Bulyan stays within the honest spread of the honest
  // mean.
  torch::manual_seed(7);
  const int64_t d = 64;
  const Weights global = {torch::zeros({d})};
  std::vector<torch::Tensor> honest;
  for (int k = 0; k < 9; ++k) honest.push_back(1 + 0.1 * torch::randn({d}));
  const torch::Tensor honest_mean = torch::stack(honest).mean(0);
  std::vector<ClientUpdate> updates;
  updates.push_back(Update("byz0", 1, {-10 * honest[0]}));
  for (int k = 0; k < 9; ++k) {
    updates.push_back(Update("h" + std::to_string(k), 1, {honest[k]}));
    if (k == 4) updates.push_back(Update("byz1", 1, {-10 * honest[1]}));
  }
  ASSERT_EQ(updates.size(), 11u);  // n = 4f + 3
  auto bulyan = Round(*Make(BulyanConfig(2)), global, {true}, updates);
  ASSERT_TRUE(bulyan.ok()) << bulyan.status().ToString();
  EXPECT_LT(((*bulyan)[0] - honest_mean).abs().max().item<float>(), 0.3f);
  auto mean = Round(*Make("fedavg"), global, {true}, updates);
  ASSERT_TRUE(mean.ok());
  EXPECT_GT(((*mean)[0] - honest_mean).abs().min().item<float>(), 1.5f);
}

// ---- norm bounding (Sun et al. 2019)

StrategyConfig Bounded(const std::string& name, double norm_bound) {
  StrategyConfig c;
  c.name = name;
  c.norm_bound = norm_bound;
  return c;
}

// Global: trainable entries {1} and {1}, untrained {0, 0}. The delta is taken over both
// trainable entries as one vector; the untrained entry never counts.
Weights BoundGlobal() { return {T({1}), T({1}), T({0, 0})}; }
const std::vector<bool> kBoundMask = {true, true, false};

double TrainableDeltaNorm(const Weights& w, const Weights& global) {
  double squared = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    if (kBoundMask[i]) squared += (w[i] - global[i]).pow(2).sum().item<double>();
  }
  return std::sqrt(squared);
}

TEST(NormBoundTest, ClipsABigUpdateToExactlyTheBound) {
  // Delta (6, 8): norm 10 > 5, scaled by 1/2 to (3, 4). The untrained entry's 1e6 is
  // neither counted nor kept.
  auto strategy = Make(Bounded("fedavg", 5));
  EXPECT_EQ(strategy->name(), "fedavg");
  const Weights global = BoundGlobal();
  auto out =
      Round(*strategy, global, kBoundMask, {Update("big", 3, {T({7}), T({9}), T({1e6f, 0})})});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ExpectValues((*out)[0], {4});
  ExpectValues((*out)[1], {5});
  ExpectValues((*out)[2], {0, 0});
  EXPECT_NEAR(TrainableDeltaNorm(*out, global), 5.0, 1e-5);
  EXPECT_EQ(strategy->RoundReport().at("norm_bound_clipped"), 1);
}

TEST(NormBoundTest, LeavesASmallUpdateUnchanged) {
  // Delta (0.3, 0.4): norm 0.5 <= 5. The untrained entry would be huge: not counted.
  auto strategy = Make(Bounded("fedavg", 5));
  auto out = Round(*strategy, BoundGlobal(), kBoundMask,
                   {Update("small", 1, {T({1.3f}), T({1.4f}), T({1e6f, 1e6f})})});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ExpectValues((*out)[0], {1.3f});
  ExpectValues((*out)[1], {1.4f});
  EXPECT_EQ(strategy->RoundReport().at("norm_bound_clipped"), 0);
}

TEST(NormBoundTest, ClipsBeforeTheStrategyAggregates) {
  // FedAvg: big (6, 8) -> (3, 4) with weight 1, small (0.3, 0.4) with weight 4:
  // deltas (3 + 1.2, 4 + 1.6) / 5 = (0.84, 1.12), plus global 1.
  auto fedavg = Round(*Make(Bounded("fedavg", 5)), BoundGlobal(), kBoundMask,
                      {Update("big", 1, {T({7}), T({9}), T({0, 0})}),
                       Update("small", 4, {T({1.3f}), T({1.4f}), T({0, 0})})});
  ASSERT_TRUE(fedavg.ok()) << fedavg.status().ToString();
  ExpectValues((*fedavg)[0], {1.84f}, 1e-5);
  ExpectValues((*fedavg)[1], {2.12f}, 1e-5);
  // Median over 1-D deltas 10, 20, 0.5 with bound 2: 2, 2, 0.5 -> median 2, plus global 1.
  auto median =
      Round(*Make(Bounded("fedmedian", 2)), {T({1})}, {true},
            {Update("a", 1, {T({11})}), Update("b", 1, {T({21})}), Update("c", 1, {T({1.5f})})});
  ASSERT_TRUE(median.ok()) << median.status().ToString();
  ExpectValues((*median)[0], {3});
  // Stateful strategies keep their state and name through the wrapper.
  auto adam = Make(Bounded("fedadam", 1));
  EXPECT_EQ(adam->name(), "fedadam");
  ASSERT_TRUE(Round(*adam, {T({0})}, {true}, {Update("a", 1, {T({3})})}).ok());
  EXPECT_FALSE(adam->SaveState().empty());
}

TEST(NormBoundTest, BadUpdatesAreRefusedBeforeTheNormIsTaken) {
  auto strategy = Make(Bounded("krum", 1));
  const Weights global = BoundGlobal();
  auto agg = strategy->BeginRound(global, kBoundMask);
  EXPECT_EQ(agg->Add(Update("shape", 1, {T({1, 2}), T({1}), T({0, 0})})).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(agg->Add(Update("count", 1, {T({1})})).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(agg->Add(Update("zero", 0, global)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(agg->count(), 0);
  EXPECT_EQ(agg->Finish().status().code(), StatusCode::kFailedPrecondition);
}

TEST(NormBoundTest, ConfigRejectsNegativeAndNonFiniteBounds) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  for (double bad : {-1.0, -1e-9, nan, inf}) {
    SCOPED_TRACE(bad);
    const StrategyConfig c = Bounded("fedavg", bad);
    const Status s = c.Validate();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("norm_bound"), std::string::npos) << s.ToString();
    EXPECT_EQ(MakeStrategy(c).status().code(), StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(Bounded("bulyan", 0).Validate().ok());  // 0 = off
  auto back = StrategyConfig::FromJson(Bounded("fedmedian", 2.5).ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->norm_bound, 2.5);
  EXPECT_EQ(StrategyConfig::FromJson({{"norm_bound", "1"}}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(StrategyConfig::FromJson({{"norm_bound", -2}}).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cleave::federated
