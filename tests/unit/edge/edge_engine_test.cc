#include "edge/edge_engine.h"

#include <gtest/gtest.h>

#include "common/feature_coding.h"
#include "common/inference_wire.h"
#include "common/jpeg_image.h"
#include "common/png_image.h"
#include "split/bundle.h"
#include "testing/tiny_bundle.h"

namespace cleave::edge {
namespace {

class EdgeEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempPath("edge_engine");
    ASSERT_TRUE(testing::WriteTinyBundle(dir_).ok());
    auto bundle = Bundle::Open(dir_);
    ASSERT_TRUE(bundle.ok()) << bundle.status().ToString();
    split::EdgeModel::Options options;
    options.int8_engine = "reference";
    auto model = split::EdgeModel::Load(*bundle, options);
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    engine_ = std::make_unique<EdgeEngine>(std::move(model).value());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::filesystem::path dir_;
  std::unique_ptr<EdgeEngine> engine_;
};

TEST_F(EdgeEngineTest, ThresholdZeroAnswersEverythingLocally) {
  auto decisions = engine_->Decide(testing::RandomImages(5, 1), {1, 2, 3, 4, 5},
                                   std::vector<float>(5, 0.0f), std::vector<uint32_t>(5, 100));
  ASSERT_TRUE(decisions.ok()) << decisions.status().ToString();
  for (const HeadDecision& d : *decisions) {
    EXPECT_EQ(d.exit_index, 0);
    EXPECT_TRUE(d.offload_request.empty());
    ASSERT_EQ(d.best_scores.size(), 10u);
    EXPECT_EQ(d.best_class, ArgMax(d.best_scores));
    EXPECT_GT(d.best_confidence, 0.0f);
  }
}

TEST_F(EdgeEngineTest, UnreachableThresholdOffloadsDecodableFeatures) {
  auto decisions = engine_->Decide(testing::RandomImages(3, 2), {10, 11, 12},
                                   std::vector<float>(3, 2.0f), {50, 60, 70});
  ASSERT_TRUE(decisions.ok()) << decisions.status().ToString();
  for (size_t i = 0; i < 3; ++i) {
    const HeadDecision& d = (*decisions)[i];
    EXPECT_EQ(d.exit_index, -1);
    ASSERT_FALSE(d.offload_request.empty());
    // The degraded fallback is still prepared.
    EXPECT_GE(d.best_exit, 0);
    EXPECT_GE(d.best_class, 0);
    // Version 2 (the default): the split point, the layout tag, the coded bytes only. The
    // tiny bundle has no entropy model: the packed u4 features.
    auto request = wire::DecodeInferRequest(d.offload_request);
    ASSERT_TRUE(request.ok()) << request.status().ToString();
    EXPECT_EQ(request->protocol_version, wire::kCompactProtocolVersion);
    EXPECT_EQ(request->request_id, 10 + i);
    EXPECT_EQ(request->deadline_ms, 50 + 10 * i);
    EXPECT_TRUE(request->model.empty());
    EXPECT_EQ(request->split, 0);
    EXPECT_EQ(request->layout_tag, engine_->model().layout_tag(0));
    EXPECT_EQ(request->input, wire::InputKind::kPackedFeatures);
    EXPECT_EQ(request->coded.size(), 49u);  // 98 four-bit values
  }
  engine_->set_wire_version(wire::kProtocolVersion);
  auto v1 = engine_->Decide(testing::RandomImages(1, 2), {10}, {2.0f}, {50});
  ASSERT_TRUE(v1.ok());
  auto request = wire::DecodeInferRequest((*v1)[0].offload_request);
  ASSERT_TRUE(request.ok()) << request.status().ToString();
  EXPECT_EQ(request->protocol_version, wire::kProtocolVersion);
  EXPECT_EQ(request->model, "fmnist");
  EXPECT_EQ(request->input, wire::InputKind::kFeatures);
  EXPECT_EQ(request->features.dtype, wire::DType::kUInt4);
  EXPECT_EQ(request->features.shape, (std::vector<uint32_t>{1, 2, 7, 7}));
  EXPECT_EQ(request->features.data.size(), 49u);
  // Version 1 names no split point, and no bundle has split point 5.
  EXPECT_EQ(engine_->Decide(testing::RandomImages(1, 2), {1}, {2.0f}, {50}, 5).status().code(),
            StatusCode::kInvalidArgument);
  engine_->set_wire_version(wire::kCompactProtocolVersion);
  EXPECT_EQ(engine_->Decide(testing::RandomImages(1, 2), {1}, {2.0f}, {50}, -1).status().code(),
            StatusCode::kInvalidArgument);
}

TEST_F(EdgeEngineTest, OffloadedFeaturesMatchTheHeadWithinQuantization) {
  torch::Tensor images = testing::RandomImages(1, 3);
  auto decisions = engine_->Decide(images, {1}, {2.0f}, {100});
  ASSERT_TRUE(decisions.ok());
  auto request = wire::DecodeInferRequest((*decisions)[0].offload_request);
  ASSERT_TRUE(request.ok());
  auto values = wire::DecodeRequestFeatures(*request, engine_->model().layout(0));
  ASSERT_TRUE(values.ok()) << values.status().ToString();
  auto head = engine_->model().Run(images);
  ASSERT_TRUE(head.ok());
  torch::Tensor expected = head->features.contiguous().view(-1);
  ASSERT_EQ(static_cast<int64_t>(values->size()), expected.numel());
  const auto& scale = engine_->model().wire_quant().scale;
  for (size_t i = 0; i < values->size(); ++i) {
    const size_t channel = i / 49;
    // Inside the calibrated range the error is at most half a step; outside it clamps.
    const float lo =
        -static_cast<float>(engine_->model().wire_quant().zero_point[channel]) * scale[channel];
    const float hi = lo + 15 * scale[channel];
    const float clamped = std::min(std::max(expected[i].item<float>(), lo), hi);
    EXPECT_NEAR((*values)[i], clamped, scale[channel] / 2 + 1e-5) << i;
  }
}

TEST_F(EdgeEngineTest, CalibratedThresholdIsUsedForNegativeOverrides) {
  auto calibrated = engine_->Decide(testing::RandomImages(8, 4), {1, 2, 3, 4, 5, 6, 7, 8},
                                    std::vector<float>(8, -1.0f), std::vector<uint32_t>(8, 100));
  ASSERT_TRUE(calibrated.ok());
  auto explicit_half = engine_->Decide(testing::RandomImages(8, 4), {1, 2, 3, 4, 5, 6, 7, 8},
                                       std::vector<float>(8, 0.5f), std::vector<uint32_t>(8, 100));
  ASSERT_TRUE(explicit_half.ok());
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ((*calibrated)[i].exit_index, (*explicit_half)[i].exit_index) << i;
  }
}

TEST_F(EdgeEngineTest, RejectsMismatchedArguments) {
  auto decisions = engine_->Decide(testing::RandomImages(2, 5), {1}, {0.5f, 0.5f}, {10, 10});
  ASSERT_FALSE(decisions.ok());
  EXPECT_EQ(decisions.status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(engine_->Decide(torch::rand({28, 28}), {1}, {0.5f}, {10}).ok());
}

TEST_F(EdgeEngineTest, ImageFromRequestConvertsEveryKindToTheBundleInput) {
  edge_api::ClassifyRequest gray;
  gray.kind = edge_api::ImageKind::kGray8;
  gray.width = gray.height = 28;
  gray.pixels.assign(28 * 28, '\xff');
  auto tensor = engine_->ImageFromRequest(gray);
  ASSERT_TRUE(tensor.ok());
  EXPECT_EQ(tensor->sizes(), (std::vector<int64_t>{1, 1, 28, 28}));
  EXPECT_FLOAT_EQ(tensor->max().item<float>(), 1.0f);

  // Another size is resized to what the bundle declares (as training did).
  edge_api::ClassifyRequest small = gray;
  small.width = small.height = 14;
  small.pixels.assign(14 * 14, '\x80');
  auto resized = engine_->ImageFromRequest(small);
  ASSERT_TRUE(resized.ok()) << resized.status().ToString();
  EXPECT_EQ(resized->sizes(), (std::vector<int64_t>{1, 1, 28, 28}));
  EXPECT_NEAR(resized->mean().item<float>(), 128.0f / 255.0f, 1e-6);

  // RGB is converted to gray with BT.601 luma: pure red 255 -> 76.
  edge_api::ClassifyRequest rgb;
  rgb.kind = edge_api::ImageKind::kRgb8;
  rgb.width = rgb.height = 28;
  for (int i = 0; i < 28 * 28; ++i) rgb.pixels += std::string("\xff\x00\x00", 3);
  auto from_rgb = engine_->ImageFromRequest(rgb);
  ASSERT_TRUE(from_rgb.ok()) << from_rgb.status().ToString();
  EXPECT_EQ(from_rgb->sizes(), (std::vector<int64_t>{1, 1, 28, 28}));
  EXPECT_NEAR(from_rgb->max().item<float>(), 76.0f / 255.0f, 1e-6);

  PixelImage black;
  black.width = black.height = 28;
  black.channels = 3;
  black.pixels.assign(28 * 28 * 3, 0);
  edge_api::ClassifyRequest png;
  png.kind = edge_api::ImageKind::kPng;
  png.png = *EncodePngPixels(black);
  auto from_png = engine_->ImageFromRequest(png);
  ASSERT_TRUE(from_png.ok());
  EXPECT_FLOAT_EQ(from_png->max().item<float>(), 0.0f);

  edge_api::ClassifyRequest jpeg;
  jpeg.kind = edge_api::ImageKind::kJpeg;
  jpeg.jpeg = *EncodeJpegPixels(black, 90);
  auto from_jpeg = engine_->ImageFromRequest(jpeg);
  ASSERT_TRUE(from_jpeg.ok()) << from_jpeg.status().ToString();
  EXPECT_EQ(from_jpeg->sizes(), (std::vector<int64_t>{1, 1, 28, 28}));
  EXPECT_LT(from_jpeg->max().item<float>(), 3.0f / 255.0f);

  // What cannot be decoded or converted is refused with the reason.
  png.png = "not a png";
  EXPECT_FALSE(engine_->ImageFromRequest(png).ok());
  jpeg.jpeg = "\xff\xd8 not a jpeg";
  EXPECT_FALSE(engine_->ImageFromRequest(jpeg).ok());
  edge_api::ClassifyRequest short_pixels = gray;
  short_pixels.pixels.resize(100);
  auto rejected = engine_->ImageFromRequest(short_pixels);
  ASSERT_FALSE(rejected.ok());
  EXPECT_EQ(rejected.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(EdgeEngineTest, ClassNamesComeFromTheBundle) {
  // The test bundle predates "input": Fashion-MNIST's names (28x28 gray, 10 classes).
  EXPECT_EQ(engine_->ClassName(0), "T-shirt/top");
  EXPECT_EQ(engine_->ClassName(9), "Ankle boot");
  EXPECT_EQ(engine_->ClassName(10), "");
  EXPECT_EQ(engine_->ClassName(-1), "");
}

}  // namespace
}  // namespace cleave::edge
