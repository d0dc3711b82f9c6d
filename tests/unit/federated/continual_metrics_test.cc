#include "federated/continual_metrics.h"

#include <gtest/gtest.h>

namespace cleave::federated {
namespace {

// After experience i (row) on experience j (column).
const AccuracyMatrix kR = {{0.9, 0.1, 0.0}, {0.6, 0.8, 0.1}, {0.5, 0.7, 0.85}};

TEST(ContinualMetricsTest, HandMadeMatrix) {
  auto m = ComputeContinualMetrics(kR);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_NEAR(m->acc, (0.5 + 0.7 + 0.85) / 3, 1e-12);
  EXPECT_NEAR(m->bwt, ((0.5 - 0.9) + (0.7 - 0.8)) / 2, 1e-12);
  // Forgetting: best earlier accuracy minus final, over experiences 0 and 1.
  EXPECT_NEAR(m->forgetting, ((0.9 - 0.5) + (0.8 - 0.7)) / 2, 1e-12);
  // min-ACC from R alone: the lowest accuracy after learning, min(0.6, 0.5) and 0.7.
  EXPECT_NEAR(m->min_acc, (0.5 + 0.7) / 2, 1e-12);
  const nlohmann::json j = m->ToJson();
  EXPECT_NEAR(j["bwt"].get<double>(), -0.25, 1e-12);
}

TEST(ContinualMetricsTest, StabilityGapLowersMinAccBelowTheMatrix) {
  auto m = ComputeContinualMetrics(kR, {0.3, std::nullopt, std::nullopt});
  ASSERT_TRUE(m.ok());
  EXPECT_NEAR(m->min_acc, (0.3 + 0.7) / 2, 1e-12);
  // A continual evaluation above the matrix's own minimum changes nothing.
  m = ComputeContinualMetrics(kR, {0.55, 0.75, std::nullopt});
  ASSERT_TRUE(m.ok());
  EXPECT_NEAR(m->min_acc, (0.5 + 0.7) / 2, 1e-12);
}

TEST(ContinualMetricsTest, PartialMatrixCoversTheExperiencesLearnedSoFar) {
  auto m = ComputeContinualMetrics({kR[0], kR[1]});
  ASSERT_TRUE(m.ok());
  EXPECT_NEAR(m->acc, (0.6 + 0.8) / 2, 1e-12);
  EXPECT_NEAR(m->bwt, 0.6 - 0.9, 1e-12);
  EXPECT_NEAR(m->forgetting, 0.3, 1e-12);
  auto one = ComputeContinualMetrics({kR[0]});
  ASSERT_TRUE(one.ok());
  EXPECT_NEAR(one->acc, 0.9, 1e-12);
  EXPECT_EQ(one->bwt, 0);
  EXPECT_EQ(one->forgetting, 0);
  EXPECT_EQ(one->min_acc, 0);
}

TEST(ContinualMetricsTest, RejectsBadMatrices) {
  EXPECT_EQ(ComputeContinualMetrics({}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeContinualMetrics({{0.5, 0.5}, {0.5}}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeContinualMetrics({{0.5, 1.5}}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeContinualMetrics({{0.5, -0.1}}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeContinualMetrics({{0.5}, {0.5}}).status().code(),
            StatusCode::kInvalidArgument);  // more rows than experiences
  EXPECT_EQ(ComputeContinualMetrics({{std::nan("")}}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(ContinualTrackerTest, BuildsTheMatrixAndTracksTheLowestContinualEvaluation) {
  ContinualTracker t(3);
  EXPECT_EQ(t.Metrics().status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(t.Record(0, kR[0], true).ok());
  // Inside experience 1, experience 0 dips to 0.2 before recovering to 0.6.
  ASSERT_TRUE(t.Record(1, {0.2, 0.4, 0.0}, false).ok());
  ASSERT_TRUE(t.Record(1, kR[1], true).ok());
  ASSERT_TRUE(t.Record(2, kR[2], true).ok());
  EXPECT_EQ(t.matrix(), kR);
  ASSERT_TRUE(t.lowest_after_learning()[0].has_value());
  EXPECT_NEAR(*t.lowest_after_learning()[0], 0.2, 1e-12);
  auto m = t.Metrics();
  ASSERT_TRUE(m.ok());
  EXPECT_NEAR(m->min_acc, (0.2 + 0.7) / 2, 1e-12);
  EXPECT_NEAR(m->acc, (0.5 + 0.7 + 0.85) / 3, 1e-12);
}

TEST(ContinualTrackerTest, RejectsOutOfOrderAndWrongSizes) {
  ContinualTracker t(2);
  EXPECT_EQ(t.Record(1, {0.5, 0.5}, true).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(t.Record(0, {0.5}, true).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(t.Record(2, {0.5, 0.5}, true).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(t.Record(-1, {0.5, 0.5}, true).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(t.Record(0, {0.5, 0.5}, true).ok());
  EXPECT_EQ(t.Record(0, {0.5, 0.5}, true).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cleave::federated
