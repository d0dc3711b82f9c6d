#include "common/tensor_codec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

namespace cleave::wire {
namespace {

using ::testing::HasSubstr;

std::vector<float> RandomValues(size_t count, float lo, float hi, uint32_t seed = 7) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> values(count);
  for (float& v : values) v = dist(rng);
  return values;
}

void ExpectInvalid(const Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_THAT(status.message(), HasSubstr(fragment));
}

// A valid u4 tensor of shape [1,2,7,7] with 2-channel quantization parameters.
EncodedTensor ValidU4() {
  const auto values = RandomValues(98, -1.0f, 3.0f);
  auto tensor = EncodeTensor(values.data(), {1, 2, 7, 7}, DType::kUInt4, 1);
  EXPECT_TRUE(tensor.ok()) << tensor.status().ToString();
  return *tensor;
}

TEST(DTypeTest, NamesRoundTrip) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kUInt8, DType::kUInt4}) {
    auto parsed = ParseDType(DTypeName(dtype));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, dtype);
  }
  EXPECT_STREQ(DTypeName(DType::kUInt4), "u4");
  ExpectInvalid(ParseDType("int8").status(), "unknown dtype 'int8'");
}

TEST(ElementCountTest, CountsAndLimits) {
  EXPECT_EQ(*ElementCount({}), 1u);
  EXPECT_EQ(*ElementCount({1, 2, 7, 7}), 98u);
  EXPECT_EQ(*ElementCount({3, 0, 5}), 0u);
  ExpectInvalid(ElementCount({1, 1, 1, 1, 1, 1, 1, 1, 1}).status(),
                "rank 9 exceeds the limit of 8");
  ExpectInvalid(ElementCount({1u << 14, 1u << 13}).status(), "more than the limit");
  const uint32_t big = std::numeric_limits<uint32_t>::max();
  ExpectInvalid(ElementCount({big, big, big}).status(), "overflows 64 bits");
  ExpectInvalid(ElementCount({big, big, big, 0}).status(), "overflows 64 bits");
  // No elements, but the other dimensions would still drive loops and parameter counts.
  ExpectInvalid(ElementCount({0, 4000000000u}).status(),
                "shape [0,4000000000] spans 4000000000 elements ignoring zero dimensions, more "
                "than the limit of 67108864");
}

TEST(PackedByteSizeTest, PerDType) {
  EXPECT_EQ(PackedByteSize(DType::kFloat32, 5), 20u);
  EXPECT_EQ(PackedByteSize(DType::kFloat16, 5), 10u);
  EXPECT_EQ(PackedByteSize(DType::kUInt8, 5), 5u);
  EXPECT_EQ(PackedByteSize(DType::kUInt4, 5), 3u);
  EXPECT_EQ(PackedByteSize(DType::kUInt4, 98), 49u);
}

TEST(HalfTest, ConversionsAreExactWhereRepresentable) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xC000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7C00);                      // rounds to inf
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);         // smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -26)), 0x0000);         // below half of it
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie -> even
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(std::nanf("")))));
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float value = HalfToFloat(static_cast<uint16_t>(bits));
    if (std::isnan(value)) continue;
    ASSERT_EQ(FloatToHalf(value), bits) << "half bits " << bits;
  }
}

TEST(EncodeTensorTest, Float32RoundTripIsExact) {
  const auto values = RandomValues(24, -100.0f, 100.0f);
  auto tensor = EncodeTensor(values.data(), {2, 3, 4}, DType::kFloat32);
  ASSERT_TRUE(tensor.ok()) << tensor.status().ToString();
  EXPECT_EQ(tensor->data.size(), 96u);
  EXPECT_TRUE(tensor->quant.scale.empty());
  auto decoded = DecodeTensor(*tensor);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, values);
}

TEST(EncodeTensorTest, Float16RoundTripWithinHalfPrecision) {
  const auto values = RandomValues(50, -300.0f, 300.0f);
  auto tensor = EncodeTensor(values.data(), {5, 10}, DType::kFloat16);
  ASSERT_TRUE(tensor.ok());
  EXPECT_EQ(tensor->data.size(), 100u);
  auto decoded = DecodeTensor(*tensor);
  ASSERT_TRUE(decoded.ok());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_NEAR((*decoded)[i], values[i], std::abs(values[i]) * std::ldexp(1.0f, -11) + 1e-7f);
  }
}

TEST(EncodeTensorTest, Float16RejectsValuesOutsideItsRange) {
  const float values[] = {1.0f, 70000.0f};
  ExpectInvalid(EncodeTensor(values, {2}, DType::kFloat16).status(), "outside the f16 range");
}

// Every element decodes within scale/2 of its channel (plus float rounding).
void ExpectWithinHalfScale(const std::vector<float>& values, const EncodedTensor& tensor,
                           uint64_t inner) {
  auto decoded = DecodeTensor(tensor);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  ASSERT_EQ(decoded->size(), values.size());
  const size_t channels = tensor.quant.scale.size();
  for (size_t i = 0; i < values.size(); ++i) {
    const float scale = tensor.quant.scale[(i / inner) % channels];
    EXPECT_LE(std::abs((*decoded)[i] - values[i]), scale / 2 * 1.001f + 1e-6f) << "element " << i;
  }
}

TEST(EncodeTensorTest, UInt8PerChannelRoundTrip) {
  // Channels with very different ranges, including an all-positive and an all-negative one.
  std::vector<float> values = RandomValues(2 * 3 * 16, -1.0f, 1.0f);
  for (size_t i = 0; i < values.size(); ++i) {
    const size_t channel = (i / 16) % 3;
    if (channel == 1) values[i] = 100.0f + 10.0f * values[i];
    if (channel == 2) values[i] = -5.0f + 0.01f * values[i];
  }
  auto tensor = EncodeTensor(values.data(), {2, 3, 16}, DType::kUInt8, 1);
  ASSERT_TRUE(tensor.ok()) << tensor.status().ToString();
  EXPECT_EQ(tensor->data.size(), 96u);
  ASSERT_EQ(tensor->quant.scale.size(), 3u);
  EXPECT_GT(tensor->quant.scale[1], tensor->quant.scale[0]);
  ExpectWithinHalfScale(values, *tensor, 16);
}

TEST(EncodeTensorTest, UInt4PerChannelRoundTrip) {
  const auto values = RandomValues(98, -2.0f, 6.0f);
  auto tensor = EncodeTensor(values.data(), {1, 2, 7, 7}, DType::kUInt4, 1);
  ASSERT_TRUE(tensor.ok());
  EXPECT_EQ(tensor->data.size(), 49u);
  for (uint8_t zp : tensor->quant.zero_point) EXPECT_LE(zp, 15);
  ExpectWithinHalfScale(values, *tensor, 49);
}

TEST(EncodeTensorTest, UInt4OddCountPacksLowNibbleFirst) {
  const float values[] = {0.0f, 15.0f, 0.0f, 15.0f, 15.0f};
  const QuantParams unit{{1.0f}, {0}};
  auto tensor = EncodeTensor(values, {1, 5}, DType::kUInt4, 0, &unit);
  ASSERT_TRUE(tensor.ok()) << tensor.status().ToString();
  ASSERT_EQ(tensor->data.size(), 3u);
  EXPECT_EQ(static_cast<uint8_t>(tensor->data[0]), 0xF0);
  EXPECT_EQ(static_cast<uint8_t>(tensor->data[1]), 0xF0);
  EXPECT_EQ(static_cast<uint8_t>(tensor->data[2]), 0x0F);  // padding nibble stays zero
  auto decoded = DecodeTensor(*tensor);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, std::vector<float>(std::begin(values), std::end(values)));
}

TEST(EncodeTensorTest, ConstantChannelsStayValid) {
  const std::vector<float> values = {0, 0, 0, 0, 5, 5, 5, 5, -3, -3, -3, -3};
  for (DType dtype : {DType::kUInt8, DType::kUInt4}) {
    auto tensor = EncodeTensor(values.data(), {3, 4}, dtype, 0);
    ASSERT_TRUE(tensor.ok()) << tensor.status().ToString();
    for (float scale : tensor->quant.scale) EXPECT_GT(scale, 0.0f);
    ExpectWithinHalfScale(values, *tensor, 4);
  }
}

// Found by tensor_codec_fuzz: a range near +-FLT_MAX rounds zero_point so that the lowest
// code dequantizes beyond the float range; decoding saturates instead of returning -inf.
TEST(EncodeTensorTest, ExtremeRangesDecodeFinite) {
  const float max = std::numeric_limits<float>::max();
  const std::vector<float> values = {-max, max, -3.37878e+38f, 0.0f};
  for (DType dtype : {DType::kUInt8, DType::kUInt4}) {
    auto tensor = EncodeTensor(values.data(), {1, 4}, dtype, 0);
    ASSERT_TRUE(tensor.ok()) << tensor.status().ToString();
    auto decoded = DecodeTensor(*tensor);
    ASSERT_TRUE(decoded.ok());
    for (float v : *decoded) EXPECT_TRUE(std::isfinite(v));
    ExpectWithinHalfScale(values, *tensor, 4);
  }
  EncodedTensor peer;
  peer.dtype = DType::kUInt4;
  peer.shape = {1};
  peer.channel_axis = 0;
  peer.quant = {{3e38f}, {0}};
  peer.data = std::string(1, '\x0f');
  EXPECT_EQ(*DecodeTensor(peer), std::vector<float>{max});
}

TEST(EncodeTensorTest, FixedParamsClampOutOfRangeValues) {
  const float values[] = {-10.0f, 0.5f, 1.0f, 99.0f};
  const QuantParams params{{0.25f}, {4}};  // u4 range: [-1, 2.75]
  auto tensor = EncodeTensor(values, {1, 4}, DType::kUInt4, 0, &params);
  ASSERT_TRUE(tensor.ok());
  EXPECT_EQ(tensor->quant.scale, params.scale);
  auto decoded = DecodeTensor(*tensor);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, (std::vector<float>{-1.0f, 0.5f, 1.0f, 2.75f}));
}

TEST(EncodeTensorTest, RejectsBadFixedParams) {
  const float values[] = {1, 2, 3, 4};
  const QuantParams too_few{{1.0f}, {0}};
  ExpectInvalid(EncodeTensor(values, {2, 2}, DType::kUInt8, 1, &too_few).status(),
                "fixed quantization parameters: u8 tensor with 2 channels");
  const QuantParams zero_scale{{1.0f, 0.0f}, {0, 0}};
  ExpectInvalid(EncodeTensor(values, {2, 2}, DType::kUInt8, 1, &zero_scale).status(),
                "scale[1] = 0 is not a finite positive number");
  const QuantParams big_zero_point{{1.0f, 1.0f}, {0, 16}};
  ExpectInvalid(EncodeTensor(values, {2, 2}, DType::kUInt4, 1, &big_zero_point).status(),
                "zero_point[1] = 16 is out of range for u4 (max 15)");
}

TEST(EncodeTensorTest, RejectsNonFiniteInput) {
  const float nan_values[] = {1.0f, std::nanf("")};
  const float inf_values[] = {std::numeric_limits<float>::infinity(), 1.0f};
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kUInt8, DType::kUInt4}) {
    ExpectInvalid(EncodeTensor(nan_values, {1, 2}, dtype).status(),
                  "input element 1 is not finite (nan)");
    ExpectInvalid(EncodeTensor(inf_values, {1, 2}, dtype).status(),
                  "input element 0 is not finite (inf)");
  }
  ExpectInvalid(ComputeQuantParams(nan_values, {1, 2}, DType::kUInt8, 1).status(), "not finite");
}

TEST(EncodeTensorTest, RejectsMalformedArguments) {
  const float values[] = {1, 2, 3, 4};
  ExpectInvalid(EncodeTensor(values, {4}, static_cast<DType>(9)).status(),
                "cannot encode to unknown dtype 9");
  ExpectInvalid(EncodeTensor(nullptr, {4}, DType::kFloat32).status(), "values is null");
  ExpectInvalid(EncodeTensor(values, {2, 2}, DType::kUInt8, 2).status(),
                "channel axis 2 is out of range for rank-2 shape [2,2]");
  ExpectInvalid(EncodeTensor(values, {}, DType::kUInt8, 0).status(), "needs rank >= 1");
  ExpectInvalid(EncodeTensor(values, {1, 1, 1, 1, 1, 1, 1, 1, 4}, DType::kFloat32).status(),
                "rank 9 exceeds");
  ExpectInvalid(ComputeQuantParams(values, {4}, DType::kFloat16, 0).status(),
                "only for u8/u4, not f16");
  // Zero elements are a valid, empty tensor.
  auto empty = EncodeTensor(nullptr, {0, 3}, DType::kUInt8, 1);
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_TRUE(empty->data.empty());
  EXPECT_TRUE(DecodeTensor(*empty)->empty());
}

TEST(ValidateTensorTest, AcceptsWhatEncodeProduces) { EXPECT_TRUE(ValidateTensor(ValidU4()).ok()); }

TEST(ValidateTensorTest, RejectsUnknownDTypeValue) {
  EncodedTensor tensor = ValidU4();
  tensor.dtype = static_cast<DType>(7);
  ExpectInvalid(ValidateTensor(tensor), "unknown dtype value 7");
}

TEST(ValidateTensorTest, RejectsDataSizeMismatch) {
  EncodedTensor tensor = ValidU4();
  tensor.data.resize(37);
  ExpectInvalid(ValidateTensor(tensor),
                "tensor data is 37 bytes but shape [1,2,7,7] of u4 needs 49");
  tensor = ValidU4();
  tensor.data.push_back('\0');
  ExpectInvalid(ValidateTensor(tensor), "tensor data is 50 bytes");
  tensor = ValidU4();
  tensor.shape = {1, 2, 7, 8};
  ExpectInvalid(ValidateTensor(tensor), "shape [1,2,7,8] of u4 needs 56");
}

TEST(ValidateTensorTest, RejectsQuantParamCountMismatch) {
  EncodedTensor tensor = ValidU4();
  tensor.quant.scale.push_back(1.0f);
  ExpectInvalid(ValidateTensor(tensor), "needs 2 scales and zero points, got 3 scales and 2");
  tensor = ValidU4();
  tensor.quant.zero_point.pop_back();
  ExpectInvalid(ValidateTensor(tensor), "got 2 scales and 1 zero points");
  tensor = ValidU4();
  tensor.channel_axis = 3;  // 7 channels
  ExpectInvalid(ValidateTensor(tensor), "with 7 channels (axis 3");
}

TEST(ValidateTensorTest, RejectsBadScalesAndZeroPoints) {
  for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity(), -1.0f, 0.0f}) {
    EncodedTensor tensor = ValidU4();
    tensor.quant.scale[1] = bad;
    ExpectInvalid(ValidateTensor(tensor), "scale[1] = ");
  }
  EncodedTensor tensor = ValidU4();
  tensor.quant.zero_point[0] = 16;
  ExpectInvalid(ValidateTensor(tensor), "zero_point[0] = 16 is out of range for u4");
}

TEST(ValidateTensorTest, RejectsBadChannelAxis) {
  EncodedTensor tensor = ValidU4();
  tensor.channel_axis = 4;
  ExpectInvalid(ValidateTensor(tensor), "channel axis 4 is out of range for rank-4");
  tensor.shape = {};
  tensor.data.resize(1);
  ExpectInvalid(ValidateTensor(tensor), "needs rank >= 1");
}

// Found by tensor_codec_fuzz: a zero-element u8 tensor with a huge leading dimension made
// DecodeTensor loop billions of times over nothing.
TEST(ValidateTensorTest, ZeroElementTensorWithHugeDimensionsIsRejectedQuickly) {
  EncodedTensor tensor;
  tensor.dtype = DType::kUInt8;
  tensor.shape = {0xFFFFFFFF, 0};
  tensor.channel_axis = 1;
  ExpectInvalid(DecodeTensor(tensor).status(), "ignoring zero dimensions");
  tensor.shape = {1u << 13, 0, 1u << 13};  // spans exactly 2^26: allowed and instant
  tensor.channel_axis = 1;
  auto decoded = DecodeTensor(tensor);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_TRUE(decoded->empty());
}

TEST(ValidateTensorTest, RejectsNonZeroU4Padding) {
  const float values[] = {1, 2, 3};
  auto tensor = EncodeTensor(values, {1, 3}, DType::kUInt4, 1);
  ASSERT_TRUE(tensor.ok());
  tensor->data[1] = static_cast<char>(tensor->data[1] | 0xA0);
  ExpectInvalid(ValidateTensor(*tensor), "padding nibble");
}

TEST(ValidateTensorTest, RejectsQuantParamsOnFloatTensors) {
  const float values[] = {1, 2};
  auto tensor = EncodeTensor(values, {1, 2}, DType::kFloat32);
  ASSERT_TRUE(tensor.ok());
  tensor->quant.scale = {1.0f};
  ExpectInvalid(ValidateTensor(*tensor), "f32 tensor must not carry quantization parameters");
}

TEST(ValidateTensorTest, RejectsNonFiniteFloatData) {
  const float values[] = {1, 2};
  auto f32 = EncodeTensor(values, {2}, DType::kFloat32);
  ASSERT_TRUE(f32.ok());
  const float nan = std::nanf("");
  std::memcpy(&f32->data[4], &nan, sizeof(nan));
  ExpectInvalid(ValidateTensor(*f32), "f32 element 1 is not finite (nan)");
  ExpectInvalid(DecodeTensor(*f32).status(), "not finite");

  auto f16 = EncodeTensor(values, {2}, DType::kFloat16);
  ASSERT_TRUE(f16.ok());
  const uint16_t inf = 0x7C00;
  std::memcpy(&f16->data[0], &inf, sizeof(inf));
  ExpectInvalid(ValidateTensor(*f16), "f16 element 0 is not finite (inf)");
}

TEST(ValidateTensorTest, RejectsRankAndElementLimits) {
  EncodedTensor tensor;
  tensor.shape.assign(9, 1);
  tensor.data.resize(4);
  ExpectInvalid(ValidateTensor(tensor), "rank 9 exceeds the limit of 8");
  tensor.shape = {1u << 20, 1u << 20};
  ExpectInvalid(ValidateTensor(tensor),
                "has 1099511627776 elements, more than the limit of 67108864");
  tensor.shape = {0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF};
  ExpectInvalid(ValidateTensor(tensor), "overflows 64 bits");
}

}  // namespace
}  // namespace cleave::wire
