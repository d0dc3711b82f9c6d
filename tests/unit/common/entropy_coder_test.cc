#include "common/entropy_coder.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>

#include "unit/common/entropy_test_util.h"

namespace cleave::entropy_testing {
namespace {

using ::testing::HasSubstr;

// ---- Round trips and size ----

TEST(EntropyCoderTest, RoundTripsRandomAndSkewedData) {
  for (EntropyTermination termination : kEntropyTerminations) {
    for (uint32_t alphabet : {2u, 16u, 256u}) {
      // 4 channels of 1000; per-element tables of 256 symbols are near the size limit.
      const uint32_t elements = 4000;
      auto options = FitOptions(alphabet, 4, elements);
      options.termination = termination;
      for (ContextKind kind :
           {ContextKind::kShared, ContextKind::kPerChannel, ContextKind::kPerElement}) {
        const EntropyModel model =
            FitOrFail(SkewedSymbols(elements * 3, alphabet, alphabet), options, kind);
        for (size_t length : {0, 1, 2, 3, 5, 8, 49, 98, 255, 1000, 3999, 4000}) {
          for (const auto& symbols : {SkewedSymbols(length, alphabet, 7 + length),
                                      UniformSymbols(length, alphabet, 11 + length)}) {
            SCOPED_TRACE(std::to_string(alphabet) + " symbols, length " + std::to_string(length) +
                         ", " + ContextKindName(kind) + ", " + EntropyTerminationName(termination));
            const std::string bytes = EncodeOrFail(model, symbols);
            auto decoded = EntropyDecode(model, bytes, length);
            ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
            EXPECT_EQ(*decoded, symbols);
          }
        }
      }
    }
  }
}

// The extremes of a table: one symbol takes almost all of 2^precision, the others 1 each.
// Coding only the likely symbol drives the interval's low end into long runs of 0xFF bytes
// and carries; coding only the unlikely ones emits the most bytes a symbol.
TEST(EntropyCoderTest, RoundTripsExtremeTables) {
  for (EntropyTermination termination : kEntropyTerminations) {
    for (uint32_t precision : {8u, 12u, 16u}) {
      for (uint32_t alphabet : {2u, 16u, 256u}) {
        std::vector<uint32_t> frequencies(alphabet, 1);
        frequencies[alphabet - 1] = (1u << precision) - (alphabet - 1);
        auto model = EntropyModel::Create(alphabet, precision, ContextKind::kShared, 1, 5000,
                                          frequencies, termination);
        ASSERT_TRUE(model.ok()) << model.status().ToString();
        std::mt19937 rng(precision * 1000 + alphabet);
        for (int trial = 0; trial < 30; ++trial) {
          std::vector<uint8_t> symbols(1 + rng() % 5000);
          const uint32_t mode = trial % 3;  // all likely, all unlikely, mixed
          for (uint8_t& s : symbols) {
            const bool likely = mode == 0 || (mode == 2 && rng() % 8 != 0);
            s = static_cast<uint8_t>(likely ? alphabet - 1 : rng() % (alphabet - 1));
          }
          const std::string bytes = EncodeOrFail(*model, symbols);
          auto decoded = EntropyDecode(*model, bytes, symbols.size());
          ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
          EXPECT_EQ(*decoded, symbols);
          // Information content + the coder's rounding (< 2^-8 of the range a symbol) + the
          // termination's at most 2 bytes.
          EXPECT_LE(bytes.size(), model->CostBits(symbols.data(), symbols.size()) / 8 +
                                      symbols.size() * std::log2(1 + 1.0 / 256) / 8 + 2);
        }
      }
    }
  }
}

TEST(EntropyCoderTest, SizeIsWithinTwoBytesOfTheEmpiricalEntropy) {
  for (EntropyTermination termination : kEntropyTerminations) {
    for (uint32_t alphabet : {2u, 16u, 256u}) {
      const auto symbols = SkewedSymbols(1000, alphabet, 3);
      std::map<uint8_t, double> histogram;
      for (uint8_t s : symbols) histogram[s] += 1;
      double entropy_bits = 0;
      for (const auto& [symbol, n] : histogram) entropy_bits -= n * std::log2(n / symbols.size());
      auto options = FitOptions(alphabet, 1, 1000);
      options.smoothing = 0;
      options.precision = 16;
      options.termination = termination;
      const EntropyModel model = FitOrFail(symbols, options, ContextKind::kShared);
      const std::string bytes = EncodeOrFail(model, symbols);
      SCOPED_TRACE(std::to_string(alphabet) + " symbols, " + EntropyTerminationName(termination));
      EXPECT_LE(bytes.size(), entropy_bits / 8 + 2);
      EXPECT_LT(bytes.size(), symbols.size() * std::log2(alphabet) / 8);  // it does compress
    }
  }
}

// What a termination costs on [2,7,7] u4 messages: bytes written minus the information
// content -log2 P / 8 (the figures the header quotes).
TEST(EntropyCoderTest, TerminationOverheadIsAboutOneByteAtMost) {
  for (EntropyTermination termination : kEntropyTerminations) {
    const EntropyModel model = BottleneckModel(termination);
    const auto messages = SplitMessages(BottleneckSamples(4000, 77));
    double sum = 0;
    double worst = -1;
    for (const auto& symbols : messages) {
      const double overhead = EncodeOrFail(model, symbols).size() -
                              model.CostBits(symbols.data(), kBottleneckElements) / 8;
      sum += overhead;
      worst = std::max(worst, overhead);
    }
    const double mean = sum / messages.size();
    std::printf(
        "%s termination: %.3f bytes above the information content on average, %.3f "
        "at worst\n",
        EntropyTerminationName(termination), mean, worst);
    // The coder's rounding adds < 98 * log2(1 + 2^-8) bits = 0.07 bytes to the worst case.
    if (termination == EntropyTermination::kPrefixFree) {
      EXPECT_LT(mean, 1.0);
      EXPECT_LE(worst, 2.07);
    } else {
      EXPECT_LT(mean, 0.5);
      EXPECT_LE(worst, 1.07);
    }
  }
}

TEST(EntropyCoderTest, NothingCodesToNoBytes) {
  for (EntropyTermination termination : kEntropyTerminations) {
    const EntropyModel model = BottleneckModel(termination);
    EXPECT_EQ(EncodeOrFail(model, {}), "");
    auto decoded = EntropyDecode(model, "", 0);
    ASSERT_TRUE(decoded.ok());
    EXPECT_TRUE(decoded->empty());
    EXPECT_FALSE(EntropyDecode(model, "\x01", 0).ok());
    EXPECT_FALSE(EntropyDecode(model, std::string(1, '\0'), 0).ok());
  }
}

// ---- Hostile input ----

TEST(EntropyCoderTest, RejectsCountsBeyondTheModel) {
  const EntropyModel model = BottleneckModel();
  const std::vector<uint8_t> symbols(kBottleneckElements + 1, 0);
  ExpectEntropyInvalid(EntropyEncode(model, symbols).status(),
                       "cannot entropy-code 99 symbols with a model of 98 elements");
  ExpectEntropyInvalid(EntropyDecode(model, "abc", kBottleneckElements + 1).status(),
                       "cannot entropy-decode 99 symbols with a model of 98 elements");
  ExpectEntropyInvalid(EntropyDecode(model, "abc", SIZE_MAX).status(),
                       "with a model of 98 elements");
}

TEST(EntropyCoderTest, RejectsSymbolsOutsideTheAlphabet) {
  const EntropyModel model = BottleneckModel();
  std::vector<uint8_t> symbols(10, 3);
  symbols[6] = 16;
  ExpectEntropyInvalid(EntropyEncode(model, symbols).status(),
                       "symbol 16 at element 6 is outside the model's alphabet of 16");
}

// Prefix-free: no valid encoding is a prefix of another, so every truncation and every
// extension of a valid encoding is refused.
TEST(EntropyCoderTest, PrefixFreeRejectsEveryTruncationAndTrailingByte) {
  const EntropyModel model = BottleneckModel(EntropyTermination::kPrefixFree);
  for (const auto& symbols : SplitMessages(BottleneckSamples(300, 5))) {
    const std::string bytes = EncodeOrFail(model, symbols);
    for (size_t size = 0; size < bytes.size(); ++size) {
      EXPECT_FALSE(EntropyDecode(model, bytes.substr(0, size), kBottleneckElements).ok());
    }
    for (int extra = 0; extra < 256; ++extra) {
      EXPECT_FALSE(
          EntropyDecode(model, bytes + static_cast<char>(extra), kBottleneckElements).ok());
    }
    ExpectEntropyInvalid(
        EntropyDecode(model, bytes + "\x01\x02\x03\x04\x05", kBottleneckElements).status(),
        "bytes after the end of the encoding");
  }
}

// Minimal: a truncated or extended encoding is refused unless it happens to be exactly the
// encoding of other symbols (never of the original ones). Counts how often that happens.
TEST(EntropyCoderTest, MinimalRejectsGarbageOrDecodesOnlyAnotherEncoding) {
  const EntropyModel model = BottleneckModel(EntropyTermination::kMinimal);
  int extended = 0;
  int extended_accepted = 0;
  int truncated = 0;
  int truncated_accepted = 0;
  for (const auto& symbols : SplitMessages(BottleneckSamples(300, 6))) {
    const std::string bytes = EncodeOrFail(model, symbols);
    ExpectEntropyInvalid(EntropyDecode(model, bytes + '\0', kBottleneckElements).status(),
                         "ends in a zero byte");
    ExpectEntropyInvalid(
        EntropyDecode(model, bytes + "\x01\x02\x03\x04\x05", kBottleneckElements).status(),
        "bytes after the end of the encoding");
    const auto check = [&](const std::string& damaged, int* accepted) {
      auto decoded = EntropyDecode(model, damaged, kBottleneckElements);
      if (!decoded.ok()) return;
      ++*accepted;
      EXPECT_NE(*decoded, symbols);
      EXPECT_EQ(EncodeOrFail(model, *decoded), damaged);
    };
    for (int extra = 1; extra < 256; ++extra, ++extended) {
      check(bytes + static_cast<char>(extra), &extended_accepted);
    }
    for (size_t size = 0; size < bytes.size(); ++size, ++truncated) {
      check(bytes.substr(0, size), &truncated_accepted);
    }
  }
  std::printf(
      "minimal termination: %d of %d one-byte extensions and %d of %d truncations "
      "decode (as other symbols)\n",
      extended_accepted, extended, truncated_accepted, truncated);
}

// Decoding with another model's tables refuses some inputs; the rest decode to other symbols
// without complaint, which is why peers compare fingerprints.
TEST(EntropyCoderTest, WrongModelIsCaughtByTheFingerprint) {
  for (EntropyTermination termination : kEntropyTerminations) {
    const EntropyModel right = BottleneckModel(termination);
    std::vector<uint8_t> other;  // the same layout fitted to other data: channel peaks swapped
    for (uint32_t seed = 0; seed < 300; ++seed) {
      for (uint32_t peak : {9u, 2u}) {
        const auto channel = SkewedSymbols(kBottleneckElements / kBottleneckChannels, 16,
                                           900 + seed * 2 + peak, peak);
        other.insert(other.end(), channel.begin(), channel.end());
      }
    }
    auto options = FitOptions(16, kBottleneckChannels, kBottleneckElements);
    options.termination = termination;
    const EntropyModel wrong = FitOrFail(other, options, ContextKind::kPerChannel);
    EXPECT_NE(right.Fingerprint(), wrong.Fingerprint());

    int rejected = 0;
    const auto messages = SplitMessages(BottleneckSamples(1000, 8));
    for (const auto& symbols : messages) {
      const std::string bytes = EncodeOrFail(right, symbols);
      auto decoded = EntropyDecode(wrong, bytes, kBottleneckElements);
      if (!decoded.ok()) {
        ++rejected;
        continue;
      }
      EXPECT_NE(*decoded, symbols);
      EXPECT_EQ(EncodeOrFail(wrong, *decoded), bytes);
    }
    std::printf("%s termination: the wrong model refuses %d of %zu messages\n",
                EntropyTerminationName(termination), rejected, messages.size());
    EXPECT_GT(rejected, 0);
  }
}

// Random bytes either fail to decode or are exactly the encoding of what they decode to.
TEST(EntropyCoderTest, ArbitraryBytesDecodeOnlyAsTheirOwnEncoding) {
  for (EntropyTermination termination : kEntropyTerminations) {
    const EntropyModel model = BottleneckModel(termination);
    std::mt19937 rng(12);
    int accepted = 0;
    bool sliver = false;  // a value in the range that frequency rounding leaves unused
    for (int trial = 0; trial < 20000; ++trial) {
      std::string bytes(rng() % 60, '\0');
      for (char& b : bytes) b = static_cast<char>(rng());
      const size_t count = rng() % (kBottleneckElements + 1);
      auto decoded = EntropyDecode(model, bytes, count);
      if (decoded.ok()) {
        ++accepted;
        ASSERT_EQ(decoded->size(), count);
        ASSERT_EQ(EncodeOrFail(model, *decoded), bytes);
      } else {
        EXPECT_EQ(decoded.status().code(), StatusCode::kInvalidArgument);
        sliver |= decoded.status().message().find("a value no encoder writes") != std::string::npos;
      }
    }
    EXPECT_GT(accepted, 0);
    EXPECT_TRUE(sliver);
  }
}

// ---- Wire tensors <-> symbols ----

TEST(EntropyCoderPackTest, U4PacksLikeTheTensorCodecForOddAndEvenCounts) {
  for (uint32_t count : {0u, 1u, 2u, 3u, 49u, 97u, 98u}) {
    const auto symbols = UniformSymbols(count, 16, count);
    auto packed = PackSymbols(wire::DType::kUInt4, symbols);
    ASSERT_TRUE(packed.ok()) << packed.status().ToString();
    EXPECT_EQ(packed->size(), (count + 1) / 2);
    // The tensor codec quantizing the same values with scale 1, zero point 0 packs the same.
    if (count > 0) {
      const std::vector<float> values(symbols.begin(), symbols.end());
      const wire::QuantParams unit{{1.0f}, {0}};
      auto tensor = wire::EncodeTensor(values.data(), {1, count}, wire::DType::kUInt4, 0, &unit);
      ASSERT_TRUE(tensor.ok()) << tensor.status().ToString();
      EXPECT_EQ(tensor->data, *packed);
    }
    auto unpacked = UnpackSymbols(wire::DType::kUInt4, *packed, count);
    ASSERT_TRUE(unpacked.ok()) << unpacked.status().ToString();
    EXPECT_EQ(*unpacked, symbols);
  }
  EXPECT_EQ(*PackSymbols(wire::DType::kUInt4, {1, 2, 3}), std::string("\x21\x03", 2));
}

TEST(EntropyCoderPackTest, U8IsOneSymbolAByte) {
  const auto symbols = UniformSymbols(77, 256, 2);
  auto packed = PackSymbols(wire::DType::kUInt8, symbols);
  ASSERT_TRUE(packed.ok());
  EXPECT_EQ(*packed, std::string(symbols.begin(), symbols.end()));
  EXPECT_EQ(*UnpackSymbols(wire::DType::kUInt8, *packed, 77), symbols);
  EXPECT_EQ(SymbolAlphabet(wire::DType::kUInt8), 256u);
  EXPECT_EQ(SymbolAlphabet(wire::DType::kUInt4), 16u);
  EXPECT_EQ(SymbolAlphabet(wire::DType::kFloat32), 0u);
}

TEST(EntropyCoderPackTest, RejectsWhatDoesNotFit) {
  ExpectEntropyInvalid(UnpackSymbols(wire::DType::kFloat32, "abcd", 1).status(),
                       "only u8 and u4 tensors hold symbols, not f32");
  ExpectEntropyInvalid(UnpackSymbols(wire::DType::kUInt4, "ab", 5).status(),
                       "5 u4 values take 3 bytes, got 2");
  ExpectEntropyInvalid(UnpackSymbols(wire::DType::kUInt4, "\x21\x13", 3).status(),
                       "padding nibble (high half of the last byte) must be zero, got 1");
  ExpectEntropyInvalid(
      UnpackSymbols(wire::DType::kUInt8, "", wire::kMaxTensorElements + 1).status(),
      "exceed the tensor element limit");
  ExpectEntropyInvalid(PackSymbols(wire::DType::kUInt4, {1, 16}).status(),
                       "symbol 16 at element 1 does not fit in u4");
  ExpectEntropyInvalid(PackSymbols(wire::DType::kFloat16, {1}).status(),
                       "only u8 and u4 tensors hold symbols, not f16");
}

// A quantized bottleneck end to end: EncodeTensor -> symbols -> entropy code -> symbols ->
// the same packed bytes.
TEST(EntropyCoderPackTest, QuantizedTensorRoundTrip) {
  const EntropyModel model = BottleneckModel();
  std::vector<float> values(kBottleneckElements);
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& v : values) v = std::max(0.0f, dist(rng));  // ReLU features
  auto tensor = wire::EncodeTensor(values.data(), {1, 2, 7, 7}, wire::DType::kUInt4, 1);
  ASSERT_TRUE(tensor.ok());
  auto symbols = UnpackSymbols(tensor->dtype, tensor->data, kBottleneckElements);
  ASSERT_TRUE(symbols.ok());
  const std::string coded = EncodeOrFail(model, *symbols);
  auto decoded = EntropyDecode(model, coded, kBottleneckElements);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*PackSymbols(wire::DType::kUInt4, *decoded), tensor->data);
}

}  // namespace
}  // namespace cleave::entropy_testing
