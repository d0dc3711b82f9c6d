#include "split/exit_policy.h"

#include <cmath>

#include <gtest/gtest.h>

namespace cleave::split {
namespace {

torch::Tensor Logits(std::vector<std::vector<float>> rows) {
  std::vector<torch::Tensor> t;
  for (auto& r : rows) t.push_back(torch::tensor(r));
  return torch::stack(t);
}

TEST(ExitScoresTest, HandComputedValuesPerCriterion) {
  // p = [0.75, 0.25] and the uniform distribution.
  const torch::Tensor logits = Logits({{std::log(3.0f), 0.0f}, {0.0f, 0.0f}});
  const torch::Tensor soft = ExitScores(ExitCriterion::kMaxSoftmax, logits);
  EXPECT_NEAR(soft[0].item<float>(), 0.75f, 1e-6);
  EXPECT_NEAR(soft[1].item<float>(), 0.5f, 1e-6);
  const torch::Tensor margin = ExitScores(ExitCriterion::kMargin, logits);
  EXPECT_NEAR(margin[0].item<float>(), 0.5f, 1e-6);
  EXPECT_NEAR(margin[1].item<float>(), 0.0f, 1e-6);
  const torch::Tensor entropy = ExitScores(ExitCriterion::kEntropy, logits);
  const double h = -(0.75 * std::log(0.75) + 0.25 * std::log(0.25)) / std::log(2.0);
  EXPECT_NEAR(entropy[0].item<float>(), 1.0 - h, 1e-5);
  EXPECT_NEAR(entropy[1].item<float>(), 0.0f, 1e-6);  // uniform: no confidence
}

TEST(ExitScoresTest, SaturatedLogitsStayFiniteAndMaximal) {
  const torch::Tensor logits = Logits({{1000.0f, -1000.0f, -1000.0f}});
  for (auto c : {ExitCriterion::kMaxSoftmax, ExitCriterion::kEntropy, ExitCriterion::kMargin}) {
    const float s = ExitScores(c, logits)[0].item<float>();
    EXPECT_TRUE(std::isfinite(s)) << ExitCriterionName(c);
    EXPECT_NEAR(s, 1.0f, 1e-5) << ExitCriterionName(c);
  }
}

TEST(ExitScoresTest, MoreConfidentLogitsScoreHigher) {
  const torch::Tensor logits = Logits({{2, 1, 0, 0}, {5, 1, 0, 0}});
  for (auto c : {ExitCriterion::kMaxSoftmax, ExitCriterion::kEntropy, ExitCriterion::kMargin}) {
    const torch::Tensor s = ExitScores(c, logits);
    EXPECT_LT(s[0].item<float>(), s[1].item<float>()) << ExitCriterionName(c);
  }
}

TEST(ExitCriterionTest, NamesRoundTripAndUnknownIsRejected) {
  for (auto c : {ExitCriterion::kMaxSoftmax, ExitCriterion::kEntropy, ExitCriterion::kMargin}) {
    auto parsed = ParseExitCriterion(ExitCriterionName(c));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, c);
  }
  auto bad = ParseExitCriterion("confidence");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
}

TEST(ExitPolicyTest, DecidePicksFirstConfidentExitElseOffload) {
  const ExitPolicy policy(ExitCriterion::kMaxSoftmax, {0.9, 0.6});
  // Row 0: exit 0 confident. Row 1: only exit 1. Row 2: neither.
  const torch::Tensor e0 = Logits({{10, 0}, {0.5f, 0}, {0, 0}});
  const torch::Tensor e1 = Logits({{10, 0}, {2, 0}, {0.1f, 0}});
  EXPECT_EQ(policy.Decide({e0, e1}), (std::vector<int>{0, 1, -1}));
  // A missing exit is never confident.
  EXPECT_EQ(policy.Decide({e0}), (std::vector<int>{0, -1, -1}));
  // Malformed exit tensors degrade to offloading instead of throwing.
  EXPECT_EQ(policy.Decide({e0, torch::zeros({2, 2})}), (std::vector<int>{0, -1, -1}));
  EXPECT_EQ(policy.Decide({e0, torch::zeros({3})}), (std::vector<int>{0, -1, -1}));
  EXPECT_TRUE(policy.Decide({}).empty());
  // Disabled thresholds never exit; zero always exits.
  EXPECT_EQ(ExitPolicy(ExitCriterion::kMaxSoftmax, {kExitDisabled}).Decide({e0}),
            (std::vector<int>{-1, -1, -1}));
  EXPECT_EQ(ExitPolicy(ExitCriterion::kMaxSoftmax, {0.0}).Decide({e0}),
            (std::vector<int>{0, 0, 0}));
}

TEST(ExitPolicyTest, JsonRoundTrip) {
  const ExitPolicy policy(ExitCriterion::kEntropy, {0.25, 0.875});
  auto back = ExitPolicy::FromJson(policy.ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->criterion(), ExitCriterion::kEntropy);
  EXPECT_EQ(back->thresholds(), policy.thresholds());
}

TEST(ExitPolicyTest, BadJsonIsRejected) {
  using nlohmann::json;
  const json cases[] = {
      json::array(),
      json{{"thresholds", {0.5}}},
      json{{"criterion", "max_softmax"}},
      json{{"criterion", 3}, {"thresholds", {0.5}}},
      json{{"criterion", "best"}, {"thresholds", {0.5}}},
      json{{"criterion", "margin"}, {"thresholds", 0.5}},
      json{{"criterion", "margin"}, {"thresholds", {"high"}}},
      json{{"criterion", "margin"}, {"thresholds", {-0.1}}},
  };
  for (const json& j : cases) {
    auto r = ExitPolicy::FromJson(j);
    EXPECT_FALSE(r.ok()) << j.dump();
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << j.dump();
    }
  }
}

TEST(CalibrationTargetTest, ParsesBothKindsAndRejectsNonsense) {
  auto drop = CalibrationTarget::Parse("drop:0.3");
  ASSERT_TRUE(drop.ok());
  EXPECT_EQ(drop->kind, CalibrationTarget::Kind::kMaxAccuracyDrop);
  EXPECT_DOUBLE_EQ(drop->value, 0.3);
  auto offload = CalibrationTarget::Parse("offload:0.35");
  ASSERT_TRUE(offload.ok());
  EXPECT_EQ(offload->kind, CalibrationTarget::Kind::kMaxOffloadFraction);
  EXPECT_DOUBLE_EQ(offload->value, 0.35);
  auto percent = CalibrationTarget::Parse("offload:35%");
  ASSERT_TRUE(percent.ok());
  EXPECT_DOUBLE_EQ(percent->value, 0.35);
  EXPECT_EQ(CalibrationTarget::Parse(drop->ToString())->value, 0.3);
  for (const char* bad : {"drop", "drop:", "speed:1", "drop:abc", "drop:-1", "drop:101", "drop:5%",
                          "offload:1.5", "offload:-0.1", "offload:150%", "drop:nan"}) {
    auto r = CalibrationTarget::Parse(bad);
    EXPECT_FALSE(r.ok()) << bad;
  }
}

TEST(CalibrationTargetTest, ParsesAConfidenceForDropOnly) {
  auto bounded = CalibrationTarget::Parse("drop:0.2@0.9");
  ASSERT_TRUE(bounded.ok()) << bounded.status().ToString();
  EXPECT_DOUBLE_EQ(bounded->value, 0.2);
  EXPECT_DOUBLE_EQ(bounded->confidence, 0.9);
  EXPECT_EQ(bounded->ToString(), "drop:0.2@0.9");
  auto percent = CalibrationTarget::Parse("drop:0.2@95%");
  ASSERT_TRUE(percent.ok());
  EXPECT_DOUBLE_EQ(percent->confidence, 0.95);
  auto again = CalibrationTarget::Parse(bounded->ToString());
  ASSERT_TRUE(again.ok());
  EXPECT_DOUBLE_EQ(again->confidence, 0.9);
  EXPECT_DOUBLE_EQ(CalibrationTarget::Parse("drop:0.2")->confidence, 0.0);
  for (const char* bad : {"offload:0.3@0.9", "drop:0.2@0.5", "drop:0.2@1", "drop:0.2@x",
                          "drop:0.2@", "drop:0.2@0.9@0.9", "drop:@0.9", "drop:0.2@150%"}) {
    auto r = CalibrationTarget::Parse(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

// One exit over 1000 rows whose offloaded answer is always right; the exit is right on every
// row except those at `wrong` (ranks by falling score, 0 = most confident).
struct Ranked {
  std::vector<torch::Tensor> scores, correct;
  torch::Tensor full;
};
Ranked MakeRanked(const std::vector<int64_t>& wrong, const std::vector<int64_t>& full_wrong = {}) {
  const int64_t n = 1000;
  Ranked r;
  r.scores.push_back(1.0 - torch::arange(n, torch::kFloat) / (2.0 * n));  // 1 .. 0.5, distinct
  torch::Tensor correct = torch::ones({n}, torch::kBool);
  for (int64_t i : wrong) correct[i] = false;
  r.correct.push_back(correct);
  r.full = torch::ones({n}, torch::kBool);
  for (int64_t i : full_wrong) r.full[i] = false;
  return r;
}

TEST(CalibrateTest, AConfidenceBoundStopsWhereTheBoundPassesTheTarget) {
  // Ten wrong exit answers at ranks 100, 200, ..., 1000 - 0: drop:1 (10 rows of 1000) lets a
  // point estimate answer every row locally; at 90 % the bound k/n + z*sqrt(k/n - (k/n)^2)/
  // sqrt(n), z = 1.2816, is 9.1 rows for k = 6 and 10.4 rows for k = 7, so the threshold stops
  // just above the 7th wrong answer (rank 700): 700 rows answered locally.
  std::vector<int64_t> wrong;
  for (int64_t k = 1; k <= 10; ++k) wrong.push_back(k * 100 - 1);
  const Ranked r = MakeRanked(wrong);
  const CalibrationTarget point{CalibrationTarget::Kind::kMaxAccuracyDrop, 1.0};
  auto p = Calibrate(r.scores, r.correct, r.full, ExitCriterion::kMaxSoftmax, point);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_DOUBLE_EQ(p->exit_fraction, 1.0);
  EXPECT_DOUBLE_EQ(p->drop_upper_bound, 0.0);
  const CalibrationTarget bounded{CalibrationTarget::Kind::kMaxAccuracyDrop, 1.0, 0.9};
  auto b = Calibrate(r.scores, r.correct, r.full, ExitCriterion::kMaxSoftmax, bounded);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_DOUBLE_EQ(b->exit_fraction, 0.699);  // ranks 0..698: six wrong answers
  EXPECT_DOUBLE_EQ(b->accuracy, 0.994);
  const double mean = 0.006,
               bound = mean + 1.2815515655446004 * std::sqrt((mean - mean * mean) / 1000);
  EXPECT_NEAR(b->drop_upper_bound, 100 * bound, 1e-6);
  EXPECT_LE(b->drop_upper_bound, 1.0);
  EXPECT_EQ(b->target.ToString(), "drop:1@0.9");
  EXPECT_DOUBLE_EQ(b->ToJson()["drop_upper_bound"].get<double>(), b->drop_upper_bound);
}

TEST(CalibrateTest, AConfidenceBoundTestsInFixedSequenceAndStopsAtTheFirstFailure) {
  // Twelve wrong exit answers early (ranks 10..21) fail the bound; below them the exit fixes
  // 30 rows the offloaded answer gets wrong, so the point estimate recovers and goes further,
  // but the fixed sequence never looks past the first failure.
  std::vector<int64_t> wrong, full_wrong;
  for (int64_t i = 10; i < 22; ++i) wrong.push_back(i);
  for (int64_t i = 100; i < 130; ++i) full_wrong.push_back(i);
  const Ranked r = MakeRanked(wrong, full_wrong);
  const CalibrationTarget point{CalibrationTarget::Kind::kMaxAccuracyDrop, 1.0};
  auto p = Calibrate(r.scores, r.correct, r.full, ExitCriterion::kMaxSoftmax, point);
  ASSERT_TRUE(p.ok());
  EXPECT_DOUBLE_EQ(p->exit_fraction, 1.0);
  const CalibrationTarget bounded{CalibrationTarget::Kind::kMaxAccuracyDrop, 1.0, 0.9};
  auto b = Calibrate(r.scores, r.correct, r.full, ExitCriterion::kMaxSoftmax, bounded);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_LT(b->exit_fraction, 0.022);
  EXPECT_GE(b->exit_fraction, 0.016);  // at least six of the twelve wrong answers fit
  // Nothing exiting has no variance: the bound is the reference gap alone.
  const CalibrationTarget strict{CalibrationTarget::Kind::kMaxAccuracyDrop, 0.0, 0.9};
  auto none = Calibrate(r.scores, r.correct, r.full, ExitCriterion::kMaxSoftmax, strict);
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  EXPECT_LE(none->exit_fraction, 0.010);  // the ten sure rows before the first wrong one
}

TEST(CalibrateTest, ABadConfidenceIsRejected) {
  const Ranked r = MakeRanked({});
  for (double c : {0.5, 1.0, -0.1, 2.0}) {
    const CalibrationTarget t{CalibrationTarget::Kind::kMaxAccuracyDrop, 1.0, c};
    auto b = Calibrate(r.scores, r.correct, r.full, ExitCriterion::kMaxSoftmax, t);
    ASSERT_FALSE(b.ok()) << c;
    EXPECT_EQ(b.status().code(), StatusCode::kInvalidArgument);
  }
  const CalibrationTarget offload{CalibrationTarget::Kind::kMaxOffloadFraction, 0.3, 0.9};
  EXPECT_FALSE(Calibrate(r.scores, r.correct, r.full, ExitCriterion::kMaxSoftmax, offload).ok());
}

// Synthetic held-out data: exit correctness grows with the score; the full model is right
// on 95% of rows.
struct Synthetic {
  std::vector<torch::Tensor> scores, correct;
  torch::Tensor full;
};

Synthetic MakeSynthetic(int exits, int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  Synthetic s;
  for (int e = 0; e < exits; ++e) {
    const torch::Tensor score = torch::rand({n});
    s.scores.push_back(score);
    s.correct.push_back(torch::rand({n}) < score * 0.6 + 0.4 + 0.1 * e);
  }
  s.full = torch::rand({n}) < 0.95;
  return s;
}

// Accuracy and local fraction of a shared threshold, evaluated directly.
std::pair<double, double> Evaluate(const Synthetic& s, double t) {
  const ExitPolicy policy(ExitCriterion::kMaxSoftmax, std::vector<double>(s.scores.size(), t));
  const std::vector<int> d = policy.DecideFromScores(s.scores);
  double correct = 0, local = 0;
  for (size_t r = 0; r < d.size(); ++r) {
    if (d[r] < 0) {
      correct += s.full[r].item<bool>();
    } else {
      local += 1;
      correct += s.correct[d[r]][r].item<bool>();
    }
  }
  return {correct / d.size(), local / d.size()};
}

class CalibrateTest : public ::testing::TestWithParam<int> {};

TEST_P(CalibrateTest, DropTargetIsMetWithTheMostLocalAnswers) {
  const Synthetic s = MakeSynthetic(GetParam(), 600, 7);
  const CalibrationTarget target{CalibrationTarget::Kind::kMaxAccuracyDrop, 2.0};
  auto r = Calibrate(s.scores, s.correct, s.full, ExitCriterion::kMaxSoftmax, target);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->thresholds.size(), s.scores.size());
  EXPECT_GE(r->accuracy + 1e-12, r->full_accuracy - 0.02);
  auto [acc, local] = Evaluate(s, r->thresholds[0]);
  EXPECT_DOUBLE_EQ(acc, r->accuracy);  // the reported figures are those of the policy
  EXPECT_DOUBLE_EQ(local, r->exit_fraction);
  EXPECT_GT(local, 0.0);
  // Brute force over every candidate threshold: none answers more rows locally and still
  // meets the target.
  for (const auto& scores : s.scores) {
    for (int64_t i = 0; i < scores.size(0); ++i) {
      auto [a, l] = Evaluate(s, scores[i].item<float>());
      if (a + 1e-12 >= r->full_accuracy - 0.02) {
        EXPECT_LE(l, local);
      }
    }
  }
}

TEST_P(CalibrateTest, OffloadTargetIsMetWithTheBestAccuracy) {
  const Synthetic s = MakeSynthetic(GetParam(), 600, 11);
  const CalibrationTarget target{CalibrationTarget::Kind::kMaxOffloadFraction, 0.3};
  auto r = Calibrate(s.scores, s.correct, s.full, ExitCriterion::kMaxSoftmax, target);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_LE(1.0 - r->exit_fraction, 0.3 + 1e-12);
  for (const auto& scores : s.scores) {
    for (int64_t i = 0; i < scores.size(0); ++i) {
      auto [a, l] = Evaluate(s, scores[i].item<float>());
      if (1.0 - l <= 0.3 + 1e-12) {
        EXPECT_LE(a, r->accuracy + 1e-12);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Exits, CalibrateTest, ::testing::Values(1, 2));

TEST(CalibrateTest, DropIsMeasuredAgainstAGivenReference) {
  const Synthetic s = MakeSynthetic(1, 400, 3);
  const CalibrationTarget target{CalibrationTarget::Kind::kMaxAccuracyDrop, 1.0};
  auto own = Calibrate(s.scores, s.correct, s.full, ExitCriterion::kMaxSoftmax, target);
  ASSERT_TRUE(own.ok()) << own.status().ToString();
  // A reference 0.5 points above the offloaded accuracy is stricter but still feasible.
  const double reference = own->full_accuracy + 0.005;
  auto stricter =
      Calibrate(s.scores, s.correct, s.full, ExitCriterion::kMaxSoftmax, target, reference);
  ASSERT_TRUE(stricter.ok()) << stricter.status().ToString();
  EXPECT_DOUBLE_EQ(stricter->reference_accuracy, reference);
  EXPECT_LE(stricter->exit_fraction, own->exit_fraction);
  EXPECT_GE(stricter->accuracy + 1e-12, reference - 0.01);
  // A reference nothing reaches (not even offloading everything) is infeasible.
  auto infeasible = Calibrate(s.scores, s.correct, s.full, ExitCriterion::kMaxSoftmax, target, 1.0);
  ASSERT_FALSE(infeasible.ok());
  EXPECT_EQ(infeasible.status().code(), StatusCode::kFailedPrecondition);
}

TEST(CalibrateTest, NoExitsMeansEverythingOffloads) {
  const torch::Tensor full = torch::ones({10}, torch::kBool);
  const CalibrationTarget drop{CalibrationTarget::Kind::kMaxAccuracyDrop, 0.3};
  auto r = Calibrate({}, {}, full, ExitCriterion::kMaxSoftmax, drop);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->exit_fraction, 0.0);
  EXPECT_TRUE(r->thresholds.empty());
  // "Offload at most half" cannot be met without exits.
  const CalibrationTarget offload{CalibrationTarget::Kind::kMaxOffloadFraction, 0.5};
  auto infeasible = Calibrate({}, {}, full, ExitCriterion::kMaxSoftmax, offload);
  ASSERT_FALSE(infeasible.ok());
  EXPECT_EQ(infeasible.status().code(), StatusCode::kFailedPrecondition);
}

TEST(CalibrateTest, MalformedInputsAreRejected) {
  const torch::Tensor s = torch::rand({8});
  const torch::Tensor c = torch::ones({8}, torch::kBool);
  const CalibrationTarget drop{CalibrationTarget::Kind::kMaxAccuracyDrop, 0.3};
  const auto code =
      [&](const std::vector<torch::Tensor>& scores, const std::vector<torch::Tensor>& correct,
          const torch::Tensor& full,
          CalibrationTarget target = {CalibrationTarget::Kind::kMaxAccuracyDrop, 0.3}) {
        return Calibrate(scores, correct, full, ExitCriterion::kMaxSoftmax, target).status().code();
      };
  EXPECT_EQ(code({s}, {c}, torch::Tensor()), StatusCode::kInvalidArgument);   // no rows
  EXPECT_EQ(code({s}, {c}, torch::ones({0})), StatusCode::kInvalidArgument);  // empty
  EXPECT_EQ(code({s}, {}, c), StatusCode::kInvalidArgument);                  // count
  EXPECT_EQ(code({s}, {c}, torch::ones({9})), StatusCode::kInvalidArgument);  // rows
  EXPECT_EQ(code({s.view({2, 4})}, {c}, c), StatusCode::kInvalidArgument);    // rank
  EXPECT_EQ(code({s}, {torch::ones({7})}, c), StatusCode::kInvalidArgument);  // rows
  torch::Tensor nan_scores = s.clone();
  nan_scores[3] = NAN;
  EXPECT_EQ(code({nan_scores}, {c}, c), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({s}, {c}, c, {CalibrationTarget::Kind::kMaxAccuracyDrop, -1}),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code({s}, {c}, c, {CalibrationTarget::Kind::kMaxOffloadFraction, 2}),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Calibrate({s}, {c}, c, ExitCriterion::kMaxSoftmax, drop, 1.5).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(CalibrateTest, ResultJsonCarriesThePolicy) {
  const Synthetic s = MakeSynthetic(1, 100, 5);
  auto r = Calibrate(s.scores, s.correct, s.full, ExitCriterion::kMargin,
                     {CalibrationTarget::Kind::kMaxOffloadFraction, 0.5});
  ASSERT_TRUE(r.ok());
  const nlohmann::json j = r->ToJson();
  EXPECT_EQ(j.at("criterion"), "margin");
  EXPECT_EQ(j.at("target"), "offload:0.5");
  auto policy = ExitPolicy::FromJson(j);  // same keys as ExitPolicy::ToJson
  ASSERT_TRUE(policy.ok());
  EXPECT_EQ(policy->thresholds(), r->thresholds);
}

}  // namespace
}  // namespace cleave::split
