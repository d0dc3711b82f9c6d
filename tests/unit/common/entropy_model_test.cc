#include "common/entropy_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "unit/common/entropy_test_util.h"

namespace cleave::entropy_testing {
namespace {

using ::testing::HasSubstr;

// ---- The model: validation, serialization, fingerprint ----

// A two-symbol model small enough to spell out.
EntropyModel TinyModel() {
  auto model = EntropyModel::Create(2, 8, ContextKind::kShared, 1, 1, {1, 255});
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  return std::move(model).value();
}

TEST(EntropyCoderModelTest, SerializedFormIsStable) {
  // "CEM", version 1, alphabet 2, precision 8, shared, prefix-free, 1 channel, 1 element,
  // frequencies 1 and 255 (varint FF 01). Changing these bytes breaks every bundle.
  EXPECT_EQ(TinyModel().Serialize(),
            std::string("CEM\x01\x02\x08\x00\x00\x01\x01\x01\xFF\x01", 13));
  // The first 4 bytes of SHA-256 of those bytes.
  EXPECT_EQ(TinyModel().FingerprintHex(), "70c795c9");
  EXPECT_EQ(TinyModel().Fingerprint(), 0x70c795c9u);
}

TEST(EntropyCoderModelTest, SerializeParseRoundTripIsCanonical) {
  for (EntropyTermination termination : kEntropyTerminations) {
    for (ContextKind kind : {ContextKind::kShared, ContextKind::kPerChannel,
                             ContextKind::kPerElement, ContextKind::kPerElementPredicted}) {
      auto options = FitOptions(16, kBottleneckChannels, kBottleneckElements);
      options.termination = termination;
      const EntropyModel model = FitOrFail(BottleneckSamples(50, 3), options, kind);
      const std::string bytes = model.Serialize();
      auto parsed = EntropyModel::Parse(bytes);
      ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
      EXPECT_EQ(parsed->Serialize(), bytes);
      EXPECT_EQ(parsed->Fingerprint(), model.Fingerprint());
      EXPECT_EQ(parsed->Frequencies(), model.Frequencies());
      EXPECT_EQ(parsed->kind(), kind);
      EXPECT_EQ(parsed->termination(), termination);
      EXPECT_EQ(parsed->Predictor(), model.Predictor());
      EXPECT_EQ(parsed->table_count(),
                EntropyTableCount(kind, kBottleneckChannels, kBottleneckElements,
                                  model.prediction_buckets()));
    }
  }
}

TEST(EntropyCoderModelTest, PerElementBottleneckModelIsAFewKilobytes) {
  const auto samples = BottleneckSamples(2000, 4);
  const auto options = FitOptions(16, kBottleneckChannels, kBottleneckElements);
  const size_t per_element =
      FitOrFail(samples, options, ContextKind::kPerElement).Serialize().size();
  const size_t per_channel =
      FitOrFail(samples, options, ContextKind::kPerChannel).Serialize().size();
  std::printf("[2,7,7] u4 model: %zu bytes per element, %zu per channel\n", per_element,
              per_channel);
  EXPECT_LE(per_element, 98 * 16 * 2 + 16);  // at most 2 bytes a frequency at precision 12
  EXPECT_LE(per_channel, 2 * 16 * 2 + 16);
}

TEST(EntropyCoderModelTest, FingerprintsTellModelsApart) {
  std::vector<uint32_t> frequencies(16, 256);
  auto a = EntropyModel::Create(16, 12, ContextKind::kShared, 2, 98, frequencies);
  auto same = EntropyModel::Create(16, 12, ContextKind::kShared, 2, 98, frequencies);
  frequencies[0] = 255;
  frequencies[1] = 257;
  auto moved = EntropyModel::Create(16, 12, ContextKind::kShared, 2, 98, frequencies);
  auto minimal = EntropyModel::Create(16, 12, ContextKind::kShared, 2, 98,
                                      std::vector<uint32_t>(16, 256), EntropyTermination::kMinimal);
  ASSERT_TRUE(a.ok() && same.ok() && moved.ok() && minimal.ok());
  EXPECT_EQ(a->Fingerprint(), same->Fingerprint());
  EXPECT_NE(a->Fingerprint(), moved->Fingerprint());
  EXPECT_NE(a->Fingerprint(), minimal->Fingerprint());
}

TEST(EntropyCoderModelTest, CreateRejectsMalformedTables) {
  const std::vector<uint32_t> uniform16(16, 256);
  ExpectEntropyInvalid(EntropyModel::Create(1, 12, ContextKind::kShared, 1, 4, {4096}).status(),
                       "alphabet 1 is outside [2, 256]");
  ExpectEntropyInvalid(
      EntropyModel::Create(257, 12, ContextKind::kShared, 1, 4, std::vector<uint32_t>(257, 1))
          .status(),
      "alphabet 257 is outside [2, 256]");
  ExpectEntropyInvalid(EntropyModel::Create(16, 7, ContextKind::kShared, 1, 4, uniform16).status(),
                       "precision 7 bits is outside [8, 16]");
  ExpectEntropyInvalid(EntropyModel::Create(16, 17, ContextKind::kShared, 1, 4, uniform16).status(),
                       "precision 17 bits is outside [8, 16]");
  ExpectEntropyInvalid(
      EntropyModel::Create(16, 12, static_cast<ContextKind>(4), 1, 4, uniform16).status(),
      "unknown entropy model context kind 4");
  ExpectEntropyInvalid(EntropyModel::Create(16, 12, ContextKind::kShared, 1, 4, uniform16,
                                            static_cast<EntropyTermination>(2))
                           .status(),
                       "unknown entropy termination 2");
  ExpectEntropyInvalid(EntropyModel::Create(16, 12, ContextKind::kShared, 0, 4, uniform16).status(),
                       "at least one channel and element");
  ExpectEntropyInvalid(EntropyModel::Create(16, 12, ContextKind::kShared, 1, 0, uniform16).status(),
                       "at least one channel and element");
  ExpectEntropyInvalid(
      EntropyModel::Create(16, 12, ContextKind::kShared, 3, 98, uniform16).status(),
      "98 elements are not a whole number of 3 channels");
  ExpectEntropyInvalid(
      EntropyModel::Create(16, 12, ContextKind::kShared, 1, kMaxEntropyElements + 1, uniform16)
          .status(),
      "exceeds the limit of 4194304");
  ExpectEntropyInvalid(
      EntropyModel::Create(256, 12, ContextKind::kPerElement, 1, 8192, uniform16).status(),
      "entropy model has 2097152 frequencies (per_element tables of 256 symbols), more than "
      "the limit of 1048576");
  ExpectEntropyInvalid(
      EntropyModel::Create(16, 12, ContextKind::kPerChannel, 2, 98, uniform16).status(),
      "needs 32 frequencies (2 per_channel tables of 16 symbols), got 16");
  std::vector<uint32_t> zero = uniform16;
  zero[3] = 0;
  zero[4] = 512;
  ExpectEntropyInvalid(EntropyModel::Create(16, 12, ContextKind::kShared, 1, 4, zero).status(),
                       "table 0 gives symbol 3 frequency 0; every symbol needs at least 1");
  std::vector<uint32_t> short_sum = uniform16;
  short_sum[15] = 255;
  ExpectEntropyInvalid(EntropyModel::Create(16, 12, ContextKind::kShared, 1, 4, short_sum).status(),
                       "table 0's frequencies sum to 4095, not 2^12 = 4096");
  std::vector<uint32_t> long_sum(32, 256);
  long_sum[17] = 0xFFFFFFFFu;  // must not wrap around to a valid sum
  ExpectEntropyInvalid(
      EntropyModel::Create(16, 12, ContextKind::kPerChannel, 2, 98, long_sum).status(),
      "table 1's frequencies sum to more than 2^12 = 4096");
}

// A serialized model written field by field, to break one field at a time.
std::string SerializedModel(std::vector<uint32_t> header, const std::vector<uint32_t>& frequencies,
                            uint8_t version = 1) {
  std::string out = "CEM";
  out.push_back(static_cast<char>(version));
  header.insert(header.end(), frequencies.begin(), frequencies.end());
  for (uint32_t value : header) {
    while (value >= 0x80) {
      out.push_back(static_cast<char>((value & 0x7F) | 0x80));
      value >>= 7;
    }
    out.push_back(static_cast<char>(value));
  }
  return out;
}

TEST(EntropyCoderModelTest, ParseRejectsMalformedBytes) {
  // alphabet 2, precision 8, shared, prefix-free, 1 channel, 4 elements.
  const std::vector<uint32_t> header = {2, 8, 0, 0, 1, 4};
  ASSERT_TRUE(EntropyModel::Parse(SerializedModel(header, {1, 255})).ok());

  ExpectEntropyInvalid(EntropyModel::Parse("").status(), "no \"CEM\" magic");
  ExpectEntropyInvalid(EntropyModel::Parse("PK\x03\x04 a zip").status(), "no \"CEM\" magic");
  auto version = EntropyModel::Parse(SerializedModel(header, {1, 255}, 2));
  EXPECT_EQ(version.status().code(), StatusCode::kVersionMismatch);
  EXPECT_THAT(version.status().message(), HasSubstr("format version 2 is not supported"));
  ExpectEntropyInvalid(EntropyModel::Parse(std::string("CEM\x01\x02\x08", 6)).status(),
                       "truncated in its context kind");
  ExpectEntropyInvalid(EntropyModel::Parse(SerializedModel(header, {1})).status(),
                       "truncated: 2 frequencies announced, 1 bytes left");
  ExpectEntropyInvalid(
      EntropyModel::Parse(SerializedModel(header, {1, 255}).substr(0, 12)).status(),
      "truncated in its frequencies");
  ExpectEntropyInvalid(EntropyModel::Parse(std::string("CEM\x01\x82\x00", 6)).status(),
                       "alphabet is not minimally encoded");
  ExpectEntropyInvalid(EntropyModel::Parse(std::string("CEM\x01\xFF\xFF\xFF\xFF\x7F", 9)).status(),
                       "alphabet does not fit in 32 bits");
  ExpectEntropyInvalid(
      EntropyModel::Parse(std::string("CEM\x01\xFF\xFF\xFF\xFF\xFF\x01", 10)).status(),
      "alphabet does not fit in 32 bits");
  ExpectEntropyInvalid(EntropyModel::Parse(SerializedModel(header, {1, 255}) + "x").status(),
                       "1 bytes after its frequencies");
  ExpectEntropyInvalid(EntropyModel::Parse(SerializedModel({1, 8, 0, 0, 1, 4}, {256})).status(),
                       "alphabet 1 is outside");
  ExpectEntropyInvalid(EntropyModel::Parse(SerializedModel({2, 8, 4, 0, 1, 4}, {1, 255})).status(),
                       "unknown entropy model context kind 4");
  ExpectEntropyInvalid(EntropyModel::Parse(SerializedModel({2, 8, 0, 2, 1, 4}, {1, 255})).status(),
                       "unknown entropy termination 2");
  ExpectEntropyInvalid(EntropyModel::Parse(SerializedModel({2, 8, 1, 0, 2, 4}, {1, 255})).status(),
                       "truncated: 4 frequencies announced");
  ExpectEntropyInvalid(EntropyModel::Parse(SerializedModel(header, {0, 256})).status(),
                       "symbol 0 frequency 0");
  ExpectEntropyInvalid(EntropyModel::Parse(SerializedModel(header, {2, 255})).status(),
                       "sum to more than 2^8 = 256");
  ExpectEntropyInvalid(EntropyModel::Parse(SerializedModel({2, 8, 2, 0, 1, 500000}, {})).status(),
                       "1000000 frequencies announced, 0 bytes left");
  ExpectEntropyInvalid(
      EntropyModel::Parse(SerializedModel({256, 8, 2, 0, 1, 1u << 20}, {})).status(),
      "more than the limit of 1048576");
}

TEST(EntropyCoderModelTest, JsonRoundTripsAndRejectsMalformedFields) {
  const EntropyModel model = BottleneckModel(EntropyTermination::kMinimal);
  const nlohmann::json json = nlohmann::json::parse(model.ToJson().dump());
  EXPECT_EQ(json.at("context"), "per_channel");
  EXPECT_EQ(json.at("termination"), "minimal");
  EXPECT_EQ(json.at("fingerprint"), model.FingerprintHex());
  auto parsed = EntropyModel::FromJson(json);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->Serialize(), model.Serialize());

  nlohmann::json no_fingerprint = json;
  no_fingerprint.erase("fingerprint");
  EXPECT_TRUE(EntropyModel::FromJson(no_fingerprint).ok());

  const auto broken = [&](const char* key, nlohmann::json value) {
    nlohmann::json j = json;
    if (value.is_discarded()) {
      j.erase(key);
    } else {
      j[key] = std::move(value);
    }
    return EntropyModel::FromJson(j).status();
  };
  const nlohmann::json missing(nlohmann::json::value_t::discarded);
  ExpectEntropyInvalid(EntropyModel::FromJson(nlohmann::json::array()).status(), "not an object");
  ExpectEntropyInvalid(broken("alphabet", missing), "has no \"alphabet\"");
  ExpectEntropyInvalid(broken("alphabet", -16), "\"alphabet\" is not an unsigned 32-bit integer");
  ExpectEntropyInvalid(broken("alphabet", "16"), "\"alphabet\" is not an unsigned 32-bit integer");
  ExpectEntropyInvalid(broken("elements", 1ull << 40),
                       "\"elements\" is not an unsigned 32-bit integer");
  ExpectEntropyInvalid(broken("precision", 12.5),
                       "\"precision\" is not an unsigned 32-bit integer");
  ExpectEntropyInvalid(broken("context", "per_pixel"), "unknown entropy model context 'per_pixel'");
  ExpectEntropyInvalid(broken("context", 1), "\"context\" is missing or not a string");
  ExpectEntropyInvalid(broken("termination", missing),
                       "\"termination\" is missing or not a string");
  ExpectEntropyInvalid(broken("termination", "short"), "unknown entropy termination 'short'");
  ExpectEntropyInvalid(broken("frequencies", "AAEC"), "\"frequencies\" is missing or not an array");
  nlohmann::json fraction = json;
  fraction["frequencies"][3] = 0.5;
  ExpectEntropyInvalid(EntropyModel::FromJson(fraction).status(),
                       "other than unsigned 32-bit integers");
  nlohmann::json moved = json;
  moved["frequencies"][0] = moved["frequencies"][0].get<uint32_t>() - 1;
  moved["frequencies"][1] = moved["frequencies"][1].get<uint32_t>() + 1;
  ExpectEntropyInvalid(EntropyModel::FromJson(moved).status(), "does not match its tables");
  ExpectEntropyInvalid(broken("fingerprint", 1234), "does not match its tables");
}

}  // namespace
}  // namespace cleave::entropy_testing
