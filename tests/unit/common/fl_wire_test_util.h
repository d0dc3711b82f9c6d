// Helpers shared by the federated wire tests (tests/unit/common/fl_*_test.cc) and the
// checkpoint format test: sample messages and tensors, a round trip that checks the encoding
// is canonical, and a packer for messages built with the raw Cap'n Proto API.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize-packed.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <kj/io.h>

#include <cstring>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include "common/file_util.h"
#include "common/fl_wire.h"

namespace cleave::wire::fl::testing {

inline void ExpectInvalid(const Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_THAT(status.message(), ::testing::HasSubstr(fragment));
}

// What the peer's decoder says about `message`.
inline Status Decoded(const Message& message) {
  return DecodeMessage(EncodeMessage(message)).status();
}

inline std::string LayoutSha() {
  return Sha256Hex(R"({"names":["conv.weight"],"shapes":[[4,1,3,3]]})");
}

inline EncodedTensor F32(const std::vector<uint32_t>& shape, uint32_t seed) {
  size_t count = 1;
  for (uint32_t dim : shape) count *= dim;
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.1f);
  std::vector<float> values(count);
  for (float& v : values) v = dist(rng);
  auto tensor = EncodeTensor(values.data(), shape, DType::kFloat32);
  EXPECT_TRUE(tensor.ok()) << tensor.status().ToString();
  return *tensor;
}

inline EncodedTensor U8(const std::vector<uint32_t>& shape, uint32_t seed) {
  const EncodedTensor f32 = F32(shape, seed);
  std::vector<float> values(f32.data.size() / 4);
  std::memcpy(values.data(), f32.data.data(), f32.data.size());
  auto tensor = EncodeTensor(values.data(), shape, DType::kUInt8, 0);
  EXPECT_TRUE(tensor.ok()) << tensor.status().ToString();
  return *tensor;
}

inline void ExpectSameTensor(const EncodedTensor& a, const EncodedTensor& b) {
  EXPECT_EQ(a.dtype, b.dtype);
  EXPECT_EQ(a.shape, b.shape);
  EXPECT_EQ(a.channel_axis, b.channel_axis);
  EXPECT_EQ(a.quant.scale, b.quant.scale);
  EXPECT_EQ(a.quant.zero_point, b.quant.zero_point);
  EXPECT_EQ(a.data, b.data);
}

inline Register SampleRegister() {
  Register m;
  m.client_id = "edge-07.site_a:1@lab";
  m.num_examples = 6000;
  m.capabilities.can_train_full = true;
  m.capabilities.can_train_head = true;
  m.capabilities.max_steps = 500;
  m.capabilities.accepts_delta = true;
  m.model_name = "fmnist-cnn";
  m.layout_sha256 = LayoutSha();
  return m;
}

inline RoundConfig SampleRoundConfig() {
  RoundConfig m;
  m.round = 12;
  m.model_name = "fmnist-cnn";
  m.layout_sha256 = LayoutSha();
  m.weights = {F32({4, 1, 3, 3}, 1), F32({4}, 2), U8({10, 4}, 3), F32({10}, 4)};
  m.is_delta = true;
  m.base_round = 11;
  m.trainable_set = TrainableSet::kHeadAndExits;
  m.trainable = {true, true, false, true};
  m.local_epochs = 2;
  m.batch_size = 64;
  m.learning_rate = 0.01;
  m.momentum = 0.9;
  m.weight_decay = 5e-4;
  m.proximal_mu = 0.01;
  m.max_steps = 300;
  m.deadline_ms = 60000;
  m.time_budget_ms = 45000;
  m.seed = 0xDEADBEEFCAFEull;
  return m;
}

inline Update SampleUpdate() {
  Update m;
  m.round = 12;
  m.client_id = "edge-07";
  m.num_examples = 5999;
  m.train_loss = 0.4375;
  m.tensors = {F32({4, 1, 3, 3}, 5), F32({4}, 6), F32({10}, 7)};
  m.is_delta = false;
  m.train_seconds = 12.5;
  m.steps = 188;
  return m;
}

template <typename T>
inline T RoundTrip(const T& body) {
  const std::string bytes = EncodeMessage(body);
  Result<Message> decoded = DecodeMessage(bytes);
  EXPECT_TRUE(decoded.ok()) << decoded.status().ToString();
  if (!decoded.ok()) return T{};
  EXPECT_EQ(decoded->protocol_version, kProtocolVersion);
  const T* out = std::get_if<T>(&decoded->body);
  EXPECT_NE(out, nullptr) << "decoded as " << MessageKindName(decoded->body);
  // Canonical: re-encoding what was decoded gives the same bytes.
  EXPECT_EQ(EncodeMessage(*decoded), bytes);
  return out ? *out : T{};
}

inline std::string Pack(capnp::MessageBuilder& message) {
  kj::VectorOutputStream out;
  capnp::writePackedMessage(out, message);
  auto bytes = out.getArray();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}
// A secure round for 5 clients on a Harary graph, this client at roster index 4.
inline crypto::Key256 TestKey(uint8_t seed) {
  crypto::Key256 key;
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(seed * 31 + i);
  return key;
}

inline SecureParams SampleSecureParams() {
  SecureParams p;
  p.secagg.round_id = 0xABCDEF0000000007ull;
  p.secagg.num_clients = 5;
  p.secagg.threshold = 3;
  p.secagg.vector_length = 4 * 9 + 4 + 10 + 2;
  p.secagg.graph = secagg::GraphKind::kHarary;
  p.secagg.degree = 4;
  p.secagg.graph_seed = TestKey(9);
  p.clip = 64;
  p.fractional_bits = 20;
  p.example_scale = 1000;
  p.client_index = 4;
  return p;
}

}  // namespace cleave::wire::fl::testing
