// The demo's accuracy-vs-bytes plot: the calibrated threshold's point comes from the same
// images as the threshold sweep (calibrated_on_sweep_images), never from the whole test set
// (main), and a report without those figures is refused rather than plotted wrongly.
#include "tools/demo_command.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace cleave::tools {
namespace {

using nlohmann::json;

json Point(double bytes, double accuracy) {
  return {{"bytes_per_request_mean", bytes}, {"accuracy", accuracy}};
}

json Report() {
  return {{"test_images", 10000},
          {"sweep_images", 2000},
          {"main", Point(51.0, 0.905)},  // all 10,000 images: not comparable with the sweep
          {"sweep", json::array({Point(0.0, 0.70), Point(40.0, 0.88), Point(120.0, 0.91)})},
          {"calibrated_on_sweep_images", Point(42.5, 0.887)}};
}

TEST(DemoCommandTest, PlotDrawsTheCalibratedPointOnTheSweepsImages) {
  Result<PlotSpec> plot = AccuracyVsBytesPlot(Report());
  ASSERT_TRUE(plot.ok()) << plot.status().ToString();
  ASSERT_EQ(plot->series.size(), 2u);
  const PlotSeries& sweep = plot->series[0];
  EXPECT_EQ(sweep.x, (std::vector<double>{0.0, 40.0, 120.0}));
  EXPECT_EQ(sweep.y, (std::vector<double>{0.70, 0.88, 0.91}));
  EXPECT_FALSE(sweep.points_only);
  const PlotSeries& calibrated = plot->series[1];
  EXPECT_TRUE(calibrated.points_only);
  EXPECT_EQ(calibrated.x, std::vector<double>{42.5});
  EXPECT_EQ(calibrated.y, std::vector<double>{0.887});
  EXPECT_NE(plot->title.find("2000 test images"), std::string::npos) << plot->title;
}

TEST(DemoCommandTest, PlotRefusesAReportWithoutComparableFigures) {
  json no_point = Report();
  no_point.erase("calibrated_on_sweep_images");
  EXPECT_EQ(AccuracyVsBytesPlot(no_point).status().code(), StatusCode::kInvalidArgument);
  json empty_sweep = Report();
  empty_sweep["sweep"] = json::array();
  EXPECT_EQ(AccuracyVsBytesPlot(empty_sweep).status().code(), StatusCode::kInvalidArgument);
  json bad_point = Report();
  bad_point["sweep"][1]["accuracy"] = "high";
  EXPECT_EQ(AccuracyVsBytesPlot(bad_point).status().code(), StatusCode::kInvalidArgument);
  json not_object = Report();
  not_object["calibrated_on_sweep_images"] = 3;
  Result<PlotSpec> refused = AccuracyVsBytesPlot(not_object);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("calibrated_on_sweep_images"), std::string::npos);
}

}  // namespace
}  // namespace cleave::tools
