#include "common/shamir.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace cleave::shamir {
namespace {

crypto::Bytes Secret(size_t size, uint8_t first = 1) {
  crypto::Bytes secret(size);
  for (size_t i = 0; i < size; ++i) secret[i] = static_cast<uint8_t>(first + 37 * i);
  return secret;
}

// Every subset of `shares` with exactly `k` members, as index lists.
std::vector<std::vector<size_t>> Subsets(size_t n, size_t k) {
  std::vector<std::vector<size_t>> out;
  for (uint32_t mask = 0; mask < (1u << n); ++mask) {
    if (static_cast<size_t>(__builtin_popcount(mask)) != k) continue;
    std::vector<size_t> subset;
    for (size_t i = 0; i < n; ++i) {
      if (mask & (1u << i)) subset.push_back(i);
    }
    out.push_back(subset);
  }
  return out;
}

TEST(ShamirTest, EveryThresholdSubsetReconstructsAndSmallerOnesFail) {
  const crypto::Bytes secret = Secret(32);
  const uint32_t n = 6, t = 4;
  auto shares = Split(secret, t, n);
  ASSERT_TRUE(shares.ok()) << shares.status().ToString();
  ASSERT_EQ(shares->size(), n);
  for (const Share& share : *shares) EXPECT_EQ(share.y.size(), ElementsFor(32));
  for (size_t k = t; k <= n; ++k) {
    for (const auto& subset : Subsets(n, k)) {
      std::vector<Share> chosen;
      for (size_t i : subset) chosen.push_back((*shares)[i]);
      auto got = Reconstruct(chosen, t, secret.size());
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(*got, secret);
    }
  }
  for (const auto& subset : Subsets(n, t - 1)) {
    std::vector<Share> chosen;
    for (size_t i : subset) chosen.push_back((*shares)[i]);
    auto got = Reconstruct(chosen, t, secret.size());
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(got.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(got.status().message().find("from 3 shares: threshold is 4"), std::string::npos)
        << got.status().message();
  }
}

TEST(ShamirTest, SecretsOfAnyLengthAndExtremeBytesRoundTripAtChosenPoints) {
  for (size_t size : {1u, 6u, 7u, 8u, 13u, 14u, 32u, 33u}) {
    for (uint8_t fill : {uint8_t{0x00}, uint8_t{0xff}}) {
      const crypto::Bytes secret(size, fill);
      auto shares = Split(secret, 2, std::vector<uint32_t>{3, 9, 65537});
      ASSERT_TRUE(shares.ok()) << shares.status().ToString();
      EXPECT_EQ((*shares)[2].x, 65537u);
      auto got = Reconstruct({(*shares)[2], (*shares)[0]}, 2, size);
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(*got, secret);
    }
  }
}

TEST(ShamirTest, SharesAreFreshlyRandomAndBelowThresholdLookUnrelatedToTheSecret) {
  const crypto::Bytes secret = Secret(32);
  auto a = Split(secret, 3, 5);
  auto b = Split(secret, 3, 5);
  ASSERT_TRUE(a.ok() && b.ok());
  // Same secret, independent polynomials: the shares differ.
  EXPECT_NE((*a)[0].y, (*b)[0].y);
  // t = 1 is a degenerate copy of the secret; t >= 2 shares never equal the plain chunks.
  const crypto::Bytes zero(32, 0);
  auto shares = Split(zero, 2, 4);
  ASSERT_TRUE(shares.ok());
  for (const Share& share : *shares) {
    for (uint64_t y : share.y) {
      EXPECT_LT(y, kPrime);
    }
    EXPECT_NE(share.y, std::vector<uint64_t>(ElementsFor(32), 0));
  }
}

TEST(ShamirTest, ReconstructRejectsMalformedShareSets) {
  const crypto::Bytes secret = Secret(32);
  auto shares = Split(secret, 3, 5);
  ASSERT_TRUE(shares.ok());
  const std::vector<Share> good(shares->begin(), shares->begin() + 3);

  // Shares of a 32-byte secret read as a 16-byte one: wrong element count.
  auto wrong_length = Reconstruct(good, 3, 16);
  EXPECT_EQ(wrong_length.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(wrong_length.status().message().find("16-byte secret needs 3"), std::string::npos)
      << wrong_length.status().message();
  std::vector<Share> short_share = good;
  short_share[1].y.pop_back();
  EXPECT_EQ(Reconstruct(short_share, 3, 32).status().code(), StatusCode::kInvalidArgument);

  std::vector<Share> duplicate = good;
  duplicate[2] = duplicate[0];
  auto dup = Reconstruct(duplicate, 3, 32);
  EXPECT_EQ(dup.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(dup.status().message().find("more than once"), std::string::npos);

  std::vector<Share> zero_point = good;
  zero_point[0].x = 0;
  EXPECT_EQ(Reconstruct(zero_point, 3, 32).status().code(), StatusCode::kOutOfRange);

  std::vector<Share> outside_field = good;
  outside_field[1].y[0] = kPrime;
  EXPECT_EQ(Reconstruct(outside_field, 3, 32).status().code(), StatusCode::kOutOfRange);

  EXPECT_EQ(Reconstruct(good, 0, 32).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Reconstruct(good, 3, 0).status().code(), StatusCode::kInvalidArgument);
}

TEST(ShamirTest, AShareInconsistentWithTheOthersIsDataLossNotAWrongSecret) {
  const crypto::Bytes secret = Secret(32);
  auto shares = Split(secret, 3, 5);
  ASSERT_TRUE(shares.ok());
  std::vector<Share> corrupt = *shares;
  corrupt[4].y[2] = (corrupt[4].y[2] + 1) % kPrime;
  auto got = Reconstruct(corrupt, 3, 32);
  EXPECT_EQ(got.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(got.status().message().find("share 5"), std::string::npos);
  // A share of another secret mixed in is caught the same way.
  auto other = Split(Secret(32, 99), 3, 5);
  ASSERT_TRUE(other.ok());
  std::vector<Share> mixed = *shares;
  mixed[3] = (*other)[3];
  EXPECT_EQ(Reconstruct(mixed, 3, 32).status().code(), StatusCode::kDataLoss);
}

TEST(ShamirTest, SplitRejectsBadParameters) {
  const crypto::Bytes secret = Secret(32);
  EXPECT_EQ(Split(secret, 0, 5).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Split(secret, 6, 5).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Split(crypto::Bytes(), 2, 5).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Split(crypto::Bytes(kMaxSecretBytes + 1, 1), 2, 5).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Split(secret, 2, std::vector<uint32_t>{1, 0, 2}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Split(secret, 2, std::vector<uint32_t>{4, 7, 4}).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cleave::shamir
