// kPerElementPredicted: the causal context (common/entropy_predictor.h), its coding, fitting,
// choice and serialized forms.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/entropy_predictor.h"
#include "unit/common/entropy_test_util.h"

namespace cleave::entropy_testing {
namespace {

using ::testing::HasSubstr;

constexpr uint32_t kHeight = 7;
constexpr uint32_t kWidth = 7;

// [2,7,7] samples with the spatial and cross-channel structure of real features: channel 0 a
// random walk in coding order (each symbol its left neighbour, or the one above in the first
// column, plus -1/0/+1), channel 1 channel 0 at the same position plus -1/0/+1.
std::vector<uint8_t> NeighbourSamples(size_t samples, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out;
  out.reserve(samples * kBottleneckElements);
  const auto step = [&](int from) {
    return static_cast<uint8_t>(std::clamp(from + int(rng() % 3) - 1, 0, 15));
  };
  for (size_t n = 0; n < samples; ++n) {
    uint8_t sample[kBottleneckElements];
    for (uint32_t y = 0; y < kHeight; ++y) {
      for (uint32_t x = 0; x < kWidth; ++x) {
        const uint32_t i = y * kWidth + x;
        sample[i] =
            i == 0 ? static_cast<uint8_t>(rng() % 16) : step(sample[x > 0 ? i - 1 : i - kWidth]);
      }
    }
    for (uint32_t i = 0; i < kHeight * kWidth; ++i) {
      sample[kHeight * kWidth + i] = step(sample[i]);
    }
    out.insert(out.end(), sample, sample + kBottleneckElements);
  }
  return out;
}

EntropyFitOptions BottleneckOptions() {
  return FitOptions(16, kBottleneckChannels, kBottleneckElements);
}

EntropyModel PredictedModel(EntropyTermination termination = EntropyTermination::kPrefixFree) {
  auto options = BottleneckOptions();
  options.termination = termination;
  return FitOrFail(NeighbourSamples(2000, 1), options, ContextKind::kPerElementPredicted);
}

// A predictor of `elements` elements without taps.
EntropyPredictor FlatPredictor(uint32_t buckets, uint32_t elements) {
  EntropyPredictor predictor;
  predictor.buckets = buckets;
  predictor.elements.resize(elements);
  return predictor;
}

Result<EntropyModel> UniformPredicted(const EntropyPredictor& predictor, uint32_t alphabet = 16) {
  const auto elements = static_cast<uint32_t>(predictor.elements.size());
  std::vector<uint32_t> frequencies(size_t{elements} * predictor.buckets * alphabet,
                                    4096 / alphabet);
  return EntropyModel::Create(alphabet, 12, ContextKind::kPerElementPredicted, 1, elements,
                              frequencies, EntropyTermination::kPrefixFree, predictor);
}

// ---- The context function ----

// The header's definition worked by hand: alphabet 16, 4 buckets of 4 symbols (1024 units of
// 2^-8 each), three elements.
TEST(EntropyCoderContextTest, TableFollowsTheDefinition) {
  EntropyPredictor predictor = FlatPredictor(4, 3);
  predictor.elements[1] = {128, {{1, 256}}};             // 0.5 + s0
  predictor.elements[2] = {-512, {{1, 128}, {2, 384}}};  // -2 + 0.5 s1 + 1.5 s0
  auto model = UniformPredicted(predictor);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  EXPECT_EQ(model->table_count(), 12u);
  EXPECT_EQ(model->prediction_buckets(), 4u);
  const uint8_t a[] = {5, 9, 0};
  EXPECT_EQ(model->TableOf(0, a), 0u);          // no taps, bias 0: bucket 0
  EXPECT_EQ(model->TableOf(1, a), 1 * 4 + 1u);  // 5.5 symbols: bucket 1 ([4, 8))
  EXPECT_EQ(model->TableOf(2, a), 2 * 4 + 2u);  // -2 + 4.5 + 7.5 = 10: bucket 2 ([8, 12))
  const uint8_t low[] = {0, 0, 0};
  EXPECT_EQ(model->TableOf(2, low), 2 * 4 + 0u);  // -2 clamps to the first bucket
  const uint8_t high[] = {15, 15, 0};
  EXPECT_EQ(model->TableOf(2, high), 2 * 4 + 3u);  // 28 clamps to the last
  const uint8_t edge[] = {3, 0, 0};
  EXPECT_EQ(model->TableOf(1, edge), 1 * 4 + 0u);  // 3.5: still [0, 4)
  const uint8_t next[] = {4, 0, 0};
  EXPECT_EQ(model->TableOf(1, next), 1 * 4 + 1u);  // 4.5

  // Extreme weights and biases stay exact (64-bit accumulation) and clamp.
  EntropyPredictor extreme = FlatPredictor(2, 65);
  for (uint32_t d = 1; d <= kMaxEntropyPredictionTaps; ++d) {
    extreme.elements[64].taps.push_back({d, d % 2 == 0 ? INT32_MAX : INT32_MIN});
  }
  extreme.elements[64].bias = INT32_MAX;
  auto big = UniformPredicted(extreme, 256);
  ASSERT_TRUE(big.ok()) << big.status().ToString();
  std::vector<uint8_t> symbols(65, 255);
  // acc = 2^31 - 1 + 32 * 255 * (2^31 - 1) - 32 * 255 * 2^31 = 2^31 - 1 - 32 * 255: the last
  // bucket.
  EXPECT_EQ(big->TableOf(64, symbols.data()), 64 * 2 + 1u);
  std::fill(symbols.begin(), symbols.end(), 0);
  for (uint32_t d = 1; d <= 64; d += 2) symbols[64 - d] = 255;  // only the INT32_MIN taps: < 0
  EXPECT_EQ(big->TableOf(64, symbols.data()), 64 * 2 + 0u);
}

// ---- Coding ----

TEST(EntropyCoderContextTest, RoundTripsEveryLengthAndAlphabet) {
  for (EntropyTermination termination : kEntropyTerminations) {
    for (uint32_t alphabet : {2u, 16u, 256u}) {
      // 2 channels of 49 (u8: 98 x 32 x 256 frequencies is within the limit).
      auto options = BottleneckOptions();
      options.alphabet = alphabet;
      options.termination = termination;
      std::vector<uint8_t> training = NeighbourSamples(300, alphabet);
      for (uint8_t& s : training) s = static_cast<uint8_t>(s * (alphabet - 1) / 15);
      const EntropyModel model = FitOrFail(training, options, ContextKind::kPerElementPredicted);
      for (size_t length : {0, 1, 2, 3, 7, 8, 48, 49, 50, 97, 98}) {
        std::vector<uint8_t> structured(training.begin() + 98 * (length % 7),
                                        training.begin() + 98 * (length % 7) + length);
        for (const auto& symbols : {structured, UniformSymbols(length, alphabet, 5 + length),
                                    SkewedSymbols(length, alphabet, 9 + length, alphabet / 2)}) {
          SCOPED_TRACE(std::to_string(alphabet) + " symbols, length " + std::to_string(length) +
                       ", " + EntropyTerminationName(termination));
          const std::string bytes = EncodeOrFail(model, symbols);
          auto decoded = EntropyDecode(model, bytes, length);
          ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
          EXPECT_EQ(*decoded, symbols);
          // Information content (which CostBits computes with the same contexts) + rounding +
          // the termination's at most 2 bytes.
          EXPECT_LE(bytes.size(), model.CostBits(symbols.data(), symbols.size()) / 8 +
                                      symbols.size() * std::log2(1 + 1.0 / 256) / 8 + 2);
        }
      }
    }
  }
}

// Predictable data codes in far fewer bytes than per-element tables manage.
TEST(EntropyCoderContextTest, NeighbourContextsCodeCorrelatedDataShorter) {
  const auto training = NeighbourSamples(3000, 2);
  const auto test = SplitMessages(NeighbourSamples(500, 3));
  const EntropyModel per_element =
      FitOrFail(training, BottleneckOptions(), ContextKind::kPerElement);
  const EntropyModel predicted =
      FitOrFail(training, BottleneckOptions(), ContextKind::kPerElementPredicted);
  double element_bytes = 0;
  double predicted_bytes = 0;
  for (const auto& symbols : test) {
    element_bytes += EncodeOrFail(per_element, symbols).size();
    predicted_bytes += EncodeOrFail(predicted, symbols).size();
  }
  element_bytes /= test.size();
  predicted_bytes /= test.size();
  std::printf("neighbour-correlated [2,7,7]: %.2f bytes per element, %.2f predicted\n",
              element_bytes, predicted_bytes);
  // Each symbol is its neighbour +-1: log2(3) bits, ~19 bytes; position alone knows little.
  EXPECT_LT(predicted_bytes, 22);
  EXPECT_GT(element_bytes, 35);
}

// Decoding is hostile-input safe: bytes either fail or are exactly the encoding of what they
// decode to; prefix-free encodings refuse every truncation and extension.
TEST(EntropyCoderContextTest, HostileBytesDecodeOnlyAsTheirOwnEncoding) {
  for (EntropyTermination termination : kEntropyTerminations) {
    const EntropyModel model = PredictedModel(termination);
    std::mt19937 rng(21);
    int accepted = 0;
    for (int trial = 0; trial < 20000; ++trial) {
      std::string bytes(rng() % 40, '\0');
      for (char& b : bytes) b = static_cast<char>(rng());
      const size_t count = rng() % (kBottleneckElements + 1);
      auto decoded = EntropyDecode(model, bytes, count);
      if (!decoded.ok()) {
        EXPECT_EQ(decoded.status().code(), StatusCode::kInvalidArgument);
        continue;
      }
      ++accepted;
      ASSERT_EQ(decoded->size(), count);
      ASSERT_EQ(EncodeOrFail(model, *decoded), bytes);
    }
    EXPECT_GT(accepted, 0);
    ExpectEntropyInvalid(EntropyDecode(model, "abc", kBottleneckElements + 1).status(),
                         "cannot entropy-decode 99 symbols with a model of 98 elements");
  }
  const EntropyModel model = PredictedModel(EntropyTermination::kPrefixFree);
  for (const auto& symbols : SplitMessages(NeighbourSamples(100, 4))) {
    const std::string bytes = EncodeOrFail(model, symbols);
    for (size_t size = 0; size < bytes.size(); ++size) {
      EXPECT_FALSE(EntropyDecode(model, bytes.substr(0, size), kBottleneckElements).ok());
    }
    for (int extra = 0; extra < 256; ++extra) {
      EXPECT_FALSE(
          EntropyDecode(model, bytes + static_cast<char>(extra), kBottleneckElements).ok());
    }
  }
}

// ---- Fitting and choosing ----

// The fit finds the tap that carries the information and weighs it ~1.
TEST(EntropyCoderContextTest, FitFindsTheNeighbourAndTheOtherChannel) {
  // [2, 1, 4]: channel 0 a random walk along the row, channel 1 a copy of channel 0.
  std::mt19937 rng(5);
  std::vector<uint8_t> samples;
  for (int n = 0; n < 4000; ++n) {
    uint8_t row[8];
    row[0] = static_cast<uint8_t>(rng() % 16);
    for (int x = 1; x < 4; ++x) {
      row[x] = static_cast<uint8_t>(std::clamp(row[x - 1] + int(rng() % 3) - 1, 0, 15));
    }
    std::copy(row, row + 4, row + 4);
    samples.insert(samples.end(), row, row + 8);
  }
  auto options = FitOptions(16, 2, 8);
  const EntropyModel model = FitOrFail(samples, options, ContextKind::kPerElementPredicted);
  const EntropyPredictor predictor = model.Predictor();
  ASSERT_EQ(predictor.elements.size(), 8u);
  EXPECT_TRUE(predictor.elements[0].taps.empty());
  for (uint32_t i = 1; i < 8; ++i) {
    SCOPED_TRACE("element " + std::to_string(i));
    const auto& taps = predictor.elements[i].taps;
    ASSERT_FALSE(taps.empty());
    const auto strongest = *std::max_element(
        taps.begin(), taps.end(),
        [](const auto& a, const auto& b) { return std::abs(a.weight) < std::abs(b.weight); });
    EXPECT_EQ(strongest.distance, i < 4 ? 1u : 4u);
    EXPECT_NEAR(strongest.weight, 256, i < 4 ? 40 : 2);
  }
  // Channel 1 costs almost nothing: each symbol is known.
  double channel1_bits = 0;
  const auto messages = std::vector<uint8_t>(samples.begin(), samples.begin() + 8 * 100);
  for (size_t n = 0; n < 100; ++n) {
    channel1_bits +=
        model.CostBits(messages.data() + 8 * n, 8) - model.CostBits(messages.data() + 8 * n, 4);
  }
  EXPECT_LT(channel1_bits / 100, 0.5);
}

TEST(EntropyCoderContextTest, ChoosesPredictedTablesForCorrelatedData) {
  auto choice = ChooseEntropyModel(NeighbourSamples(2000, 6), BottleneckOptions());
  ASSERT_TRUE(choice.ok()) << choice.status().ToString();
  EXPECT_EQ(choice->model.kind(), ContextKind::kPerElementPredicted);
  ASSERT_EQ(choice->candidates.size(), 4u);
  EXPECT_EQ(choice->candidates[3].kind, ContextKind::kPerElementPredicted);
  for (const auto& c : choice->candidates) {
    std::printf("%s: %.2f held-out bytes a sample\n", ContextKindName(c.kind),
                double(c.heldout_bytes) / choice->heldout_samples);
  }
  // The chosen model is refitted on every sample.
  EXPECT_EQ(choice->model.Serialize(), FitOrFail(NeighbourSamples(2000, 6), BottleneckOptions(),
                                                 ContextKind::kPerElementPredicted)
                                           .Serialize());
}

// Symbols independent of each other: predictions carry nothing, the finer tables only overfit.
TEST(EntropyCoderContextTest, DoesNotChoosePredictedTablesForIndependentData) {
  for (uint32_t seed : {7u, 8u, 9u}) {
    auto choice = ChooseEntropyModel(BottleneckSamples(2000, seed), BottleneckOptions());
    ASSERT_TRUE(choice.ok()) << choice.status().ToString();
    EXPECT_EQ(choice->model.kind(), ContextKind::kPerChannel);
    ASSERT_EQ(choice->candidates.size(), 4u);
    EXPECT_GT(choice->candidates[3].heldout_bytes, choice->candidates[1].heldout_bytes);
  }
  // Nor when the one table per element is what the data needs (positional peaks, no
  // dependence between elements).
  std::vector<uint8_t> positional;
  for (uint32_t n = 0; n < 1000; ++n) {
    for (uint32_t i = 0; i < kBottleneckElements; ++i) {
      positional.push_back(SkewedSymbols(1, 16, n * kBottleneckElements + i, (i * 5) % 16)[0]);
    }
  }
  auto choice = ChooseEntropyModel(positional, BottleneckOptions());
  ASSERT_TRUE(choice.ok()) << choice.status().ToString();
  EXPECT_EQ(choice->model.kind(), ContextKind::kPerElement);
  ASSERT_EQ(choice->candidates.size(), 4u);
  EXPECT_GT(choice->candidates[3].heldout_bytes, choice->candidates[2].heldout_bytes);
}

TEST(EntropyCoderContextTest, ChoiceSkipsPredictionWhenOffOrTooBig) {
  auto options = BottleneckOptions();
  options.prediction_taps = 0;
  auto off = ChooseEntropyModel(NeighbourSamples(50, 10), options);
  ASSERT_TRUE(off.ok()) << off.status().ToString();
  EXPECT_EQ(off->candidates.size(), 3u);
  // 98 elements x 256 buckets x 256 symbols: over kMaxEntropyTableEntries.
  options = FitOptions(256, kBottleneckChannels, kBottleneckElements);
  options.prediction_buckets = 256;
  auto big = ChooseEntropyModel(UniformSymbols(98 * 10, 256, 11), options);
  ASSERT_TRUE(big.ok()) << big.status().ToString();
  EXPECT_EQ(big->candidates.size(), 3u);
  // One element: nothing to predict from.
  auto one = ChooseEntropyModel(UniformSymbols(10, 16, 12), FitOptions(16, 1, 1));
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  EXPECT_EQ(one->candidates.size(), 1u);
}

TEST(EntropyCoderContextTest, FitRejectsBadPredictionOptions) {
  const auto samples = NeighbourSamples(10, 13);
  auto options = BottleneckOptions();
  options.prediction_taps = kMaxEntropyPredictionTaps + 1;
  ExpectEntropyInvalid(
      FitEntropyModel(samples, options, ContextKind::kPerElementPredicted).status(),
      "prediction_taps 65 exceeds the limit of 64");
  ExpectEntropyInvalid(ChooseEntropyModel(samples, options).status(),
                       "prediction_taps 65 exceeds the limit of 64");
  options = BottleneckOptions();
  options.prediction_backoff = -1;
  ExpectEntropyInvalid(
      FitEntropyModel(samples, options, ContextKind::kPerElementPredicted).status(),
      "prediction_backoff must be finite and >= 0");
  options.prediction_backoff = std::nan("");
  ExpectEntropyInvalid(ChooseEntropyModel(samples, options).status(),
                       "prediction_backoff must be finite and >= 0");
  options = BottleneckOptions();
  options.prediction_buckets = 1;
  ExpectEntropyInvalid(
      FitEntropyModel(samples, options, ContextKind::kPerElementPredicted).status(),
      "prediction buckets 1 are outside [2, 256]");
  ExpectEntropyInvalid(ChooseEntropyModel(samples, options).status(),
                       "prediction_buckets 1 are outside [2, 256]");
  // The options of a kind not fitted are not looked at.
  EXPECT_TRUE(FitEntropyModel(samples, options, ContextKind::kPerElement).ok());
}

TEST(EntropyCoderContextTest, NoSamplesGiveUniformTablesWithoutTaps) {
  const EntropyModel model = FitOrFail({}, BottleneckOptions(), ContextKind::kPerElementPredicted);
  EXPECT_EQ(model.table_count(), 98u * 32);
  EXPECT_EQ(model.Frequencies(), std::vector<uint32_t>(98 * 32 * 16, 256));
  for (const auto& element : model.Predictor().elements) EXPECT_TRUE(element.taps.empty());
}

// ---- Serialized forms ----

// A two-element predicted model small enough to spell out.
EntropyModel TinyPredictedModel() {
  EntropyPredictor predictor = FlatPredictor(2, 2);
  predictor.elements[1] = {-1, {{1, 256}}};
  auto model = EntropyModel::Create(2, 8, ContextKind::kPerElementPredicted, 1, 2,
                                    std::vector<uint32_t>(8, 128), EntropyTermination::kPrefixFree,
                                    predictor);
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  return std::move(model).value();
}

TEST(EntropyCoderContextTest, SerializedFormIsStable) {
  // "CEM", version 1, alphabet 2, precision 8, kind 3, prefix-free, 1 channel, 2 elements,
  // 2 buckets; element 0: bias 0, no taps; element 1: bias -1 (zigzag 1), 1 tap at distance 1
  // of weight 256 (zigzag 512: 80 04); 8 frequencies of 128 (80 01).
  std::string expected("CEM\x01\x02\x08\x03\x00\x01\x02\x02\x00\x00\x01\x01\x01\x80\x04", 18);
  for (int i = 0; i < 8; ++i) expected += std::string("\x80\x01", 2);
  EXPECT_EQ(TinyPredictedModel().Serialize(), expected);
  EXPECT_EQ(TinyPredictedModel().FingerprintHex(), "db62903a");
}

TEST(EntropyCoderContextTest, SerializeAndJsonRoundTrip) {
  const EntropyModel model = PredictedModel(EntropyTermination::kMinimal);
  auto parsed = EntropyModel::Parse(model.Serialize());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->Serialize(), model.Serialize());
  EXPECT_EQ(parsed->Predictor(), model.Predictor());
  EXPECT_EQ(parsed->kind(), ContextKind::kPerElementPredicted);
  const nlohmann::json json = nlohmann::json::parse(model.ToJson().dump());
  EXPECT_EQ(json.at("context"), "per_element_predicted");
  EXPECT_EQ(json.at("predictor").at("buckets"), 32);
  EXPECT_EQ(json.at("predictor").at("elements").size(), 98u);
  auto from_json = EntropyModel::FromJson(json);
  ASSERT_TRUE(from_json.ok()) << from_json.status().ToString();
  EXPECT_EQ(from_json->Serialize(), model.Serialize());
  EXPECT_EQ(from_json->Fingerprint(), model.Fingerprint());
  // The other kinds have no "predictor".
  EXPECT_FALSE(BottleneckModel().ToJson().contains("predictor"));
}

TEST(EntropyCoderContextTest, PredictedBottleneckModelSize) {
  const EntropyModel model = PredictedModel();
  const uint64_t entries = uint64_t{model.table_count()} * model.alphabet();
  size_t taps = 0;
  for (const auto& element : model.Predictor().elements) taps += element.taps.size();
  std::printf(
      "[2,7,7] u4 predicted model: %llu frequencies, %zu taps, %zu bytes serialized, "
      "%zu bytes of JSON\n",
      static_cast<unsigned long long>(entries), taps, model.Serialize().size(),
      model.ToJson().dump().size());
  EXPECT_EQ(entries, 98u * 32 * 16);
  EXPECT_LE(model.Serialize().size(), entries * 2 + taps * 4 + 98 * 4 + 16);
}

TEST(EntropyCoderContextTest, CreateRejectsBadPredictors) {
  const auto create = [](const EntropyPredictor& predictor,
                         ContextKind kind = ContextKind::kPerElementPredicted) {
    const size_t tables = kind == ContextKind::kPerElementPredicted
                              ? predictor.elements.size() * predictor.buckets
                              : predictor.elements.size();
    return EntropyModel::Create(16, 12, kind, 1, 4, std::vector<uint32_t>(tables * 16, 256),
                                EntropyTermination::kPrefixFree, predictor)
        .status();
  };
  EXPECT_TRUE(create(FlatPredictor(2, 4)).ok());
  ExpectEntropyInvalid(create(FlatPredictor(1, 4)), "prediction buckets 1 are outside [2, 256]");
  ExpectEntropyInvalid(create(FlatPredictor(257, 4)),
                       "prediction buckets 257 are outside [2, 256]");
  ExpectEntropyInvalid(create(FlatPredictor(0, 0)), "prediction buckets 0 are outside");
  ExpectEntropyInvalid(create(FlatPredictor(2, 3)),
                       "predictor has 3 element predictors for 4 elements");
  EntropyPredictor p = FlatPredictor(2, 4);
  p.elements[2].taps = {{3, 1}};
  ExpectEntropyInvalid(create(p),
                       "element 2 has a tap at distance 3; only the 2 elements coded before it");
  p.elements[2].taps = {{0, 1}};
  ExpectEntropyInvalid(create(p), "element 2 has a tap at distance 0");
  p.elements[2].taps = {{2, 1}, {1, 1}};
  ExpectEntropyInvalid(create(p), "tap distances that are not strictly increasing (1 after 2)");
  p.elements[2].taps = {{1, 1}, {1, 1}};
  ExpectEntropyInvalid(create(p), "not strictly increasing (1 after 1)");
  EntropyPredictor many = FlatPredictor(2, 4);
  many.elements[3].taps.assign(kMaxEntropyPredictionTaps + 1, {1, 1});
  ExpectEntropyInvalid(create(many), "has 65 taps, more than the limit of 64");
  ExpectEntropyInvalid(create(FlatPredictor(2, 4), ContextKind::kPerElement),
                       "a per_element entropy model takes no predictor");
  ExpectEntropyInvalid(EntropyModel::Create(16, 12, ContextKind::kPerElementPredicted, 1, 4,
                                            std::vector<uint32_t>(4 * 16, 256))
                           .status(),
                       "prediction buckets 0 are outside [2, 256]");
  ExpectEntropyInvalid(
      ValidateEntropyModelLayout(16, 12, ContextKind::kShared, 1, 4, 2),
      "only per_element_predicted entropy models have prediction buckets, not shared");
  // 2^16 elements x 256 buckets x 16 symbols: over the size limit, refused before tables.
  ExpectEntropyInvalid(
      ValidateEntropyModelLayout(16, 12, ContextKind::kPerElementPredicted, 1, 1u << 16, 256),
      "entropy model has 268435456 frequencies (per_element_predicted tables of 16 symbols)");
}

// Serialized bytes of a predicted model written field by field.
std::string PredictedBytes(std::vector<uint32_t> fields) {
  std::string out("CEM\x01", 4);
  for (uint32_t value : fields) {
    while (value >= 0x80) {
      out.push_back(static_cast<char>((value & 0x7F) | 0x80));
      value >>= 7;
    }
    out.push_back(static_cast<char>(value));
  }
  return out;
}

TEST(EntropyCoderContextTest, ParseRejectsBadPredictors) {
  // alphabet 2, precision 8, predicted, prefix-free, 1 channel, 2 elements, then buckets,
  // predictors and 2 x buckets tables of {128, 128}.
  const std::vector<uint32_t> header = {2, 8, 3, 0, 1, 2};
  const auto bytes = [&](std::vector<uint32_t> rest, uint32_t tables) {
    std::vector<uint32_t> fields = header;
    fields.insert(fields.end(), rest.begin(), rest.end());
    for (uint32_t t = 0; t < tables; ++t) fields.insert(fields.end(), {128, 128});
    return PredictedBytes(fields);
  };
  ASSERT_EQ(bytes({2, 0, 0, 1, 1, 1, 512}, 4), TinyPredictedModel().Serialize());
  ASSERT_TRUE(EntropyModel::Parse(bytes({2, 0, 0, 1, 1, 1, 512}, 4)).ok());
  ExpectEntropyInvalid(EntropyModel::Parse(bytes({1, 0, 0, 0, 0}, 2)).status(),
                       "prediction buckets 1 are outside [2, 256]");
  ExpectEntropyInvalid(EntropyModel::Parse(bytes({257}, 0)).status(),
                       "prediction buckets 257 are outside [2, 256]");
  ExpectEntropyInvalid(EntropyModel::Parse(PredictedBytes(header)).status(),
                       "truncated in its prediction buckets");
  ExpectEntropyInvalid(EntropyModel::Parse(bytes({2, 0, 0}, 0)).status(),
                       "truncated: 8 frequencies and 2 predictors announced");
  ExpectEntropyInvalid(EntropyModel::Parse(bytes({2, 0, 0, 1, 65}, 4)).status(),
                       "element 1 has 65 taps, more than the limit of 64");
  ExpectEntropyInvalid(EntropyModel::Parse(bytes({2, 0, 0, 1, 20}, 4)).status(),
                       "truncated in its prediction taps");
  ExpectEntropyInvalid(EntropyModel::Parse(bytes({2, 0, 0, 1, 1, 2, 512}, 4)).status(),
                       "element 1 has a tap at distance 2");
  ExpectEntropyInvalid(EntropyModel::Parse(bytes({2, 0, 1, 1, 512, 1, 0}, 4)).status(),
                       "element 0 has a tap at distance 1");
  ExpectEntropyInvalid(EntropyModel::Parse(bytes({2, 0, 0, 1, 1, 1, 512}, 3)).status(),
                       "truncated in its frequencies");
  ExpectEntropyInvalid(
      EntropyModel::Parse(bytes({2, 0, 0, 1, 1, 1, 512}, 4) + std::string("\x01", 1)).status(),
      "1 bytes after its frequencies");
  std::string wide = bytes({2, 0, 0, 1, 1, 1}, 0) + std::string("\xFF\xFF\xFF\xFF\x1F", 5);
  for (int t = 0; t < 4; ++t) wide += std::string("\x80\x01\x80\x01", 4);
  ExpectEntropyInvalid(EntropyModel::Parse(wide).status(),
                       "prediction tap weight does not fit in 32 bits");
  // Weights and biases span the whole int32 range (zigzag).
  auto extremes =
      EntropyModel::Parse(bytes({2, 0xFFFFFFFFu, 0, 0xFFFFFFFEu, 1, 1, 0xFFFFFFFFu}, 4));
  ASSERT_TRUE(extremes.ok()) << extremes.status().ToString();
  const EntropyPredictor predictor = extremes->Predictor();
  EXPECT_EQ(predictor.elements[0].bias, INT32_MIN);
  EXPECT_EQ(predictor.elements[1].bias, INT32_MAX);
  EXPECT_EQ(predictor.elements[1].taps[0].weight, INT32_MIN);
}

TEST(EntropyCoderContextTest, FromJsonRejectsBadPredictors) {
  const nlohmann::json json = TinyPredictedModel().ToJson();
  ASSERT_TRUE(EntropyModel::FromJson(json).ok());
  // Without the fingerprint, so that each change is refused for what it is.
  nlohmann::json unsigned_json = json;
  unsigned_json.erase("fingerprint");
  const auto with = [&](const char* pointer, nlohmann::json value) {
    nlohmann::json j = unsigned_json;
    j[nlohmann::json::json_pointer(pointer)] = std::move(value);
    return EntropyModel::FromJson(j).status();
  };
  nlohmann::json no_predictor = unsigned_json;
  no_predictor.erase("predictor");
  ExpectEntropyInvalid(EntropyModel::FromJson(no_predictor).status(),
                       "of a per_element_predicted model has no \"predictor\"");
  ExpectEntropyInvalid(with("/predictor", 3), "\"predictor\" is not an object");
  ExpectEntropyInvalid(with("/predictor/buckets", "2"),
                       "has no \"buckets\" that is an unsigned 32-bit integer");
  ExpectEntropyInvalid(with("/predictor/buckets", -2),
                       "has no \"buckets\" that is an unsigned 32-bit integer");
  ExpectEntropyInvalid(with("/predictor/buckets", 1), "prediction buckets 1 are outside");
  ExpectEntropyInvalid(with("/predictor/elements", nlohmann::json::object()),
                       "has no \"elements\" array");
  ExpectEntropyInvalid(with("/predictor/elements/1", 7), "element 1 is not an object");
  ExpectEntropyInvalid(with("/predictor/elements/1/bias", 1ll << 31),
                       "element 1 has no \"bias\" that is a signed 32-bit integer");
  ExpectEntropyInvalid(with("/predictor/elements/1/bias", 0.5),
                       "element 1 has no \"bias\" that is a signed 32-bit integer");
  ExpectEntropyInvalid(with("/predictor/elements/1/taps", "1,256"),
                       "element 1 has no \"taps\" array");
  ExpectEntropyInvalid(with("/predictor/elements/1/taps/0", nlohmann::json::array({1})),
                       "element 1 has a tap that is not [distance, weight]");
  ExpectEntropyInvalid(with("/predictor/elements/1/taps/0/0", -1),
                       "element 1 has a tap that is not [distance, weight]");
  ExpectEntropyInvalid(with("/predictor/elements/1/taps/0/1", 1ll << 31),
                       "element 1 has a tap that is not [distance, weight]");
  ExpectEntropyInvalid(with("/predictor/elements/1/taps/0/0", 2),
                       "element 1 has a tap at distance 2");
  ExpectEntropyInvalid(with("/predictor/elements/2", json["predictor"]["elements"][1]),
                       "3 element predictors for 2 elements");
  nlohmann::json other = BottleneckModel().ToJson();
  other["predictor"] = json["predictor"];
  ExpectEntropyInvalid(EntropyModel::FromJson(other).status(),
                       "of a per_channel model has a \"predictor\"");
  // The fingerprint covers the predictor.
  nlohmann::json moved = json;
  moved["predictor"]["elements"][1]["taps"][0][1] = 255;
  ExpectEntropyInvalid(EntropyModel::FromJson(moved).status(), "does not match its tables");
}

}  // namespace
}  // namespace cleave::entropy_testing
