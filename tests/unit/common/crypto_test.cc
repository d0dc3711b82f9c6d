#include "common/crypto.h"

#include <bitset>
#include <cmath>
#include <set>
#include <string>

#include <gtest/gtest.h>

namespace cleave::crypto {
namespace {

Bytes FromHex(const std::string& hex) {
  Bytes out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

Key256 KeyFromHex(const std::string& hex) {
  const Bytes bytes = FromHex(hex);
  Key256 key{};
  EXPECT_EQ(bytes.size(), key.size());
  std::copy(bytes.begin(), bytes.end(), key.begin());
  return key;
}

std::string ToHex(ByteView bytes) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < bytes.size(); ++i) {
    out += kDigits[bytes.data()[i] >> 4];
    out += kDigits[bytes.data()[i] & 15];
  }
  return out;
}

Bytes Range(int first, int last) {  // inclusive
  Bytes out;
  for (int b = first; b <= last; ++b) out.push_back(static_cast<uint8_t>(b));
  return out;
}

// ---- X25519: RFC 7748 ----

TEST(CryptoTest, X25519MatchesRfc7748Section52Vectors) {
  struct Vector {
    const char* scalar;
    const char* u;
    const char* out;
  };
  const Vector vectors[] = {
      {"a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
       "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
       "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"},
      // The input u has its top bit set, which X25519 must ignore.
      {"4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
       "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
       "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"},
  };
  for (const Vector& v : vectors) {
    auto out = X25519Agree(KeyFromHex(v.scalar), KeyFromHex(v.u));
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    EXPECT_EQ(ToHex(*out), v.out);
  }
}

TEST(CryptoTest, X25519IteratedVectorsOfRfc7748Section52) {
  Key256 k{}, u{};
  k[0] = 9;
  u[0] = 9;
  for (int i = 1; i <= 1000; ++i) {
    auto r = X25519Agree(k, u);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    u = k;
    k = *r;
    if (i == 1) {
      EXPECT_EQ(ToHex(k), "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079");
    }
  }
  EXPECT_EQ(ToHex(k), "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51");
}

TEST(CryptoTest, X25519DiffieHellmanOfRfc7748Section61) {
  auto alice = X25519FromSecret(
      KeyFromHex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
  auto bob = X25519FromSecret(
      KeyFromHex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"));
  ASSERT_TRUE(alice.ok() && bob.ok());
  EXPECT_EQ(ToHex(alice->public_key),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  EXPECT_EQ(ToHex(bob->public_key),
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
  const std::string shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
  EXPECT_EQ(ToHex(*X25519Agree(alice->secret_key, bob->public_key)), shared);
  EXPECT_EQ(ToHex(*X25519Agree(bob->secret_key, alice->public_key)), shared);
}

TEST(CryptoTest, GeneratedX25519KeysAgreeAndLowOrderPointsAreRejected) {
  auto a = GenerateX25519();
  auto b = GenerateX25519();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->secret_key, b->secret_key);
  EXPECT_EQ(X25519FromSecret(a->secret_key)->public_key, a->public_key);
  auto ab = X25519Agree(a->secret_key, b->public_key);
  auto ba = X25519Agree(b->secret_key, a->public_key);
  ASSERT_TRUE(ab.ok() && ba.ok());
  EXPECT_EQ(*ab, *ba);
  // u = 0 and u = 1 are low-order points: the shared secret would be all zeros.
  Key256 zero{}, one{};
  one[0] = 1;
  EXPECT_EQ(X25519Agree(a->secret_key, zero).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(X25519Agree(a->secret_key, one).status().code(), StatusCode::kInvalidArgument);
}

// ---- HKDF-SHA256: RFC 5869 appendix A.1-A.3 ----

TEST(CryptoTest, HkdfMatchesRfc5869TestCase1) {
  const Bytes ikm(22, 0x0b);
  const Bytes salt = Range(0x00, 0x0c);
  const Bytes info = Range(0xf0, 0xf9);
  auto prk = HkdfExtract(salt, ikm);
  ASSERT_TRUE(prk.ok()) << prk.status().ToString();
  EXPECT_EQ(ToHex(*prk), "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5");
  auto okm = HkdfExpand(*prk, info, 42);
  ASSERT_TRUE(okm.ok()) << okm.status().ToString();
  const std::string expected =
      "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865";
  EXPECT_EQ(ToHex(*okm), expected);
  EXPECT_EQ(ToHex(*Hkdf(salt, ikm, info, 42)), expected);
}

TEST(CryptoTest, HkdfMatchesRfc5869TestCase2) {
  const Bytes ikm = Range(0x00, 0x4f);
  const Bytes salt = Range(0x60, 0xaf);
  const Bytes info = Range(0xb0, 0xff);
  EXPECT_EQ(ToHex(*HkdfExtract(salt, ikm)),
            "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244");
  auto okm = Hkdf(salt, ikm, info, 82);
  ASSERT_TRUE(okm.ok()) << okm.status().ToString();
  EXPECT_EQ(ToHex(*okm),
            "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
            "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
            "cc30c58179ec3e87c14c01d5c1f3434f1d87");
}

TEST(CryptoTest, HkdfMatchesRfc5869TestCase3WithEmptySaltAndInfo) {
  const Bytes ikm(22, 0x0b);
  EXPECT_EQ(ToHex(*HkdfExtract(ByteView(), ikm)),
            "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04");
  auto okm = Hkdf(ByteView(), ikm, ByteView(), 42);
  ASSERT_TRUE(okm.ok()) << okm.status().ToString();
  EXPECT_EQ(ToHex(*okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");
}

TEST(CryptoTest, HkdfRejectsOutputLengthsOutsideTheRfcLimit) {
  const Key256 prk{};
  EXPECT_EQ(HkdfExpand(prk, "info", 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(HkdfExpand(prk, "info", 255 * 32 + 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(HkdfExpand(prk, "info", 255 * 32).ok());
  // Different info strings give independent keys.
  EXPECT_NE(*HkdfKey("salt", "ikm", "a"), *HkdfKey("salt", "ikm", "b"));
}

// ---- AES-256-GCM ----

TEST(CryptoTest, AeadRoundTripsAndUsesFreshNonces) {
  const Key256 key = *RandomKey();
  const std::string text = "shares of b_u and s_u^SK";
  auto sealed = AeadSeal(key, text, "round 7, 3 -> 5");
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  EXPECT_EQ(sealed->size(), text.size() + kAeadOverheadBytes);
  auto opened = AeadOpen(key, *sealed, "round 7, 3 -> 5");
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(std::string(opened->begin(), opened->end()), text);
  // Same key and message, different nonce: different ciphertexts.
  EXPECT_NE(*AeadSeal(key, text, "round 7, 3 -> 5"), *sealed);
  // An empty plaintext still authenticates its associated data.
  auto empty = AeadSeal(key, ByteView(), "header");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->size(), kAeadOverheadBytes);
  EXPECT_TRUE(AeadOpen(key, *empty, "header").ok());
  EXPECT_EQ(AeadOpen(key, *empty, "other").status().code(), StatusCode::kDataLoss);
}

TEST(CryptoTest, AeadRejectsEveryTamperingWithAClearError) {
  const Key256 key = *RandomKey();
  const Bytes sealed = *AeadSeal(key, "secret share", "aad");
  for (size_t i = 0; i < sealed.size(); ++i) {  // nonce, ciphertext and tag bytes
    Bytes bad = sealed;
    bad[i] ^= 0x01;
    auto opened = AeadOpen(key, bad, "aad");
    ASSERT_FALSE(opened.ok()) << "flipped byte " << i;
    EXPECT_EQ(opened.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(opened.status().message().find("tampered"), std::string::npos);
  }
  EXPECT_EQ(AeadOpen(key, sealed, "aad!").status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(AeadOpen(*RandomKey(), sealed, "aad").status().code(), StatusCode::kDataLoss);
  const Bytes truncated(sealed.begin(), sealed.begin() + kAeadOverheadBytes - 1);
  EXPECT_EQ(AeadOpen(key, truncated, "aad").status().code(), StatusCode::kInvalidArgument);
}

// ---- Mask generator ----

TEST(CryptoTest, MaskStreamIsAes256CtrWithZeroCounterReadLittleEndian) {
  // AES-256 under the all-zero key of the counter blocks 0 and 1: dc95c078... is the
  // well-known AES-256(0^256, 0^128); 530f8afb... is the GCM spec's test case 13 tag,
  // E(K, 0^96 || 1) for the same key.
  auto words = ExpandSeed(Key256{}, 8);
  ASSERT_TRUE(words.ok()) << words.status().ToString();
  const std::vector<uint32_t> expected = {0x78c095dc, 0x898940a2, 0x14a248ad, 0x87208492,
                                          0xfb8a0f53, 0xb93645c7, 0xf1b463a9, 0x8b73cbc4};
  EXPECT_EQ(*words, expected);
}

TEST(CryptoTest, MaskStreamIsDeterministicChunkIndependentAndSeedSpecific) {
  const Key256 seed = *RandomKey();
  const size_t n = 5000;  // spans several internal chunks
  const std::vector<uint32_t> once = *ExpandSeed(seed, n);
  EXPECT_EQ(*ExpandSeed(seed, n), once);
  // Drawing in odd-sized pieces gives the same stream.
  auto stream = MaskStream::Create(seed);
  ASSERT_TRUE(stream.ok());
  std::vector<uint32_t> pieces(n);
  size_t at = 0;
  for (size_t step : {1u, 7u, 1023u, 1025u, 2944u}) {
    ASSERT_TRUE(stream->NextWords(pieces.data() + at, step).ok());
    at += step;
  }
  ASSERT_EQ(at, n);
  EXPECT_EQ(pieces, once);
  // A seed differing in its last bit (no truncation) gives an unrelated stream.
  Key256 other = seed;
  other[31] ^= 1;
  const std::vector<uint32_t> different = *ExpandSeed(other, n);
  size_t equal = 0;
  for (size_t i = 0; i < n; ++i) equal += different[i] == once[i];
  EXPECT_LE(equal, 2u);
  // Roughly uniform bits: 160,000 bits, mean within 5 standard deviations of 1/2.
  size_t ones = 0;
  for (uint32_t w : once) ones += std::bitset<32>(w).count();
  EXPECT_NEAR(static_cast<double>(ones) / (32.0 * n), 0.5, 5 * 0.5 / std::sqrt(32.0 * n));
}

TEST(CryptoTest, AddSeedStreamAddsAndSubtractsTheStreamModulo2To32) {
  const Key256 seed = *RandomKey();
  std::vector<uint32_t> acc = {0, 1, 0xffffffffu, 12345, 0x80000000u};
  const std::vector<uint32_t> original = acc;
  const std::vector<uint32_t> stream = *ExpandSeed(seed, acc.size());
  ASSERT_TRUE(AddSeedStream(seed, /*subtract=*/false, acc.data(), acc.size()).ok());
  for (size_t i = 0; i < acc.size(); ++i) EXPECT_EQ(acc[i], uint32_t(original[i] + stream[i]));
  ASSERT_TRUE(AddSeedStream(seed, /*subtract=*/true, acc.data(), acc.size()).ok());
  EXPECT_EQ(acc, original);
}

TEST(CryptoTest, RandomBytesAreFreshAndOfTheRequestedSize) {
  auto a = RandomBytes(32);
  auto b = RandomBytes(32);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->size(), 32u);
  EXPECT_NE(*a, *b);
  EXPECT_TRUE(RandomBytes(0)->empty());
  std::set<Key256> keys;
  for (int i = 0; i < 64; ++i) keys.insert(*RandomKey());
  EXPECT_EQ(keys.size(), 64u);
}

}  // namespace
}  // namespace cleave::crypto
