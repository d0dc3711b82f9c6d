// Helpers shared by the update-compression tests (update_compression_test.cc and
// update_compression_decode_test.cc): a small weights layout, random weights, configs, and
// encode/decode that fail the test on error.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "federated/update_compression.h"

namespace cleave::federated::compression_testing {

// Three trainable-by-default entries: one longer than an int8 chunk (two chunks plus a
// partial one), one of exactly one chunk, one tiny.
inline WeightsLayout TestLayout() {
  WeightsLayout layout;
  layout.names = {"a.weight", "b.weight", "c.bias"};
  layout.shapes = {{20, 30}, {16, 16}, {7}};
  return layout;
}

inline Weights RandomWeights(const WeightsLayout& layout, uint64_t seed, float scale = 1.0f) {
  torch::manual_seed(seed);
  Weights w;
  for (const auto& shape : layout.shapes) w.push_back(torch::randn(shape) * scale);
  return w;
}

inline std::vector<bool> AllTrainable(const WeightsLayout& layout) {
  return std::vector<bool>(layout.size(), true);
}

inline CompressionConfig CompressionOf(const std::string& kind, bool error_feedback = false) {
  CompressionConfig c;
  c.kind = kind;
  c.error_feedback = error_feedback;
  return c;
}

// The flattened trainable values of `w`, in layout order.
inline std::vector<float> Flat(const Weights& w, const std::vector<bool>& trainable) {
  std::vector<float> out;
  for (size_t i = 0; i < w.size(); ++i) {
    if (!trainable[i]) continue;
    const torch::Tensor t = w[i].contiguous();
    out.insert(out.end(), t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
  }
  return out;
}

inline std::string MustEncode(const CompressionConfig& config, const Weights& global,
                              const Weights& trained, const std::vector<bool>& trainable,
                              uint64_t round = 1, uint64_t client = 1,
                              ErrorFeedbackState* feedback = nullptr) {
  auto bytes = EncodeUpdate(config, global, trained, trainable, round, client, feedback);
  EXPECT_TRUE(bytes.ok()) << bytes.status().ToString();
  return bytes.ok() ? *bytes : std::string();
}

inline Weights MustDecode(const std::string& bytes, const WeightsLayout& layout,
                          const std::vector<bool>& trainable) {
  auto delta = DecodeUpdate(bytes, layout, trainable);
  EXPECT_TRUE(delta.ok()) << delta.status().ToString();
  return delta.ok() ? *delta : Weights{};
}

inline void PutU32(std::string& s, size_t at, uint32_t v) {
  for (int b = 0; b < 4; ++b) s[at + b] = static_cast<char>((v >> (8 * b)) & 0xff);
}
inline void PutF32(std::string& s, size_t at, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  PutU32(s, at, bits);
}

// Offsets in the encoding (see update_compression.h).
inline constexpr size_t kHeader = 16;
inline size_t PayloadStart(const WeightsLayout& layout) { return kHeader + 4 * layout.size(); }

}  // namespace cleave::federated::compression_testing
