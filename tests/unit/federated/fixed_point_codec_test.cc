#include "federated/fixed_point_codec.h"

#include <cmath>
#include <limits>
#include <string>

#include <gtest/gtest.h>

namespace cleave {
namespace {

std::vector<uint32_t> AddWords(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b) {
  std::vector<uint32_t> out(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = a[i] + b[i];
  return out;
}

TEST(FixedPointCodecTest, SumsOfEncodingsDecodeToTheSumWithinTheQuantizationStep) {
  auto codec = FixedPointCodec::Create(/*clip=*/1.0, /*fractional_bits=*/16, /*summands=*/20);
  ASSERT_TRUE(codec.ok()) << codec.status().ToString();
  EXPECT_EQ(codec->max_magnitude(), 65536u);
  const std::vector<std::vector<float>> updates = {
      {0.5f, -0.25f, 0.0f, -1.0f, 0.999f, 1e-6f},
      {-0.5f, -0.75f, 0.1f, -1.0f, 0.999f, -3e-5f},
      {0.3f, 0.123456f, -0.9f, -1.0f, 0.999f, 0.0f},
  };
  std::vector<uint32_t> sum(6, 0);
  std::vector<double> expected(6, 0.0);
  for (const auto& update : updates) {
    auto words = codec->Encode(update);
    ASSERT_TRUE(words.ok()) << words.status().ToString();
    sum = AddWords(sum, *words);
    for (size_t i = 0; i < update.size(); ++i) expected[i] += update[i];
  }
  auto decoded = codec->DecodeSum(sum, 3);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_NEAR((*decoded)[i], expected[i], 3 * std::ldexp(0.5, -16)) << "coordinate " << i;
  }
  // Negative values are two's complement in the ring: -1.0 encodes as 2^32 - 2^16.
  EXPECT_EQ((*codec->Encode(std::vector<float>{-1.0f}))[0], uint32_t(0) - 65536u);
}

TEST(FixedPointCodecTest, ClipsOutOfRangeCoordinatesAndCountsThem) {
  auto codec = FixedPointCodec::Create(0.5, 8, 4);
  ASSERT_TRUE(codec.ok());
  size_t clipped = 0;
  auto words = codec->Encode(std::vector<float>{3.0f, -7.5f, 0.25f, 0.5f}, &clipped);
  ASSERT_TRUE(words.ok());
  EXPECT_EQ(clipped, 2u);
  auto decoded = codec->DecodeSum(*words, 1);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, (std::vector<double>{0.5, -0.5, 0.25, 0.5}));
}

TEST(FixedPointCodecTest, RefusesParametersWhoseSumCouldWrapAndSaysWhatFits) {
  // 20 clients x 2^27 > 2^31 - 1: wraps; 26 bits fit.
  auto too_fine = FixedPointCodec::Create(1.0, 27, 20);
  ASSERT_FALSE(too_fine.ok());
  EXPECT_EQ(too_fine.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_fine.status().message().find("headroom"), std::string::npos);
  EXPECT_NE(too_fine.status().message().find("use at most 26 fractional bits"), std::string::npos)
      << too_fine.status().message();
  EXPECT_TRUE(FixedPointCodec::Create(1.0, 26, 20).ok());
  // Exactly at the limit the extreme sums still decode exactly: m * Q = 2^31 - 1.
  const uint32_t m = 7;  // 2^31 - 1 = 7 * 306783378 + 1
  auto edge = FixedPointCodec::Create(306783378.0, 0, m);
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  for (float sign : {1.0f, -1.0f}) {
    std::vector<uint32_t> sum(1, 0);
    for (uint32_t i = 0; i < m; ++i)
      sum = AddWords(sum, *edge->Encode(std::vector<float>{sign * 4e8f}));
    EXPECT_EQ((*edge->DecodeSum(sum, m))[0], sign * 7.0 * 306783378.0);
  }
  EXPECT_FALSE(FixedPointCodec::Create(306783378.0, 0, m + 1).ok());
  // Decoding more summands than the headroom covers is refused.
  EXPECT_EQ(edge->DecodeSum({0}, m + 1).status().code(), StatusCode::kFailedPrecondition);
}

TEST(FixedPointCodecTest, RejectsNonFiniteInputsAndBadParameters) {
  auto codec = FixedPointCodec::Create(1.0, 10, 10);
  ASSERT_TRUE(codec.ok());
  auto nan = codec->Encode(std::vector<float>{0.0f, std::nanf("")});
  EXPECT_EQ(nan.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(nan.status().message().find("coordinate 1"), std::string::npos);
  EXPECT_FALSE(codec->Encode(std::vector<float>{std::numeric_limits<float>::infinity()}).ok());
  EXPECT_FALSE(FixedPointCodec::Create(0.0, 10, 10).ok());
  EXPECT_FALSE(FixedPointCodec::Create(-1.0, 10, 10).ok());
  EXPECT_FALSE(FixedPointCodec::Create(std::nan(""), 10, 10).ok());
  EXPECT_FALSE(FixedPointCodec::Create(1.0, -1, 10).ok());
  EXPECT_FALSE(FixedPointCodec::Create(1.0, 31, 1).ok());
  EXPECT_FALSE(FixedPointCodec::Create(1.0, 10, 0).ok());
}

TEST(FixedPointCodecTest, StochasticRoundingIsUnbiasedBoundedAndReproducible) {
  auto codec = FixedPointCodec::Create(1.0, 2, 10);  // 0.3 * 4 = 1.2: rounds to 1 or 2
  ASSERT_TRUE(codec.ok());
  const std::vector<float> values(20000, 0.3f);
  crypto::Key256 seed{};
  seed[0] = 1;
  auto words = codec->EncodeStochastic(values.data(), values.size(), seed);
  ASSERT_TRUE(words.ok()) << words.status().ToString();
  double mean = 0;
  for (uint32_t w : *words) {
    ASSERT_TRUE(w == 1 || w == 2) << w;
    mean += w;
  }
  mean /= values.size();
  // E = 1.2, standard deviation of the mean sqrt(0.16 / 20000) ~ 0.0028.
  EXPECT_NEAR(mean, 0.3f * 4, 0.015);
  EXPECT_EQ(*codec->EncodeStochastic(values.data(), values.size(), seed), *words);
  // The clip bound stays within the headroom: +-clip encodes to at most Q in magnitude.
  const std::vector<float> extremes = {1.0f, -1.0f, 5.0f, -5.0f};
  auto bounded = codec->EncodeStochastic(extremes.data(), extremes.size(), seed);
  ASSERT_TRUE(bounded.ok());
  EXPECT_EQ(*bounded, (std::vector<uint32_t>{4, uint32_t(0) - 4, 4, uint32_t(0) - 4}));
}

}  // namespace
}  // namespace cleave
