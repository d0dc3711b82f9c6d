#include "split/vision_model.h"

#include <functional>

#include <gtest/gtest.h>

#include "split/distill.h"
#include "split/int8_head.h"
#include "split/vision_bundle.h"

namespace cleave::split {
namespace {

void ExpectSameSpec(const VisionModelSpec& a, const VisionModelSpec& b) {
  EXPECT_EQ(a.ToJson(), b.ToJson());
}

TEST(VisionModelSpecTest, JsonRoundTripOfEveryPreset) {
  for (const VisionModelSpec& spec :
       {VisionModelSpec::DefaultSplit(2), VisionModelSpec::DefaultSplit(4),
        VisionModelSpec::DefaultTeacher(), VisionModelSpec::TinySplit(),
        VisionModelSpec::SimpleCnn(), VisionModelSpec::ResidualSplit()}) {
    ASSERT_TRUE(spec.Validate().ok());
    auto back = VisionModelSpec::FromJson(spec.ToJson());
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    ExpectSameSpec(*back, spec);
    // Through text too (what the bundle manifest does).
    auto reparsed = VisionModelSpec::FromJson(nlohmann::json::parse(spec.ToJson().dump()));
    ASSERT_TRUE(reparsed.ok());
    ExpectSameSpec(*reparsed, spec);
  }
}

// The federated-learning CNN (McMahan et al.; Li et al. NIID-Bench): shapes and the exact
// parameter count of conv(1->6, 5x5) + conv(6->16, 5x5) + fc 256-120-84-10 with biases.
TEST(VisionModelSpecTest, SimpleCnnIsTheLiteratureNetwork) {
  const VisionModelSpec spec = VisionModelSpec::SimpleCnn();
  ASSERT_TRUE(spec.Validate().ok());
  EXPECT_EQ(spec.OutputSize(0), 24);
  EXPECT_EQ(spec.OutputSize(1), 12);
  EXPECT_EQ(spec.OutputSize(2), 8);
  EXPECT_EQ(spec.OutputSize(3), 4);
  EXPECT_EQ(spec.OutputSize(4), 1);
  SplitVisionNet net(spec);
  const int64_t expected = (6 * 25 + 6) + (16 * 6 * 25 + 16) + (256 * 120 + 120) + (120 * 84 + 84) +
                           (84 * 10 + 10);  // 44,426
  EXPECT_EQ(net->ParameterCount(0, net->num_blocks(), true), expected);
  int64_t total = 0;
  for (const auto& p : net->parameters()) total += p.numel();
  EXPECT_EQ(total, expected);
  EXPECT_EQ(net->MacCount(0, net->num_blocks(), true),
            24 * 24 * 25 * 6 + 8 * 8 * 25 * 6 * 16 + 256 * 120 + 120 * 84 + 84 * 10);
  torch::NoGradGuard no_grad;
  const torch::Tensor logits = net->forward(torch::rand({3, 1, 28, 28}));
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{3, 10}));
  // No BatchNorm anywhere (federated averaging of BN statistics is avoided by design).
  for (const auto& named : net->named_modules()) {
    EXPECT_EQ(named.value()->as<torch::nn::BatchNorm2d>(), nullptr) << named.key();
  }
  // The int8 path covers only the split models' blocks and says so.
  auto int8 = Int8Head::Quantize(*net, 2, torch::rand({4, 1, 28, 28}));
  ASSERT_FALSE(int8.ok());
  EXPECT_EQ(int8.status().code(), StatusCode::kUnimplemented);
}

TEST(VisionModelSpecTest, DefaultTeacherIsTheTeacherOfDefaultSplit) {
  auto teacher = TeacherFor(VisionModelSpec::DefaultSplit(2));
  ASSERT_TRUE(teacher.ok()) << teacher.status().ToString();
  ExpectSameSpec(*teacher, VisionModelSpec::DefaultTeacher());
  EXPECT_FALSE(TeacherFor(VisionModelSpec::DefaultTeacher()).ok());  // no bottleneck
}

TEST(VisionModelSpecTest, FeatureShapeAtTheDeploymentSplit) {
  auto shape = FeatureShape(VisionModelSpec::DefaultSplit(2));
  ASSERT_TRUE(shape.ok());
  EXPECT_EQ(*shape, (std::vector<uint32_t>{2, 7, 7}));
  EXPECT_FALSE(FeatureShape(VisionModelSpec::DefaultTeacher()).ok());  // no split
}

TEST(VisionModelSpecTest, NetworkMatchesSpecShapes) {
  torch::NoGradGuard no_grad;
  SplitVisionNet net(VisionModelSpec::TinySplit());
  net->eval();
  const auto out = net->ForwardWithExits(torch::rand({3, 1, 28, 28}), 3);
  ASSERT_EQ(out.exit_logits.size(), 1u);
  EXPECT_EQ(out.exit_logits[0].sizes(), (std::vector<int64_t>{3, 10}));
  EXPECT_EQ(out.features.sizes(), (std::vector<int64_t>{3, 2, 7, 7}));
  EXPECT_EQ(net->forward(torch::rand({3, 1, 28, 28})).sizes(), (std::vector<int64_t>{3, 10}));
}

// Each mutation breaks exactly one rule of Validate().
struct Breakage {
  const char* name;
  std::function<void(VisionModelSpec&)> apply;
};

class ValidateRejectsTest : public ::testing::TestWithParam<Breakage> {};

TEST_P(ValidateRejectsTest, RejectsAndFromJsonToo) {
  VisionModelSpec spec = VisionModelSpec::TinySplit();
  GetParam().apply(spec);
  const Status status = spec.Validate();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  auto parsed = VisionModelSpec::FromJson(spec.ToJson());
  EXPECT_FALSE(parsed.ok());
}

const Breakage kBreakages[] = {
    {"zero_input_channels", [](VisionModelSpec& s) { s.input_channels = 0; }},
    {"zero_image_size", [](VisionModelSpec& s) { s.image_size = 0; }},
    {"one_class", [](VisionModelSpec& s) { s.num_classes = 1; }},
    {"zero_std", [](VisionModelSpec& s) { s.input_std = {0.0f}; }},
    {"nan_std", [](VisionModelSpec& s) { s.input_std = {NAN}; }},
    {"nan_mean", [](VisionModelSpec& s) { s.input_mean = {NAN}; }},
    {"empty_mean", [](VisionModelSpec& s) { s.input_mean.clear(); }},
    {"std_per_channel_count",
     [](VisionModelSpec& s) {
       s.input_std = {0.5f, 0.5f};
     }},
    {"too_many_channels", [](VisionModelSpec& s) { s.input_channels = 65; }},
    {"no_blocks", [](VisionModelSpec& s) { s.blocks.clear(); }},
    {"channel_chain", [](VisionModelSpec& s) { s.blocks[1].in_channels = 5; }},
    {"zero_out_channels",
     [](VisionModelSpec& s) {
       s.blocks[0].out_channels = 0;
       s.blocks[1].in_channels = 0;
     }},
    {"huge_out_channels",
     [](VisionModelSpec& s) {
       s.blocks[0].out_channels = 5000;
       s.blocks[1].in_channels = 5000;
     }},
    {"zero_stride", [](VisionModelSpec& s) { s.blocks[0].stride = 0; }},
    {"big_stride", [](VisionModelSpec& s) { s.blocks[0].stride = 5; }},
    {"even_kernel", [](VisionModelSpec& s) { s.blocks[0].kernel = 2; }},
    {"huge_kernel", [](VisionModelSpec& s) { s.blocks[0].kernel = 9; }},
    {"zero_expansion", [](VisionModelSpec& s) { s.blocks[1].expansion = 0; }},
    {"huge_expansion", [](VisionModelSpec& s) { s.blocks[1].expansion = 9; }},
    {"classifier_not_last",
     [](VisionModelSpec& s) {
       s.blocks[3].type = "classifier";
       s.blocks[3].out_channels = 10;
     }},
    {"classifier_outputs", [](VisionModelSpec& s) { s.blocks.back().out_channels = 7; }},
    {"unknown_type", [](VisionModelSpec& s) { s.blocks[1].type = "transformer"; }},
    {"last_not_classifier",
     [](VisionModelSpec& s) {
       s.blocks.pop_back();
       s.exits.clear();
       s.split_after = -1;
     }},
    {"exit_negative", [](VisionModelSpec& s) { s.exits[0].after_block = -1; }},
    {"exit_at_classifier", [](VisionModelSpec& s) { s.exits[0].after_block = 5; }},
    {"exit_hidden_zero", [](VisionModelSpec& s) { s.exits[0].hidden_channels = 0; }},
    {"split_below_minus_one", [](VisionModelSpec& s) { s.split_after = -2; }},
    {"split_at_classifier", [](VisionModelSpec& s) { s.split_after = 5; }},
    {"padding_too_big", [](VisionModelSpec& s) { s.blocks[0].padding = 2; }},
    {"padding_below_minus_one", [](VisionModelSpec& s) { s.blocks[0].padding = -2; }},
    {"exit_on_maxpool",
     [](VisionModelSpec& s) {
       s.blocks[1].type = "maxpool";
       s.blocks[1].kernel = 1;
     }},
    {"maxpool_changes_channels",
     [](VisionModelSpec& s) {
       s.exits.clear();
       s.blocks[1].type = "maxpool";
       s.blocks[1].kernel = 2;
       s.blocks[1].out_channels = 5;
       s.blocks[2].in_channels = 5;
     }},
    {"maxpool_kernel",
     [](VisionModelSpec& s) {
       s.exits.clear();
       s.blocks[1].type = "maxpool";
       s.blocks[1].kernel = 9;
     }},
    {"linear_feature_count",
     [](VisionModelSpec& s) {
       s.blocks.back().type = "linear";
       s.blocks.back().relu = false;
       s.blocks.back().in_channels = 8;  // the input is 8 x 7 x 7 = 392 features
     }},
    {"linear_head_with_relu",
     [](VisionModelSpec& s) {
       s.blocks.back().type = "linear";
       s.blocks.back().relu = true;
       s.blocks.back().in_channels = 392;
     }},
    {"conv_after_linear",
     [](VisionModelSpec& s) {
       s.blocks[4].type = "linear";
       s.blocks[4].in_channels = 392;  // then the classifier follows a flat tensor
     }},
};

INSTANTIATE_TEST_SUITE_P(EveryRule, ValidateRejectsTest, ::testing::ValuesIn(kBreakages),
                         [](const ::testing::TestParamInfo<Breakage>& info) {
                           return std::string(info.param.name);
                         });

TEST(VisionModelSpecTest, MalformedJsonIsRejected) {
  using nlohmann::json;
  const json good = VisionModelSpec::TinySplit().ToJson();
  std::vector<json> cases;
  for (const char* key : {"input_channels", "image_size", "num_classes", "input_mean", "input_std",
                          "split_after", "blocks", "exits"}) {
    json j = good;
    j.erase(key);
    cases.push_back(j);
  }
  json wrong_type = good;
  wrong_type["num_classes"] = "ten";
  cases.push_back(wrong_type);
  json block_missing = good;
  block_missing["blocks"][0].erase("out_channels");
  cases.push_back(block_missing);
  json blocks_not_array = good;
  blocks_not_array["blocks"] = 3;
  cases.push_back(blocks_not_array);
  cases.push_back(json::array());
  for (const json& j : cases) {
    auto r = VisionModelSpec::FromJson(j);
    EXPECT_FALSE(r.ok()) << j.dump();
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    }
  }
}

}  // namespace
}  // namespace cleave::split
