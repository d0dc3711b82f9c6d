// The offload menu read from a bundle: the calibrated option first, every split point's sweep
// crossed with its latency profile and wire bytes, the local-only option from the threshold-0
// entry, and a bundle without a profile or sweeps gives its calibrated option alone.
#include "edge/offload_menu.h"

#include <gtest/gtest.h>

#include "common/inference_wire.h"
#include "common/transport.h"
#include "split/latency_profile.h"
#include "split/vision_bundle.h"
#include "testing/tiny_bundle.h"

namespace cleave::edge {
namespace {

using nlohmann::json;

class OffloadMenuTest : public ::testing::Test {
 protected:
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // The tiny bundle, optionally with a further split point after block 3, sweeps and a
  // hand-made profile.
  std::unique_ptr<split::EdgeModel> Load(bool described) {
    const std::filesystem::path tiny = dir_.string() + "_tiny";
    EXPECT_TRUE(testing::WriteTinyBundle(tiny, 0.6).ok());
    auto bundle = Bundle::Open(tiny);
    EXPECT_TRUE(bundle.ok());
    split::VisionBundleParts parts;
    parts.head_int8 = true;
    auto model = split::ReadVisionBundle(*bundle, parts);
    EXPECT_TRUE(model.ok());
    std::filesystem::remove_all(tiny);
    if (described) {
      auto point = split::SplitPoint::Plain(model->spec, 3, wire::DType::kUInt8);
      EXPECT_TRUE(point.ok());
      point->calibration = {{"sweep",
                             {{{"threshold", 0.0}, {"exit_fraction", 1.0}, {"accuracy", 0.7}},
                              {{"threshold", 0.8}, {"exit_fraction", 0.5}, {"accuracy", 0.9}}}}};
      model->splits.push_back(*point);
      model->calibration = {{"exit_fraction", 0.6},
                            {"accuracy", 0.88},
                            {"sweep",
                             {{{"threshold", 0.0}, {"exit_fraction", 1.0}, {"accuracy", 0.7}},
                              {{"threshold", 0.9}, {"exit_fraction", 0.4}, {"accuracy", 0.92}},
                              {{"threshold", 2.0}, {"exit_fraction", 0.0}, {"accuracy", 0.93}}}}};
      model->evaluation = {{"wire_entropy", {{"heldout_bytes_per_image", 30.0}}}};
      split::LatencyProfile p;
      p.block_fp32_ms = {1, 2, 4, 8, 16, 32};
      p.block_plan_ms = {100, 200, 400, 800, 1600, 3200};
      p.block_plan32_ms = {10, 20, 40, 80, 160, 320};
      p.exit_ms = {0.5};
      p.int8_head_ms = 0.25;
      p.encoder_ms = {0};
      p.decoder_ms = {0};
      model->profile = p.ToJson();
    }
    EXPECT_TRUE(split::WriteVisionBundle(dir_, *model).ok());
    auto reopened = Bundle::Open(dir_);
    EXPECT_TRUE(reopened.ok());
    auto edge = split::EdgeModel::Load(*reopened, split::EdgeModel::Options());
    EXPECT_TRUE(edge.ok()) << edge.status().ToString();
    return std::move(edge).value();
  }

  std::filesystem::path dir_ = testing::TempPath("offload_menu");
};

TEST_F(OffloadMenuTest, CrossesEverySplitPointsSweepWithItsProfileAndBytes) {
  std::unique_ptr<split::EdgeModel> model = Load(/*described=*/true);
  const OffloadMenu menu = BuildOffloadMenu(*model, /*int8=*/true);
  // calibrated, then split 0: local (t=0), 0.9, never; split 1: 0.8 (its t=0 entry offloads
  // nothing and is not the deployment split's, so it is left out).
  ASSERT_EQ(menu.options.size(), 5u) << DescribeMenu(menu);
  EXPECT_EQ(menu.calibrated, 0);
  const OffloadOption& calibrated = menu.options[0];
  EXPECT_EQ(calibrated.split, 0);
  EXPECT_DOUBLE_EQ(calibrated.exit_threshold, 0.6);
  EXPECT_DOUBLE_EQ(calibrated.accuracy, 0.88);
  EXPECT_DOUBLE_EQ(calibrated.exit_fraction, 0.6);
  EXPECT_DOUBLE_EQ(calibrated.edge_ms, 0.25);  // the int8 head
  EXPECT_DOUBLE_EQ(calibrated.cloud_ms, 800 + 1600 + 3200);
  // The bundle has no entropy model, so its recorded coded size does not apply: packed u4.
  EXPECT_DOUBLE_EQ(calibrated.request_bytes, CompactRequestWireBytes(49));
  const OffloadOption& local = menu.options[1];
  EXPECT_EQ(local.split, -1);
  EXPECT_DOUBLE_EQ(local.exit_fraction, 1.0);
  EXPECT_DOUBLE_EQ(local.accuracy, 0.7);
  EXPECT_DOUBLE_EQ(local.request_bytes, 0.0);
  EXPECT_DOUBLE_EQ(menu.options[3].exit_threshold, 2.0);
  EXPECT_DOUBLE_EQ(menu.options[3].accuracy, 0.93);
  const OffloadOption& deep = menu.options[4];
  EXPECT_EQ(deep.split, 1);
  EXPECT_DOUBLE_EQ(deep.exit_threshold, 0.8);
  EXPECT_DOUBLE_EQ(deep.edge_ms, 1 + 2 + 4 + 8 + 0.5);  // fp32 blocks to the cut + the exit
  EXPECT_DOUBLE_EQ(deep.cloud_ms, 1600 + 3200);
  // u8 [8,7,7] packed, no entropy model: 392 coded bytes.
  EXPECT_DOUBLE_EQ(deep.request_bytes, CompactRequestWireBytes(392));
  EXPECT_NE(DescribeMenu(menu).find("* split 0"), std::string::npos) << DescribeMenu(menu);
}

TEST_F(OffloadMenuTest, OptionsAreNamedAndFoundBySpec) {
  std::unique_ptr<split::EdgeModel> model = Load(/*described=*/true);
  const OffloadMenu menu = BuildOffloadMenu(*model, /*int8=*/true);
  ASSERT_EQ(menu.options.size(), 5u) << DescribeMenu(menu);
  EXPECT_EQ(OffloadOptionSpec(menu.options[0]), "0:0.6");
  EXPECT_EQ(OffloadOptionSpec(menu.options[1]), "local");
  EXPECT_EQ(OffloadOptionSpec(menu.options[3]), "0:off");
  EXPECT_EQ(OffloadOptionSpec(menu.options[4]), "1:0.8");
  for (size_t i = 0; i < menu.options.size(); ++i) {
    auto found = FindOffloadOption(menu, OffloadOptionSpec(menu.options[i]));
    ASSERT_TRUE(found.ok()) << found.status().ToString();
    EXPECT_EQ(*found, static_cast<int>(i));
  }
  auto spelled = FindOffloadOption(menu, "1:0.80");
  ASSERT_TRUE(spelled.ok());
  EXPECT_EQ(*spelled, 4);
  for (const char* bad : {"1:0.9", "2:off", "-1:0.5", "0:1.5", "0:", ":0.6", "0.6", "", "0:x"}) {
    auto missing = FindOffloadOption(menu, bad);
    ASSERT_FALSE(missing.ok()) << bad;
    EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << bad;
    EXPECT_NE(missing.status().message().find("0:0.6, local, 0:0.9, 0:off, 1:0.8"),
              std::string::npos)
        << missing.status().ToString();
  }
}

TEST_F(OffloadMenuTest, ABundleWithoutAProfileGivesItsCalibratedOptionAlone) {
  std::unique_ptr<split::EdgeModel> model = Load(/*described=*/false);
  const OffloadMenu menu = BuildOffloadMenu(*model, true);
  ASSERT_EQ(menu.options.size(), 1u);
  EXPECT_EQ(menu.options[0].split, 0);
  EXPECT_DOUBLE_EQ(menu.options[0].exit_threshold, 0.6);
  // No entropy model: the packed u4 features, 49 bytes.
  EXPECT_DOUBLE_EQ(menu.options[0].request_bytes, CompactRequestWireBytes(49));
}

TEST(OffloadMenuBytesTest, CompactRequestBytesAreTheEncodedMessageOnTheWire) {
  wire::InferRequest r;
  r.protocol_version = wire::kCompactProtocolVersion;
  r.request_id = 4097;
  r.deadline_ms = 250;
  r.layout_tag = 0xA5A5;
  r.input = wire::InputKind::kCodedFeatures;
  r.coded.assign(40, '\x5a');
  EXPECT_DOUBLE_EQ(CompactRequestWireBytes(40),
                   static_cast<double>(WireBytes(wire::EncodeInferRequest(r).size())));
  EXPECT_LT(CompactRequestWireBytes(40), 40 + 25);
}

}  // namespace
}  // namespace cleave::edge
