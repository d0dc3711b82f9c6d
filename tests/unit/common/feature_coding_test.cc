// Coding one split point's features for a version 2 request: packed and entropy-coded bytes
// decode to exactly what the tensor codec gives, entropy coding is shorter on skewed features,
// every malformed input and mismatched layout is refused, and the layout tag changes with
// anything the two ends must agree on.
#include "common/feature_coding.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "common/entropy_coder.h"
#include "common/entropy_fit.h"

namespace cleave::wire {
namespace {

using ::testing::HasSubstr;

// [2, 7, 7] features concentrated near zero (like a trained bottleneck's), in [-1, 3].
std::vector<float> Features(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.2f, 0.5f);
  std::vector<float> v(98);
  for (float& x : v) x = std::max(-1.0f, std::min(3.0f, dist(rng)));
  return v;
}

FeatureLayout U4Layout() {
  FeatureLayout layout;
  layout.dtype = DType::kUInt4;
  layout.shape = {2, 7, 7};
  layout.quant.scale = {4.0f / 15, 4.0f / 15};
  layout.quant.zero_point = {4, 4};
  return layout;
}

// Fits a per-channel model on the symbols of many samples of Features.
std::shared_ptr<const EntropyModel> FittedModel(const FeatureLayout& layout) {
  std::vector<uint8_t> samples;
  for (uint32_t s = 0; s < 200; ++s) {
    const std::vector<float> f = Features(1000 + s);
    auto t = EncodeTensor(f.data(), {1, 2, 7, 7}, layout.dtype, 1, &layout.quant);
    EXPECT_TRUE(t.ok());
    auto symbols = UnpackSymbols(layout.dtype, t->data, 98);
    EXPECT_TRUE(symbols.ok());
    samples.insert(samples.end(), symbols->begin(), symbols->end());
  }
  EntropyFitOptions options;
  options.alphabet = SymbolAlphabet(layout.dtype);
  options.channels = 2;
  options.elements = 98;
  auto model = FitEntropyModel(samples, options, ContextKind::kPerChannel);
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  return std::make_shared<const EntropyModel>(std::move(model).value());
}

std::vector<float> CodecRoundTrip(const FeatureLayout& layout, const std::vector<float>& f) {
  const bool quantized = layout.dtype == DType::kUInt8 || layout.dtype == DType::kUInt4;
  auto t =
      EncodeTensor(f.data(), {1, 2, 7, 7}, layout.dtype, 1, quantized ? &layout.quant : nullptr);
  EXPECT_TRUE(t.ok());
  return *DecodeTensor(*t);
}

TEST(FeatureCodingTest, PackedBytesDecodeToWhatTheCodecGivesForEveryDtype) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kUInt8, DType::kUInt4}) {
    SCOPED_TRACE(DTypeName(dtype));
    FeatureLayout layout = U4Layout();
    layout.dtype = dtype;
    if (dtype == DType::kFloat32 || dtype == DType::kFloat16) layout.quant = {};
    if (dtype == DType::kUInt8) layout.quant = {{4.0f / 255, 4.0f / 255}, {64, 64}};
    ASSERT_TRUE(layout.Validate().ok()) << layout.Validate().ToString();
    const std::vector<float> f = Features(1);
    Result<std::string> coded = CodeFeatures(layout, f.data());
    ASSERT_TRUE(coded.ok()) << coded.status().ToString();
    EXPECT_EQ(coded->size(), PackedByteSize(dtype, 98));
    Result<std::vector<float>> back = DecodeFeatures(layout, *coded);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(*back, CodecRoundTrip(layout, f));
  }
}

TEST(FeatureCodingTest, EntropyCodedFeaturesAreLosslessAndShorter) {
  FeatureLayout layout = U4Layout();
  layout.entropy = FittedModel(layout);
  ASSERT_TRUE(layout.Validate().ok()) << layout.Validate().ToString();
  size_t coded_total = 0;
  for (uint32_t s = 0; s < 50; ++s) {
    const std::vector<float> f = Features(s);
    Result<std::string> coded = CodeFeatures(layout, f.data());
    ASSERT_TRUE(coded.ok()) << coded.status().ToString();
    coded_total += coded->size();
    Result<std::vector<float>> back = DecodeFeatures(layout, *coded);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(*back, CodecRoundTrip(layout, f));
  }
  // 49 packed bytes each; these features use ~8 of the 16 levels.
  EXPECT_LT(coded_total, 50u * 40u) << coded_total / 50.0 << " bytes per image";
}

// The shorter of the two codings goes out: entropy coding for typical features, the packed
// bytes for an input the tables did not expect (every symbol a rare one).
TEST(FeatureCodingTest, ShortestCodingFallsBackToPackedForAtypicalInputs) {
  FeatureLayout layout = U4Layout();
  layout.entropy = FittedModel(layout);
  const std::vector<float> typical = Features(7);
  auto coded = CodeFeaturesShortest(layout, typical.data());
  ASSERT_TRUE(coded.ok());
  EXPECT_FALSE(coded->second);
  EXPECT_LT(coded->first.size(), 49u);
  EXPECT_EQ(*DecodeFeatures(layout, coded->first), CodecRoundTrip(layout, typical));
  const std::vector<float> atypical(98, 3.0f);  // the top level everywhere
  auto packed = CodeFeaturesShortest(layout, atypical.data());
  ASSERT_TRUE(packed.ok());
  EXPECT_TRUE(packed->second);
  EXPECT_EQ(packed->first.size(), 49u);
  EXPECT_EQ(*DecodeFeatures(PackedLayout(layout), packed->first), CodecRoundTrip(layout, atypical));
  FeatureLayout raw = U4Layout();
  auto no_model = CodeFeaturesShortest(raw, typical.data());
  ASSERT_TRUE(no_model.ok());
  EXPECT_TRUE(no_model->second);
}

TEST(FeatureCodingTest, MalformedCodedBytesAreRefused) {
  FeatureLayout raw = U4Layout();
  const std::vector<float> f = Features(2);
  const std::string packed = *CodeFeatures(raw, f.data());
  EXPECT_THAT(DecodeFeatures(raw, packed.substr(1)).status().message(), HasSubstr("packs 49"));
  EXPECT_THAT(DecodeFeatures(raw, packed + "x").status().message(), HasSubstr("packs 49"));
  EXPECT_EQ(DecodeFeatures(raw, "").status().code(), StatusCode::kInvalidArgument);

  FeatureLayout coded_layout = U4Layout();
  coded_layout.entropy = FittedModel(coded_layout);
  const std::string coded = *CodeFeatures(coded_layout, f.data());
  Result<std::vector<float>> truncated =
      DecodeFeatures(coded_layout, std::string_view(coded).substr(0, coded.size() - 1));
  ASSERT_FALSE(truncated.ok());
  EXPECT_THAT(truncated.status().message(), HasSubstr("coded features"));
  EXPECT_FALSE(DecodeFeatures(coded_layout, coded + std::string(3, '\xff')).ok());
  std::mt19937 rng(9);
  for (int i = 0; i < 200; ++i) {  // arbitrary bytes never crash
    std::string junk(rng() % 80, '\0');
    for (char& c : junk) c = static_cast<char>(rng());
    (void)DecodeFeatures(coded_layout, junk);
  }
}

TEST(FeatureCodingTest, LayoutsThatDoNotFitAreRefused) {
  FeatureLayout layout = U4Layout();
  layout.shape = {2, 49};
  EXPECT_THAT(layout.Validate().message(), HasSubstr("[C, H, W]"));
  layout = U4Layout();
  layout.quant.scale.pop_back();
  EXPECT_FALSE(layout.Validate().ok());
  layout = U4Layout();
  layout.entropy = FittedModel(layout);
  layout.shape = {2, 7, 6};
  EXPECT_THAT(layout.Validate().message(), HasSubstr("entropy model codes 98"));
  layout = U4Layout();
  layout.entropy = FittedModel(layout);
  layout.dtype = DType::kFloat32;
  layout.quant = {};
  EXPECT_THAT(layout.Validate().message(), HasSubstr("u8 or u4"));
  layout = U4Layout();
  layout.entropy = FittedModel(layout);
  layout.dtype = DType::kUInt8;
  EXPECT_THAT(layout.Validate().message(), HasSubstr("of 16 values"));
}

TEST(FeatureCodingTest, TheLayoutTagChangesWithWhatBothEndsMustShare) {
  const FeatureLayout base = U4Layout();
  const uint16_t tag = WireLayoutTag(base, "fmnist", 0);
  EXPECT_EQ(tag, WireLayoutTag(U4Layout(), "fmnist", 0));  // stable
  EXPECT_NE(tag, WireLayoutTag(base, "fmnist", 1));
  EXPECT_NE(tag, WireLayoutTag(base, "other", 0));
  FeatureLayout changed = base;
  changed.quant.scale[1] *= 1.01f;
  EXPECT_NE(tag, WireLayoutTag(changed, "fmnist", 0));
  changed = base;
  changed.quant.zero_point[0] = 5;
  EXPECT_NE(tag, WireLayoutTag(changed, "fmnist", 0));
  changed = base;
  changed.entropy = FittedModel(changed);
  EXPECT_NE(tag, WireLayoutTag(changed, "fmnist", 0));
  changed = base;
  changed.dtype = DType::kUInt8;
  EXPECT_NE(tag, WireLayoutTag(changed, "fmnist", 0));
}

}  // namespace
}  // namespace cleave::wire
