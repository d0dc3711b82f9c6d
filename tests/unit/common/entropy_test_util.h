// Helpers shared by the entropy coding tests (entropy_model_test.cc, entropy_fit_test.cc,
// entropy_coder_test.cc): deterministic symbol data, a stand-in for the [2,7,7] u4
// bottleneck's features, and fits and encodings that must succeed.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "common/entropy_coder.h"
#include "common/entropy_fit.h"
#include "common/entropy_model.h"

namespace cleave::entropy_testing {

inline void ExpectEntropyInvalid(const Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_THAT(status.message(), ::testing::HasSubstr(fragment));
}

// Symbols drawn from a Zipf-like distribution over [0, alphabet) starting at `peak`
// (weights 1 / (1 + distance)^2, wrapping around), the same for every seed.
inline std::vector<uint8_t> SkewedSymbols(size_t count, uint32_t alphabet, uint32_t seed,
                                          uint32_t peak = 0) {
  std::vector<double> weights(alphabet);
  for (uint32_t s = 0; s < alphabet; ++s) {
    const uint32_t distance = (s + alphabet - peak) % alphabet;
    weights[s] = 1.0 / ((1.0 + distance) * (1.0 + distance));
  }
  std::mt19937 rng(seed);
  std::discrete_distribution<int> dist(weights.begin(), weights.end());
  std::vector<uint8_t> symbols(count);
  for (uint8_t& s : symbols) s = static_cast<uint8_t>(dist(rng));
  return symbols;
}

inline std::vector<uint8_t> UniformSymbols(size_t count, uint32_t alphabet, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<uint32_t> dist(0, alphabet - 1);
  std::vector<uint8_t> symbols(count);
  for (uint8_t& s : symbols) s = static_cast<uint8_t>(dist(rng));
  return symbols;
}

inline EntropyFitOptions FitOptions(uint32_t alphabet, uint32_t channels, uint32_t elements) {
  EntropyFitOptions options;
  options.alphabet = alphabet;
  options.channels = channels;
  options.elements = elements;
  return options;
}

inline EntropyModel FitOrFail(const std::vector<uint8_t>& samples, const EntropyFitOptions& options,
                              ContextKind kind) {
  auto model = FitEntropyModel(samples, options, kind);
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  return std::move(model).value();
}

// The u4 [2,7,7] bottleneck of the Fashion-MNIST bundles: per-channel skewed symbols, the
// two channels peaking at different values.
inline constexpr uint32_t kBottleneckChannels = 2;
inline constexpr uint32_t kBottleneckElements = 98;

inline std::vector<uint8_t> BottleneckSamples(size_t samples, uint32_t seed) {
  std::vector<uint8_t> out;
  for (size_t n = 0; n < samples; ++n) {
    for (uint32_t c = 0; c < kBottleneckChannels; ++c) {
      const auto channel =
          SkewedSymbols(kBottleneckElements / kBottleneckChannels, 16, seed++, c == 0 ? 2 : 9);
      out.insert(out.end(), channel.begin(), channel.end());
    }
  }
  return out;
}

inline EntropyModel BottleneckModel(
    EntropyTermination termination = EntropyTermination::kPrefixFree) {
  auto options = FitOptions(16, kBottleneckChannels, kBottleneckElements);
  options.termination = termination;
  return FitOrFail(BottleneckSamples(500, 1), options, ContextKind::kPerChannel);
}

// The messages of `samples`, one vector of kBottleneckElements symbols each.
inline std::vector<std::vector<uint8_t>> SplitMessages(const std::vector<uint8_t>& samples) {
  std::vector<std::vector<uint8_t>> out;
  for (size_t offset = 0; offset + kBottleneckElements <= samples.size();
       offset += kBottleneckElements) {
    out.emplace_back(samples.begin() + offset, samples.begin() + offset + kBottleneckElements);
  }
  return out;
}

inline constexpr EntropyTermination kEntropyTerminations[] = {EntropyTermination::kPrefixFree,
                                                              EntropyTermination::kMinimal};

inline std::string EncodeOrFail(const EntropyModel& model, const std::vector<uint8_t>& symbols) {
  auto bytes = EntropyEncode(model, symbols);
  EXPECT_TRUE(bytes.ok()) << bytes.status().ToString();
  return bytes.value_or("");
}

}  // namespace cleave::entropy_testing
