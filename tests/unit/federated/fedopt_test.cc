#include "federated/strategy.h"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "unit/federated/strategy_test_helpers.h"

// FedAdam, FedYogi, FedAdagrad (federated/fedopt.cc).
// Expected values below were computed by hand (and checked with a few lines of plain
// Python), never by calling the code under test.
namespace cleave::federated {
namespace {

using strategy_testing::ExpectValues;
using strategy_testing::Make;
using strategy_testing::Round;
using strategy_testing::T;
using strategy_testing::Update;

// ---- FedOpt (Reddi et al. 2021, Algorithm 2), eta 0.1, betas 0.9/0.99, tau 0.01.
//
// Round 1: x = [1, -2]; clients n=1 [2, -2] and n=3 [1.5, -1]: mean [1.625, -1.25],
// Delta = [0.625, 0.75], m = 0.1 Delta = [0.0625, 0.075], v0 = tau^2 = 1e-4.
// Round 2: clients n=2 [1, 0] and n=2 [2, -1] (mean [1.5, -0.5]) against the new x.

struct FedOptCase {
  std::string name;
  std::vector<float> x1, v1, x2, v2, m2;
};

std::vector<FedOptCase> FedOptCases() {
  return {
      // v1 = 1e-4 + Delta^2.
      {"fedadagrad",
       {1.00984128f, -1.99013244f},
       {0.390725f, 0.5626f},
       {1.02292847f, -1.9772314f},
       {0.630980571f, 2.7830947f},
       {0.105265872f, 0.216513244f}},
      // v1 = 0.99e-4 + 0.01 Delta^2.
      {"fedadam",
       {1.0852811f, -1.91244161f},
       {0.00400525f, 0.005724f},
       {1.19970994f, -1.78968854f},
       {0.00568511513f, 0.0256166729f},
       {0.0977218897f, 0.208744161f}},
      // v0 < Delta^2, so sign(v - Delta^2) = -1: v1 = 1e-4 + 0.01 Delta^2.
      {"fedyogi",
       {1.08527191f, -1.91244836f},
       {0.00400625f, 0.005725f},
       {1.1993382f, -1.78982645f},
       {0.00572624388f, 0.0256751037f},
       {0.0977228089f, 0.208744836f}},
  };
}

StrategyConfig FedOptConfig(const std::string& name) {
  StrategyConfig c;
  c.name = name;
  c.server_lr = 0.1;
  c.beta1 = 0.9;
  c.beta2 = 0.99;
  c.tau = 0.01;
  return c;
}

std::vector<ClientUpdate> Round1Updates() {
  return {Update("a", 1, {T({2, -2}), T({5})}), Update("b", 3, {T({1.5f, -1}), T({6})})};
}
std::vector<ClientUpdate> Round2Updates() {
  return {Update("a", 2, {T({1, 0}), T({5})}), Update("b", 2, {T({2, -1}), T({6})})};
}

TEST(FedOptTest, OneAndTwoStepsMatchAlgorithm2) {
  const std::vector<bool> mask = {true, false};
  for (const auto& c : FedOptCases()) {
    SCOPED_TRACE(c.name);
    auto strategy = Make(FedOptConfig(c.name));
    const Weights x0 = {T({1, -2}), T({3})};
    auto x1 = Round(*strategy, x0, mask, Round1Updates());
    ASSERT_TRUE(x1.ok()) << x1.status().ToString();
    ExpectValues((*x1)[0], c.x1, 1e-5);
    EXPECT_TRUE(torch::equal((*x1)[1], x0[1]));  // untrained entry untouched

    auto state = strategy->SaveState();
    ASSERT_EQ(state.size(), 5u);  // m.0 v.0 m.1 v.1 step
    EXPECT_EQ(state[0].first, "m.0");
    ExpectValues(state[0].second, {0.0625f, 0.075f});
    EXPECT_EQ(state[1].first, "v.0");
    ExpectValues(state[1].second, c.v1, 1e-7);
    // The untrained entry's moments stay at their initial values.
    ExpectValues(state[2].second, {0});
    ExpectValues(state[3].second, {1e-4f}, 1e-10);
    EXPECT_EQ(state[4].first, "step");
    EXPECT_EQ(state[4].second.item<int64_t>(), 1);

    auto x2 = Round(*strategy, *x1, mask, Round2Updates());
    ASSERT_TRUE(x2.ok()) << x2.status().ToString();
    ExpectValues((*x2)[0], c.x2, 1e-5);
    state = strategy->SaveState();
    ExpectValues(state[0].second, c.m2, 1e-6);
    ExpectValues(state[1].second, c.v2, 1e-6);
  }
}

TEST(FedOptTest, YogiShrinksVWhenItExceedsDeltaSquared) {
  // One coordinate, v0 = tau^2 = 1 (tau = 1) and Delta = 0.5: sign(1 - 0.25) = +1, so
  // v1 = 1 - 0.01 * 0.25 = 0.9975 (Adam would give 0.99 + 0.0025 = 0.9925).
  StrategyConfig c = FedOptConfig("fedyogi");
  c.tau = 1.0;
  auto strategy = Make(c);
  const Weights x0 = {T({0})};
  auto x1 = Round(*strategy, x0, {true}, {Update("a", 1, {T({0.5f})})});
  ASSERT_TRUE(x1.ok());
  ExpectValues(strategy->SaveState()[1].second, {0.9975f});
  // x1 = 0 + 0.1 * 0.05 / (sqrt(0.9975) + 1).
  ExpectValues((*x1)[0], {0.1f * 0.05f / (std::sqrt(0.9975f) + 1.0f)}, 1e-7);
}

TEST(FedOptTest, SaveLoadRoundTripContinuesIdentically) {
  const std::vector<bool> mask = {true, true};
  for (const std::string name : {"fedadam", "fedyogi", "fedadagrad"}) {
    SCOPED_TRACE(name);
    auto original = Make(FedOptConfig(name));
    const Weights x0 = {T({1, -2}), T({3})};
    auto x1 = Round(*original, x0, mask, Round1Updates());
    ASSERT_TRUE(x1.ok());

    auto resumed = Make(FedOptConfig(name));
    ASSERT_TRUE(resumed->LoadState(original->SaveState()).ok());
    auto a = Round(*original, *x1, mask, Round2Updates());
    auto b = Round(*resumed, *x1, mask, Round2Updates());
    ASSERT_TRUE(a.ok() && b.ok());
    for (size_t i = 0; i < a->size(); ++i) EXPECT_TRUE(torch::equal((*a)[i], (*b)[i])) << i;
    const auto sa = original->SaveState();
    const auto sb = resumed->SaveState();
    ASSERT_EQ(sa.size(), sb.size());
    for (size_t i = 0; i < sa.size(); ++i) {
      EXPECT_EQ(sa[i].first, sb[i].first);
      EXPECT_TRUE(torch::equal(sa[i].second, sb[i].second)) << sa[i].first;
    }
  }
}

TEST(FedOptTest, SavedStateIsASnapshot) {
  auto strategy = Make(FedOptConfig("fedadam"));
  const Weights x0 = {T({1, -2}), T({3})};
  auto x1 = Round(*strategy, x0, {true, true}, Round1Updates());
  ASSERT_TRUE(x1.ok());
  const auto snapshot = strategy->SaveState();
  const torch::Tensor m0 = snapshot[0].second.clone();
  ASSERT_TRUE(Round(*strategy, *x1, {true, true}, Round2Updates()).ok());
  EXPECT_TRUE(torch::equal(snapshot[0].second, m0));
}

TEST(FedOptTest, LoadStateRejectsMalformedStateAndKeepsTheOld) {
  auto strategy = Make(FedOptConfig("fedadam"));
  const auto ok = [] {
    return std::vector<std::pair<std::string, torch::Tensor>>{
        {"m.0", T({0, 0})}, {"v.0", T({1, 1})}, {"step", torch::tensor(int64_t{4})}};
  };
  ASSERT_TRUE(strategy->LoadState(ok()).ok());
  auto with = [&](const std::string& name, torch::Tensor t) {
    auto s = ok();
    for (auto& [n, v] : s) {
      if (n == name) v = t;
    }
    return s;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::vector<std::pair<std::string, torch::Tensor>>> bad = {
      with("m.0", T({0, 0, 0})),  // m and v differ in shape
      with("v.0", T({1, -1})),    // negative second moment
      with("m.0", T({nan, 0})),   // non-finite
      with("m.0", T({0, 0}).to(torch::kFloat64)),
      with("step", torch::tensor(1.5)),  // not an int64
      with("step", torch::tensor(int64_t{-1})),
  };
  auto unknown = ok();
  unknown.emplace_back("w.0", T({1}));
  bad.push_back(unknown);
  auto missing_v = ok();
  missing_v.erase(missing_v.begin() + 1);
  bad.push_back(missing_v);
  auto gap = ok();
  gap.emplace_back("m.2", T({0}));
  gap.emplace_back("v.2", T({1}));
  bad.push_back(gap);
  auto no_step = ok();
  no_step.pop_back();
  bad.push_back(no_step);
  for (size_t i = 0; i < bad.size(); ++i) {
    EXPECT_EQ(strategy->LoadState(bad[i]).code(), StatusCode::kInvalidArgument) << i;
  }
  // The valid state loaded first is still there.
  const auto state = strategy->SaveState();
  ASSERT_EQ(state.size(), 3u);
  EXPECT_EQ(state[2].second.item<int64_t>(), 4);

  // State of another model is refused at Apply, which leaves it unchanged.
  const Weights other = {T({1, 2, 3})};
  EXPECT_EQ(strategy->Apply(other, other, {true}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(strategy->SaveState()[2].second.item<int64_t>(), 4);
}

}  // namespace
}  // namespace cleave::federated
