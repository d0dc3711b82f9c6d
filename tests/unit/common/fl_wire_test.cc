#include "common/fl_wire.h"

#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/serialize-packed.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <kj/io.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <random>

#include "common/federated.capnp.h"
#include "common/file_util.h"
#include "common/shamir.h"

namespace cleave::wire::fl {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

void ExpectInvalid(const Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_THAT(status.message(), HasSubstr(fragment));
}

// What the peer's decoder says about `message`.
Status Decoded(const Message& message) { return DecodeMessage(EncodeMessage(message)).status(); }

std::string LayoutSha() { return Sha256Hex(R"({"names":["conv.weight"],"shapes":[[4,1,3,3]]})"); }

EncodedTensor F32(const std::vector<uint32_t>& shape, uint32_t seed) {
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

EncodedTensor U8(const std::vector<uint32_t>& shape, uint32_t seed) {
  const EncodedTensor f32 = F32(shape, seed);
  std::vector<float> values(f32.data.size() / 4);
  std::memcpy(values.data(), f32.data.data(), f32.data.size());
  auto tensor = EncodeTensor(values.data(), shape, DType::kUInt8, 0);
  EXPECT_TRUE(tensor.ok()) << tensor.status().ToString();
  return *tensor;
}

void ExpectSameTensor(const EncodedTensor& a, const EncodedTensor& b) {
  EXPECT_EQ(a.dtype, b.dtype);
  EXPECT_EQ(a.shape, b.shape);
  EXPECT_EQ(a.channel_axis, b.channel_axis);
  EXPECT_EQ(a.quant.scale, b.quant.scale);
  EXPECT_EQ(a.quant.zero_point, b.quant.zero_point);
  EXPECT_EQ(a.data, b.data);
}

Register SampleRegister() {
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

RoundConfig SampleRoundConfig() {
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

Update SampleUpdate() {
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
T RoundTrip(const T& body) {
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

std::string Pack(capnp::MessageBuilder& message) {
  kj::VectorOutputStream out;
  capnp::writePackedMessage(out, message);
  auto bytes = out.getArray();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

// ---- Round trips ----

TEST(FlWireTest, RegisterRoundTrip) {
  const Register in = SampleRegister();
  const Register out = RoundTrip(in);
  EXPECT_EQ(out.client_id, in.client_id);
  EXPECT_EQ(out.num_examples, 6000u);
  EXPECT_TRUE(out.capabilities.can_train_full);
  EXPECT_TRUE(out.capabilities.can_train_head);
  EXPECT_EQ(out.capabilities.max_steps, 500u);
  EXPECT_TRUE(out.capabilities.accepts_delta);
  EXPECT_EQ(out.model_name, "fmnist-cnn");
  EXPECT_EQ(out.layout_sha256, LayoutSha());

  Register empty_data = in;
  empty_data.num_examples = 0;  // allowed: nothing to train on yet
  empty_data.capabilities = Capabilities{};
  EXPECT_EQ(RoundTrip(empty_data).num_examples, 0u);
}

TEST(FlWireTest, RegisterReplyRoundTrip) {
  RegisterReply in;
  in.accepted = false;
  in.error = "layout mismatch: expected " + LayoutSha();
  in.round = 41;
  in.poll_interval_ms = 2500;
  const RegisterReply out = RoundTrip(in);
  EXPECT_FALSE(out.accepted);
  EXPECT_EQ(out.error, in.error);
  EXPECT_EQ(out.round, 41u);
  EXPECT_EQ(out.poll_interval_ms, 2500u);
  in.accepted = true;
  in.error.clear();
  EXPECT_TRUE(RoundTrip(in).accepted);
}

TEST(FlWireTest, RoundConfigRoundTrip) {
  const RoundConfig in = SampleRoundConfig();
  const RoundConfig out = RoundTrip(in);
  EXPECT_EQ(out.round, 12u);
  EXPECT_EQ(out.model_name, in.model_name);
  EXPECT_EQ(out.layout_sha256, in.layout_sha256);
  ASSERT_EQ(out.weights.size(), in.weights.size());
  for (size_t i = 0; i < in.weights.size(); ++i) ExpectSameTensor(out.weights[i], in.weights[i]);
  EXPECT_TRUE(out.is_delta);
  EXPECT_EQ(out.base_round, 11u);
  EXPECT_EQ(out.trainable_set, TrainableSet::kHeadAndExits);
  EXPECT_EQ(out.trainable, in.trainable);
  EXPECT_EQ(out.local_epochs, 2u);
  EXPECT_EQ(out.batch_size, 64u);
  EXPECT_EQ(out.learning_rate, 0.01);
  EXPECT_EQ(out.momentum, 0.9);
  EXPECT_EQ(out.weight_decay, 5e-4);
  EXPECT_EQ(out.proximal_mu, 0.01);
  EXPECT_EQ(out.max_steps, 300u);
  EXPECT_EQ(out.deadline_ms, 60000u);
  EXPECT_EQ(out.time_budget_ms, 45000u);
  EXPECT_EQ(out.seed, 0xDEADBEEFCAFEull);
}

TEST(FlWireTest, UpdateRoundTrip) {
  Update in = SampleUpdate();
  const Update out = RoundTrip(in);
  EXPECT_EQ(out.round, 12u);
  EXPECT_EQ(out.client_id, "edge-07");
  EXPECT_EQ(out.num_examples, 5999u);
  EXPECT_EQ(out.train_loss, 0.4375);
  ASSERT_EQ(out.tensors.size(), 3u);
  for (size_t i = 0; i < in.tensors.size(); ++i) ExpectSameTensor(out.tensors[i], in.tensors[i]);
  EXPECT_FALSE(out.is_delta);
  EXPECT_EQ(out.train_seconds, 12.5);
  EXPECT_EQ(out.steps, 188u);
  // Compressed deltas (u8) travel too.
  in.is_delta = true;
  in.tensors = {U8({4, 9}, 8)};
  in.train_loss = -1.5;  // any finite loss
  const Update delta = RoundTrip(in);
  EXPECT_TRUE(delta.is_delta);
  ExpectSameTensor(delta.tensors.at(0), in.tensors[0]);
}

TEST(FlWireTest, UpdateAckRoundTripForEveryReason) {
  for (uint8_t r = 0; r <= static_cast<uint8_t>(AckReason::kNoRound); ++r) {
    const auto reason = static_cast<AckReason>(r);
    const UpdateAck in = MakeUpdateAck(3, reason, std::string("because ") + AckReasonName(reason));
    EXPECT_EQ(in.accepted, reason == AckReason::kOk);
    const UpdateAck out = RoundTrip(in);
    EXPECT_EQ(out.reason, in.reason);
    EXPECT_EQ(out.accepted, in.accepted);
    EXPECT_EQ(out.message, in.message);
    EXPECT_EQ(out.round, 3u);
    EXPECT_STRNE(AckReasonName(in.reason), "unknown");
  }
  EXPECT_STREQ(AckReasonName(AckReason::kStaleRound), "stale_round");
  EXPECT_STREQ(AckReasonName(AckReason::kNoRound), "no_round");
  EXPECT_STREQ(AckReasonName(static_cast<AckReason>(99)), "unknown");
}

TEST(FlWireTest, HeartbeatWaitByeRoundTrip) {
  Heartbeat hb;
  hb.client_id = "sim-00042";
  hb.training_round = 7;
  hb.has_global = true;
  hb.global_round = 6;
  const Heartbeat hb_out = RoundTrip(hb);
  EXPECT_EQ(hb_out.client_id, "sim-00042");
  EXPECT_EQ(hb_out.training_round, 7u);
  EXPECT_TRUE(hb_out.has_global);
  EXPECT_EQ(hb_out.global_round, 6u);

  Wait wait;
  wait.round = 9;
  wait.retry_after_ms = kMaxRetryAfterMs;
  wait.reason = "no round now";
  const Wait wait_out = RoundTrip(wait);
  EXPECT_EQ(wait_out.round, 9u);
  EXPECT_EQ(wait_out.retry_after_ms, kMaxRetryAfterMs);
  EXPECT_EQ(wait_out.reason, "no round now");

  for (ByeReason reason : {ByeReason::kLeaving, ByeReason::kFinished, ByeReason::kShuttingDown}) {
    Bye bye;
    bye.client_id = reason == ByeReason::kLeaving ? "edge-1" : "";  // aggregator may omit it
    bye.reason = reason;
    bye.message = ByeReasonName(reason);
    const Bye out = RoundTrip(bye);
    EXPECT_EQ(out.client_id, bye.client_id);
    EXPECT_EQ(out.reason, reason);
    EXPECT_EQ(out.message, bye.message);
  }
  EXPECT_STREQ(ByeReasonName(ByeReason::kShuttingDown), "shutting_down");
  EXPECT_STREQ(ByeReasonName(static_cast<ByeReason>(3)), "unknown");
}

TEST(FlWireTest, MessageKindNames) {
  EXPECT_STREQ(MessageKindName(Message(SampleRegister()).body), "register");
  EXPECT_STREQ(MessageKindName(Message(RegisterReply{}).body), "register_reply");
  EXPECT_STREQ(MessageKindName(Message(SampleRoundConfig()).body), "round_config");
  EXPECT_STREQ(MessageKindName(Message(SampleUpdate()).body), "update");
  EXPECT_STREQ(MessageKindName(Message(UpdateAck{}).body), "update_ack");
  EXPECT_STREQ(MessageKindName(Message(Heartbeat{}).body), "heartbeat");
  EXPECT_STREQ(MessageKindName(Message(Wait{}).body), "wait");
  EXPECT_STREQ(MessageKindName(Message(Bye{}).body), "bye");
}

// Found by design review: free text with an embedded NUL must not be cut short.
TEST(FlWireTest, TextWithEmbeddedNulRoundTrips) {
  Wait wait;
  wait.reason = std::string("a\0b", 3);
  EXPECT_EQ(RoundTrip(wait).reason, wait.reason);
}

// The size that matters for rounds: a 1M-parameter float32 model is ~4 MB per RoundConfig.
TEST(FlWireTest, MillionParameterRoundConfig) {
  RoundConfig in = SampleRoundConfig();
  in.is_delta = false;
  in.weights = {F32({1000, 1000}, 9), F32({1000}, 10)};
  in.trainable = {true, true};
  const std::string bytes = EncodeMessage(in);
  std::cout << "[ fl wire size ] RoundConfig with 1,001,000 f32 parameters: " << bytes.size()
            << " bytes\n";
  // Packing cannot shrink random floats; it costs about a byte per 256 words plus the
  // occasional word with a zero byte.
  EXPECT_LT(bytes.size(), 4004000u * 1.002);
  auto decoded = DecodeMessage(bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  ExpectSameTensor(std::get<RoundConfig>(decoded->body).weights[0], in.weights[0]);
}

TEST(FlWireTest, DecodesUnalignedInput) {
  const std::string bytes = EncodeMessage(SampleUpdate());
  for (size_t offset = 1; offset < 8; ++offset) {
    const std::string shifted = std::string(offset, 'x') + bytes;
    auto decoded = DecodeMessage(std::string_view(shifted).substr(offset));
    ASSERT_TRUE(decoded.ok()) << "offset " << offset << ": " << decoded.status().ToString();
    EXPECT_EQ(std::get<Update>(decoded->body).tensors[2].data, SampleUpdate().tensors[2].data);
  }
}

TEST(FlWireTest, DecodesMultiSegmentMessagesFromOtherEncoders) {
  capnp::MallocMessageBuilder message(8, capnp::AllocationStrategy::FIXED_SIZE);
  auto root = message.initRoot<schema::FlMessage>();
  root.setProtocolVersion(kProtocolVersion);
  auto update = root.initBody().initUpdate();
  update.setRound(4);
  update.setClientId("edge-9");
  update.setNumExamples(10);
  const EncodedTensor tensor = F32({3, 5}, 11);
  auto out = update.initTensors(1)[0];
  out.setDtype(schema::Tensor::DType::FLOAT32);
  auto shape = out.initShape(2);
  shape.set(0, 3);
  shape.set(1, 5);
  out.setData(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(tensor.data.data()),
                                  tensor.data.size()));
  ASSERT_GT(message.getSegmentsForOutput().size(), 1u);
  auto decoded = DecodeMessage(Pack(message));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(std::get<Update>(decoded->body).tensors[0].data, tensor.data);
}

// ---- Rejections: framing ----

TEST(FlWireTest, WrongProtocolVersionIsVersionMismatchBeforeBodyRules) {
  Message message(SampleUpdate());
  message.protocol_version = kProtocolVersion + 1;
  std::get<Update>(message.body).client_id.clear();  // would be InvalidArgument otherwise
  const Status status = Decoded(message);
  ASSERT_EQ(status.code(), StatusCode::kVersionMismatch) << status.ToString();
  EXPECT_THAT(status.message(), HasSubstr("has version 3 but this build speaks version 2"));
  // Version 1 predates secure aggregation: such a peer would send its model in the clear.
  message.protocol_version = 1;
  EXPECT_EQ(Decoded(message).code(), StatusCode::kVersionMismatch);
  EXPECT_EQ(ValidateMessage(message).code(), StatusCode::kVersionMismatch);
  message.protocol_version = 0;
  EXPECT_EQ(Decoded(message).code(), StatusCode::kVersionMismatch);
}

TEST(FlWireTest, RejectsEveryTruncation) {
  for (const Message& message :
       {Message(SampleRegister()), Message(SampleUpdate()), Message(SampleRoundConfig())}) {
    const std::string bytes = EncodeMessage(message);
    for (size_t length = 0; length < bytes.size(); ++length) {
      EXPECT_EQ(DecodeMessage(bytes.substr(0, length)).status().code(),
                StatusCode::kInvalidArgument)
          << MessageKindName(message.body) << " cut to " << length << " bytes";
    }
  }
  ExpectInvalid(DecodeMessage("").status(), "empty federated message");
  ExpectInvalid(DecodeMessage("\x10").status(), "malformed federated message");
}

TEST(FlWireTest, RejectsTrailingBytes) {
  const std::string bytes = EncodeMessage(SampleRegister()) + std::string("\x01\x07", 2);
  ExpectInvalid(DecodeMessage(bytes).status(), "trailing bytes after the message");
}

TEST(FlWireTest, RejectsRandomGarbage) {
  std::mt19937 rng(17);
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bytes(1 + rng() % 300, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    EXPECT_FALSE(DecodeMessage(bytes).ok());
    EXPECT_FALSE(DecodeCheckpoint(bytes).ok());
  }
}

TEST(FlWireTest, RejectsRandomByteFlipsOrDecodesSomethingValid) {
  const std::string bytes = EncodeMessage(SampleRoundConfig());
  std::mt19937 rng(23);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string mutated = bytes;
    mutated[rng() % mutated.size()] ^= static_cast<char>(1 + rng() % 255);
    auto decoded = DecodeMessage(mutated);
    if (decoded.ok()) {
      EXPECT_TRUE(ValidateMessage(*decoded).ok());
      EXPECT_TRUE(DecodeMessage(EncodeMessage(*decoded)).ok());
    }
  }
}

TEST(FlWireTest, RejectsOversizedInputAndPackedBombs) {
  ExpectInvalid(DecodeMessage(std::string(kMaxMessageBytes + 1, '\0')).status(),
                "more than the limit of 268435456");
  // Each "\0\xff" unpacks to 256 zero words (2 KiB): 256 KiB of input claims 256 MiB + 2 KiB.
  std::string bomb;
  for (int i = 0; i < 128 * 1024 + 1; ++i) bomb += std::string("\0\xff", 2);
  ExpectInvalid(DecodeMessage(bomb).status(), "unpacks to");
}

TEST(FlWireTest, RejectsUnknownMessageKindFromANewerSchema) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<schema::FlMessage>();
  root.setProtocolVersion(kProtocolVersion);
  root.initBody().initWait().setRetryAfterMs(5);
  ASSERT_EQ(root.getBody().which(), schema::FlMessage::Body::WAIT);
  // The union discriminant is the UInt16 at data offset 1 (bytes 2-3 of word 0).
  capnp::AnyStruct::Builder any = capnp::toAny(root);
  any.getDataSection()[2] = 42;
  any.getDataSection()[3] = 0;
  ExpectInvalid(DecodeMessage(Pack(message)).status(), "unknown federated message kind 42");
}

TEST(FlWireTest, RejectsLongListsBeforeCopyingThem) {
  // A packed message of zeros can claim a long tensor list for almost no bytes.
  capnp::MallocMessageBuilder message;
  auto update = message.initRoot<schema::FlMessage>();
  update.setProtocolVersion(kProtocolVersion);
  auto body = update.initBody().initUpdate();
  body.setClientId("edge-1");
  body.setNumExamples(1);
  body.initTensors(kMaxLayoutEntries + 1);
  const std::string bytes = Pack(message);
  EXPECT_LT(bytes.size(), 4096u);
  ExpectInvalid(DecodeMessage(bytes).status(),
                "Update.tensors has 4097 tensors, more than the limit of 4096");

  RoundConfig config = SampleRoundConfig();
  config.trainable.assign(kMaxLayoutEntries + 1, true);
  ExpectInvalid(Decoded(config), "RoundConfig.trainable has 4097 bits, more than the limit");
}

// ---- Rejections: field rules ----

TEST(FlWireTest, RejectsBadTensorsInsideValidMessages) {
  RoundConfig config = SampleRoundConfig();
  config.weights[1].data.resize(12);
  ExpectInvalid(Decoded(config),
                "RoundConfig.weights[1]: tensor data is 12 bytes but shape [4] of f32 needs 16");
  config = SampleRoundConfig();
  config.weights[2].quant.scale[0] = -1.0f;
  ExpectInvalid(Decoded(config), "RoundConfig.weights[2]: scale[0] = -1");
  config = SampleRoundConfig();
  config.weights[0].shape.assign(9, 1);
  ExpectInvalid(Decoded(config), "RoundConfig.weights[0]: tensor rank 9 exceeds the limit of 8");
  config = SampleRoundConfig();
  config.weights[3].dtype = static_cast<DType>(7);
  ExpectInvalid(Decoded(config), "RoundConfig.weights[3]: unknown dtype value 7");

  Update update = SampleUpdate();
  const float nan = std::nanf("");
  std::memcpy(&update.tensors[2].data[8], &nan, sizeof(nan));
  ExpectInvalid(Decoded(update), "Update.tensors[2]: f32 element 2 is not finite (nan)");
  update = SampleUpdate();
  update.tensors.clear();
  ExpectInvalid(Decoded(update), "Update.tensors is empty");
}

TEST(FlWireTest, ValidateClientIdRules) {
  EXPECT_TRUE(ValidateClientId("edge-07.site_a:1@lab").ok());
  EXPECT_TRUE(ValidateClientId(std::string(kMaxClientIdBytes, 'c')).ok());
  ExpectInvalid(ValidateClientId(""), "client id is empty");
  ExpectInvalid(ValidateClientId(std::string(kMaxClientIdBytes + 1, 'c')),
                "client id has 129 bytes, more than the limit of 128");
  ExpectInvalid(ValidateClientId("../etc"), "byte 46 at offset 0");
  ExpectInvalid(ValidateClientId("-x"), "must start with a letter or digit");
  ExpectInvalid(ValidateClientId("a/b"), "byte 47 at offset 1");
  ExpectInvalid(ValidateClientId("a b"), "byte 32 at offset 1");
  ExpectInvalid(ValidateClientId(std::string("a\0b", 3)), "byte 0 at offset 1");
}

TEST(FlWireTest, RejectsBadClientIdsInEveryClientMessage) {
  Register reg = SampleRegister();
  reg.client_id.clear();
  ExpectInvalid(Decoded(reg), "Register.client_id: client id is empty");
  Update update = SampleUpdate();
  update.client_id = "bad id";
  ExpectInvalid(Decoded(update), "Update.client_id: client id may use only");
  Heartbeat hb;
  ExpectInvalid(Decoded(hb), "Heartbeat.client_id: client id is empty");
  Bye bye;
  bye.client_id = "x\n";
  ExpectInvalid(Decoded(bye), "Bye.client_id");
}

TEST(FlWireTest, RejectsBadRegister) {
  Register m = SampleRegister();
  m.model_name.clear();
  ExpectInvalid(Decoded(m), "Register.model_name is empty");
  m = SampleRegister();
  m.model_name = "fm\tnist";
  ExpectInvalid(Decoded(m), "Register.model_name contains control byte 9 at offset 2");
  m = SampleRegister();
  m.model_name.assign(kMaxNameBytes + 1, 'm');
  ExpectInvalid(Decoded(m), "Register.model_name has 257 bytes");
  m = SampleRegister();
  m.layout_sha256.pop_back();
  ExpectInvalid(Decoded(m),
                "Register.layout_sha256 must be 64 lowercase hex digits (SHA-256), "
                "got 63 bytes");
  m = SampleRegister();
  m.layout_sha256[5] = 'A';
  ExpectInvalid(Decoded(m), "got byte 65 at offset 5");
  m = SampleRegister();
  m.num_examples = kMaxNumExamples + 1;
  ExpectInvalid(Decoded(m), "Register.num_examples = 1099511627777 is outside 0..1099511627776");
}

TEST(FlWireTest, RejectsBadRoundConfigParameters) {
  struct Case {
    void (*mutate)(RoundConfig&);
    const char* fragment;
  };
  const Case cases[] = {
      {[](RoundConfig& m) { m.learning_rate = std::nan(""); },
       "RoundConfig.learning_rate = nan is not finite"},
      {[](RoundConfig& m) { m.learning_rate = INFINITY; }, "learning_rate = inf is not finite"},
      {[](RoundConfig& m) { m.learning_rate = 0; }, "learning_rate = 0 is outside (0, inf)"},
      {[](RoundConfig& m) { m.momentum = -0.1; }, "RoundConfig.momentum = -0.10000000000000001"},
      {[](RoundConfig& m) { m.momentum = 1; }, "momentum = 1 is outside [0, 1)"},
      {[](RoundConfig& m) { m.weight_decay = -1; }, "weight_decay = -1 is outside [0, inf)"},
      {[](RoundConfig& m) { m.proximal_mu = -INFINITY; }, "proximal_mu = -inf is not finite"},
      {[](RoundConfig& m) { m.batch_size = 0; }, "RoundConfig.batch_size = 0 is outside 1.."},
      {[](RoundConfig& m) { m.local_epochs = 0; }, "RoundConfig.local_epochs = 0 is outside 1.."},
      {[](RoundConfig& m) { m.local_epochs = kMaxLocalEpochs + 1; }, "local_epochs = 10001"},
      {[](RoundConfig& m) { m.time_budget_ms = m.deadline_ms + 1; },
       "time_budget_ms 60001 exceeds deadline_ms 60000"},
      {[](RoundConfig& m) { m.base_round = m.round; },
       "delta against base_round 12, not before round 12"},
      {[](RoundConfig& m) { m.trainable.assign(4, false); }, "trainable selects no entry"},
      {[](RoundConfig& m) { m.trainable.pop_back(); }, "trainable has 3 bits for 4 weight"},
      {[](RoundConfig& m) { m.trainable_set = static_cast<TrainableSet>(5); },
       "trainable_set: unknown value 5"},
      {[](RoundConfig& m) { m.weights.clear(), m.trainable.clear(); },
       "RoundConfig.weights is empty"},
      {[](RoundConfig& m) { m.layout_sha256.clear(); }, "RoundConfig.layout_sha256 must be"},
      {[](RoundConfig& m) { m.model_name.clear(); }, "RoundConfig.model_name is empty"},
      {[](RoundConfig& m) { m.round = 0, m.is_delta = false; },
       "RoundConfig.round = 0 is outside 1..4294967295"},
  };
  for (const Case& c : cases) {
    RoundConfig m = SampleRoundConfig();
    c.mutate(m);
    ExpectInvalid(Decoded(m), c.fragment);
    ExpectInvalid(ValidateMessage(m), c.fragment);
  }
  // Boundaries that are fine: no deadline with a budget, full delta off, base round ignored.
  RoundConfig m = SampleRoundConfig();
  m.deadline_ms = 0;
  m.is_delta = false;
  m.base_round = 99;
  EXPECT_TRUE(Decoded(m).ok());
}

TEST(FlWireTest, RoundConfigCarriesTheCompressionSetting) {
  RoundConfig in = SampleRoundConfig();
  EXPECT_EQ(RoundTrip(in).compression.kind, CompressionKind::kNone);  // unset on the wire
  in.compression.kind = CompressionKind::kTopK;
  in.compression.topk_fraction = 0.125;
  in.compression.error_feedback = false;
  const RoundConfig out = RoundTrip(in);
  EXPECT_EQ(out.compression.kind, CompressionKind::kTopK);
  EXPECT_EQ(out.compression.topk_fraction, 0.125);
  EXPECT_FALSE(out.compression.error_feedback);
  EXPECT_STREQ(CompressionKindName(out.compression.kind), "topk");
  in.compression.kind = CompressionKind::kInt8;
  in.compression.error_feedback = true;
  EXPECT_EQ(RoundTrip(in).compression.kind, CompressionKind::kInt8);
}

TEST(FlWireTest, RejectsBadCompressionSettings) {
  RoundConfig m = SampleRoundConfig();
  m.compression.kind = CompressionKind::kTopK;
  m.compression.topk_fraction = 0;
  ExpectInvalid(Decoded(m), "RoundConfig.compression.topk_fraction = 0 is outside (0, 1]");
  m.compression.topk_fraction = 1.5;
  ExpectInvalid(Decoded(m), "RoundConfig.compression.topk_fraction = 1.5 is outside (0, 1]");
  m.compression.topk_fraction = std::nan("");
  ExpectInvalid(Decoded(m), "is not finite");
  m.compression.kind = static_cast<CompressionKind>(7);
  ExpectInvalid(ValidateMessage(m), "RoundConfig.compression.kind: unknown value 7");
  // An unknown kind from a newer schema does not wrap onto a known one.
  capnp::MallocMessageBuilder builder;
  auto root = builder.initRoot<schema::FlMessage>();
  root.setProtocolVersion(kProtocolVersion);
  m = SampleRoundConfig();
  m.compression.kind = CompressionKind::kInt8;
  {
    const std::string bytes = EncodeMessage(m);
    kj::ArrayInputStream input(
        kj::arrayPtr(reinterpret_cast<const kj::byte*>(bytes.data()), bytes.size()));
    capnp::PackedMessageReader reader(input);
    builder.setRoot(reader.getRoot<schema::FlMessage>());
  }
  builder.getRoot<schema::FlMessage>().getBody().getRoundConfig().getCompression().setKind(
      static_cast<schema::CompressionKind>(300));
  ExpectInvalid(DecodeMessage(Pack(builder)).status(), "RoundConfig.compression.kind");
}

SecureParams SampleSecureParams();

TEST(FlWireTest, TopKIsRefusedInSecureRoundsAndInt8Allowed) {
  RoundConfig m = SampleRoundConfig();
  m.is_delta = false;
  m.secure = SampleSecureParams();
  m.compression.kind = CompressionKind::kTopK;
  EXPECT_THAT(ValidateMessage(m).message(), HasSubstr("topk cannot be combined with secure"));
  m.compression.kind = CompressionKind::kInt8;
  EXPECT_TRUE(ValidateMessage(m).ok()) << ValidateMessage(m).ToString();
}

TEST(FlWireTest, CompressedUpdateRoundTrips) {
  Update in = SampleUpdate();
  in.tensors.clear();
  in.compressed = std::string("CLUC\x01\x01", 6) + std::string(1000, '\0') + "tail";
  in.compressed[500] = '\xff';
  const Update out = RoundTrip(in);
  EXPECT_EQ(out.compressed, in.compressed);
  EXPECT_TRUE(out.tensors.empty());
  EXPECT_FALSE(out.is_delta);
  EXPECT_EQ(out.steps, 188u);
}

TEST(FlWireTest, RejectsMalformedCompressedUpdates) {
  Update m = SampleUpdate();
  m.compressed = "CLUC";  // both forms at once
  ExpectInvalid(Decoded(m), "Update.compressed is set: Update.tensors must be empty");
  m.tensors.clear();
  m.is_delta = true;
  ExpectInvalid(Decoded(m), "is_delta false");
  m.is_delta = false;
  m.compressed.clear();  // neither form
  ExpectInvalid(Decoded(m), "Update.tensors is empty");
  // Truncations of a compressed update never decode into something else.
  m.compressed = std::string(64, 'x');
  const std::string bytes = EncodeMessage(m);
  ASSERT_TRUE(DecodeMessage(bytes).ok());
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_FALSE(DecodeMessage(std::string_view(bytes).substr(0, n)).ok()) << n;
  }
}

TEST(FlWireTest, RejectsBadUpdateFields) {
  Update m = SampleUpdate();
  m.num_examples = 0;
  ExpectInvalid(Decoded(m), "Update.num_examples = 0 is outside 1..");
  m = SampleUpdate();
  m.round = 0;
  ExpectInvalid(Decoded(m), "Update.round = 0 is outside 1..");
  m = SampleUpdate();
  m.train_loss = std::nan("");
  ExpectInvalid(Decoded(m), "Update.train_loss = nan is not finite");
  m = SampleUpdate();
  m.train_seconds = -0.5;
  ExpectInvalid(Decoded(m), "Update.train_seconds = -0.5 is outside [0, inf)");
  m = SampleUpdate();
  m.tensors.assign(kMaxLayoutEntries + 1, F32({1}, 1));
  ExpectInvalid(Decoded(m), "Update.tensors has 4097 tensors, more than the limit of 4096");
}

TEST(FlWireTest, RejectsInconsistentAcksAndBadWaits) {
  UpdateAck ack;
  ack.reason = AckReason::kLate;
  ack.accepted = true;
  ExpectInvalid(Decoded(ack), "UpdateAck.accepted is true but reason is late");
  ack.reason = AckReason::kOk;
  ack.accepted = false;
  ExpectInvalid(Decoded(ack), "accepted is false but reason is ok");
  ack.reason = static_cast<AckReason>(12);
  ExpectInvalid(Decoded(ack), "UpdateAck.reason: unknown value 12");
  ack = UpdateAck{};
  ack.accepted = true;
  ack.message.assign(kMaxTextBytes + 1, 'x');
  ExpectInvalid(Decoded(ack), "UpdateAck.message has 4097 bytes");

  Wait wait;
  wait.retry_after_ms = 0;
  ExpectInvalid(Decoded(wait), "Wait.retry_after_ms = 0 is outside 1..86400000");
  wait.retry_after_ms = kMaxRetryAfterMs + 1;
  ExpectInvalid(Decoded(wait), "Wait.retry_after_ms = 86400001");

  RegisterReply reply;
  reply.poll_interval_ms = kMaxRetryAfterMs + 1;
  ExpectInvalid(Decoded(reply), "RegisterReply.poll_interval_ms");

  Bye bye;
  bye.reason = static_cast<ByeReason>(3);
  ExpectInvalid(Decoded(bye), "Bye.reason: unknown value 3");
}

TEST(FlWireTest, UnknownEnumValuesFromTheWireDoNotWrapOntoKnownOnes) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<schema::FlMessage>();
  root.setProtocolVersion(kProtocolVersion);
  auto ack = root.initBody().initUpdateAck();
  ack.setAccepted(true);
  ack.setReason(static_cast<schema::UpdateAck::Reason>(256));  // would wrap to kOk as uint8_t
  ExpectInvalid(DecodeMessage(Pack(message)).status(), "UpdateAck.reason: unknown value 255");
}

TEST(FlWireTest, ValidateMessageAgreesWithTheDecoder) {
  std::mt19937 rng(29);
  for (int trial = 0; trial < 300; ++trial) {
    RoundConfig m = SampleRoundConfig();
    // Perturb a few fields into and out of their valid ranges.
    m.batch_size = rng() % 3;
    m.momentum = (static_cast<int>(rng() % 5) - 1) * 0.3;
    m.base_round = m.round - 2 + rng() % 4;
    m.trainable[rng() % 4] = rng() % 2;
    if (rng() % 4 == 0) m.weights[rng() % 4].data.pop_back();
    const Status validated = ValidateMessage(m);
    const Status decoded = Decoded(m);
    EXPECT_EQ(validated.code(), decoded.code())
        << validated.ToString() << " vs " << decoded.ToString();
    EXPECT_EQ(validated.message(), decoded.message());
  }
}

// ---- Secure aggregation messages ----

crypto::Key256 TestKey(uint8_t seed) {
  crypto::Key256 key;
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(seed * 31 + i);
  return key;
}

SecureParams SampleSecureParams() {
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

secagg::EncryptedShare Sealed(uint32_t sender, uint32_t recipient) {
  secagg::EncryptedShare share;
  share.sender = sender;
  share.recipient = recipient;
  share.ciphertext.resize(secagg::SealedShareBytes());
  for (size_t i = 0; i < share.ciphertext.size(); ++i) {
    share.ciphertext[i] = static_cast<uint8_t>(i * 7 + sender);
  }
  return share;
}

secagg::RevealedShare Revealed(uint32_t owner, uint32_t x) {
  secagg::RevealedShare share;
  share.owner = owner;
  share.share.x = x;
  for (uint64_t k = 0; k < shamir::ElementsFor(32); ++k) {
    share.share.y.push_back((shamir::kPrime - 1) - k * 1000003 - owner);
  }
  return share;
}

SecAggKeys SampleKeys() {
  SecAggKeys m;
  m.round = 3;
  m.client_id = "edge-2";
  m.keys.round_id = 77;
  m.keys.sender = 2;
  m.keys.cipher_public_key = TestKey(1);
  m.keys.mask_public_key = TestKey(2);
  return m;
}

SecAggKeyDirectory SampleDirectory() {
  SecAggKeyDirectory m;
  m.round = 3;
  m.directory.round_id = 77;
  m.directory.recipient = 2;
  for (uint32_t c : {0u, 2u, 4u}) m.directory.keys.push_back({c, TestKey(c), TestKey(c + 10)});
  return m;
}

SecAggShareKeys SampleShareKeys() {
  SecAggShareKeys m;
  m.round = 3;
  m.client_id = "edge-2";
  m.shares.round_id = 77;
  m.shares.sender = 2;
  m.shares.shares = {Sealed(2, 0), Sealed(2, 4)};
  return m;
}

SecAggForwardedShares SampleForwarded() {
  SecAggForwardedShares m;
  m.round = 3;
  m.forwarded.round_id = 77;
  m.forwarded.recipient = 2;
  m.forwarded.shares = {Sealed(0, 2), Sealed(4, 2)};
  return m;
}

SecAggMaskedInput SampleMasked() {
  SecAggMaskedInput m;
  m.round = 3;
  m.client_id = "edge-2";
  m.input.round_id = 77;
  m.input.sender = 2;
  m.input.masked = {0u, 1u, 0xFFFFFFFFu, 0x80000000u, 12345u};
  return m;
}

SecAggUnmaskRequest SampleUnmaskRequest() {
  SecAggUnmaskRequest m;
  m.round = 3;
  m.request.round_id = 77;
  m.request.survivors = {0, 2, 4};
  return m;
}

SecAggUnmaskShares SampleUnmaskShares() {
  SecAggUnmaskShares m;
  m.round = 3;
  m.client_id = "edge-2";
  m.shares.round_id = 77;
  m.shares.sender = 2;
  m.shares.self_mask_shares = {Revealed(0, 3), Revealed(2, 3)};
  m.shares.mask_key_shares = {Revealed(1, 3)};
  return m;
}

std::vector<Message> SampleSecAggMessages() {
  return {Message(SampleKeys()),        Message(SampleDirectory()), Message(SampleShareKeys()),
          Message(SampleForwarded()),   Message(SampleMasked()),    Message(SampleUnmaskRequest()),
          Message(SampleUnmaskShares())};
}

void ExpectSameSealed(const std::vector<secagg::EncryptedShare>& a,
                      const std::vector<secagg::EncryptedShare>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].sender, b[i].sender);
    EXPECT_EQ(a[i].recipient, b[i].recipient);
    EXPECT_EQ(a[i].ciphertext, b[i].ciphertext);
  }
}

void ExpectSameRevealed(const std::vector<secagg::RevealedShare>& a,
                        const std::vector<secagg::RevealedShare>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].owner, b[i].owner);
    EXPECT_EQ(a[i].share.x, b[i].share.x);
    EXPECT_EQ(a[i].share.y, b[i].share.y);
  }
}

TEST(FlWireSecAggTest, RoundConfigCarriesTheSecureParams) {
  RoundConfig in = SampleRoundConfig();
  EXPECT_FALSE(RoundTrip(in).secure.has_value());
  in.secure = SampleSecureParams();
  const RoundConfig out = RoundTrip(in);
  ASSERT_TRUE(out.secure.has_value());
  const SecureParams& p = *out.secure;
  EXPECT_EQ(p.secagg.round_id, in.secure->secagg.round_id);
  EXPECT_EQ(p.secagg.num_clients, 5u);
  EXPECT_EQ(p.secagg.threshold, 3u);
  EXPECT_EQ(p.secagg.vector_length, in.secure->secagg.vector_length);
  EXPECT_EQ(p.secagg.graph, secagg::GraphKind::kHarary);
  EXPECT_EQ(p.secagg.degree, 4u);
  EXPECT_EQ(p.secagg.graph_seed, TestKey(9));
  EXPECT_EQ(p.clip, 64);
  EXPECT_EQ(p.fractional_bits, 20u);
  EXPECT_EQ(p.example_scale, 1000);
  EXPECT_EQ(p.client_index, 4u);
}

TEST(FlWireSecAggTest, EveryStageRoundTrips) {
  const SecAggKeys keys = RoundTrip(SampleKeys());
  EXPECT_EQ(keys.round, 3u);
  EXPECT_EQ(keys.client_id, "edge-2");
  EXPECT_EQ(keys.keys.round_id, 77u);
  EXPECT_EQ(keys.keys.sender, 2u);
  EXPECT_EQ(keys.keys.cipher_public_key, TestKey(1));
  EXPECT_EQ(keys.keys.mask_public_key, TestKey(2));

  const SecAggKeyDirectory dir = RoundTrip(SampleDirectory());
  EXPECT_EQ(dir.directory.recipient, 2u);
  ASSERT_EQ(dir.directory.keys.size(), 3u);
  EXPECT_EQ(dir.directory.keys[2].client, 4u);
  EXPECT_EQ(dir.directory.keys[2].cipher_public_key, TestKey(4));
  EXPECT_EQ(dir.directory.keys[2].mask_public_key, TestKey(14));

  const SecAggShareKeys shares = RoundTrip(SampleShareKeys());
  EXPECT_EQ(shares.client_id, "edge-2");
  EXPECT_EQ(shares.shares.sender, 2u);
  ExpectSameSealed(shares.shares.shares, SampleShareKeys().shares.shares);

  const SecAggForwardedShares forwarded = RoundTrip(SampleForwarded());
  EXPECT_EQ(forwarded.forwarded.recipient, 2u);
  ExpectSameSealed(forwarded.forwarded.shares, SampleForwarded().forwarded.shares);

  const SecAggMaskedInput masked = RoundTrip(SampleMasked());
  EXPECT_EQ(masked.input.masked, SampleMasked().input.masked);
  EXPECT_EQ(masked.input.round_id, 77u);

  const SecAggUnmaskRequest request = RoundTrip(SampleUnmaskRequest());
  EXPECT_EQ(request.request.survivors, (std::vector<uint32_t>{0, 2, 4}));

  const SecAggUnmaskShares unmask = RoundTrip(SampleUnmaskShares());
  ExpectSameRevealed(unmask.shares.self_mask_shares, SampleUnmaskShares().shares.self_mask_shares);
  ExpectSameRevealed(unmask.shares.mask_key_shares, SampleUnmaskShares().shares.mask_key_shares);

  EXPECT_STREQ(MessageKindName(Message(SampleKeys()).body), "secagg_keys");
  EXPECT_STREQ(MessageKindName(Message(SampleUnmaskShares()).body), "secagg_unmask_shares");
}

TEST(FlWireSecAggTest, WrongVersionAndEveryTruncationAreRejected) {
  std::vector<Message> messages = SampleSecAggMessages();
  RoundConfig secure = SampleRoundConfig();
  secure.secure = SampleSecureParams();
  messages.push_back(Message(secure));
  for (Message message : messages) {
    const std::string bytes = EncodeMessage(message);
    for (size_t length = 0; length < bytes.size(); ++length) {
      EXPECT_EQ(DecodeMessage(bytes.substr(0, length)).status().code(),
                StatusCode::kInvalidArgument)
          << MessageKindName(message.body) << " cut to " << length << " bytes";
    }
    message.protocol_version = 1;
    EXPECT_EQ(Decoded(message).code(), StatusCode::kVersionMismatch)
        << MessageKindName(message.body);
  }
}

// Builds a SecAggKeys whose keys have the given byte counts, bypassing the plain structs.
std::string KeysWithSizes(size_t cipher_bytes, size_t mask_bytes) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<schema::FlMessage>();
  root.setProtocolVersion(kProtocolVersion);
  auto keys = root.initBody().initSecAggKeys();
  keys.setRound(1);
  keys.setClientId("edge-1");
  const std::string cipher(cipher_bytes, '\x05'), mask(mask_bytes, '\x06');
  keys.setCipherPublicKey(
      capnp::Data::Reader(reinterpret_cast<const kj::byte*>(cipher.data()), cipher.size()));
  keys.setMaskPublicKey(
      capnp::Data::Reader(reinterpret_cast<const kj::byte*>(mask.data()), mask.size()));
  return Pack(message);
}

TEST(FlWireSecAggTest, KeysMustBe32Bytes) {
  EXPECT_TRUE(DecodeMessage(KeysWithSizes(32, 32)).ok());
  ExpectInvalid(DecodeMessage(KeysWithSizes(31, 32)).status(),
                "SecAggKeys.cipher_public_key has 31 bytes; a key has exactly 32");
  ExpectInvalid(DecodeMessage(KeysWithSizes(32, 33)).status(),
                "SecAggKeys.mask_public_key has 33 bytes");
  ExpectInvalid(DecodeMessage(KeysWithSizes(0, 32)).status(), "has 0 bytes");

  // In a key directory and as the graph seed of a round.
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<schema::FlMessage>();
  root.setProtocolVersion(kProtocolVersion);
  auto dir = root.initBody().initSecAggKeyDirectory();
  dir.setRound(1);
  auto entry = dir.initKeys(1)[0];
  const std::string key(32, '\x01'), short_key(16, '\x01');
  entry.setCipherPublicKey(
      capnp::Data::Reader(reinterpret_cast<const kj::byte*>(key.data()), key.size()));
  entry.setMaskPublicKey(
      capnp::Data::Reader(reinterpret_cast<const kj::byte*>(short_key.data()), short_key.size()));
  ExpectInvalid(DecodeMessage(Pack(message)).status(),
                "SecAggKeyDirectory.keys[0].mask_public_key has 16 bytes");

  RoundConfig config = SampleRoundConfig();
  config.secure = SampleSecureParams();
  capnp::MallocMessageBuilder cm;
  auto croot = cm.initRoot<schema::FlMessage>();
  croot.setProtocolVersion(kProtocolVersion);
  auto rc = croot.initBody().initRoundConfig();
  rc.setRound(1);
  auto secure = rc.initSecure();
  secure.setNumClients(3);
  secure.setThreshold(2);
  secure.setVectorLength(4);
  secure.setGraphSeed(
      capnp::Data::Reader(reinterpret_cast<const kj::byte*>(short_key.data()), short_key.size()));
  ExpectInvalid(DecodeMessage(Pack(cm)).status(), "RoundConfig.secure.graph_seed has 16 bytes");
}

TEST(FlWireSecAggTest, TooManySharesKeysOrSurvivorsAreRejectedBeforeCopying) {
  const auto expect_too_long = [](const std::function<void(schema::FlMessage::Body::Builder)>& fill,
                                  const std::string& fragment) {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<schema::FlMessage>();
    root.setProtocolVersion(kProtocolVersion);
    fill(root.initBody());
    const std::string bytes = Pack(message);
    ExpectInvalid(DecodeMessage(bytes).status(), fragment);
  };
  const unsigned too_many = kMaxSecAggEntries + 1;
  expect_too_long(
      [&](auto body) {
        auto m = body.initSecAggShareKeys();
        m.setRound(1);
        m.setClientId("edge-1");
        m.initShares(too_many);
      },
      "SecAggShareKeys.shares has 65537 shares, more than the limit of 65536");
  expect_too_long([&](auto body) { body.initSecAggForwardedShares().initShares(too_many); },
                  "SecAggForwardedShares.shares has 65537 shares");
  expect_too_long([&](auto body) { body.initSecAggKeyDirectory().initKeys(too_many); },
                  "SecAggKeyDirectory.keys has 65537 entries");
  expect_too_long([&](auto body) { body.initSecAggUnmaskRequest().initSurvivors(too_many); },
                  "SecAggUnmaskRequest.survivors has 65537 entries");
  expect_too_long([&](auto body) { body.initSecAggUnmaskShares().initMaskKeyShares(too_many); },
                  "SecAggUnmaskShares.mask_key_shares has 65537 shares");
  expect_too_long(
      [&](auto body) { body.initSecAggUnmaskShares().initSelfMaskShares(1)[0].initY(6); },
      "SecAggUnmaskShares.self_mask_shares[0].y has 6 elements, more than the limit of 5");
}

TEST(FlWireSecAggTest, RejectsMalformedStageMessages) {
  SecAggKeys keys = SampleKeys();
  keys.round = 0;
  ExpectInvalid(Decoded(keys), "SecAggKeys.round = 0");
  keys = SampleKeys();
  keys.client_id = "bad id";
  ExpectInvalid(Decoded(keys), "SecAggKeys.client_id");
  keys = SampleKeys();
  keys.keys.sender = secagg::kMaxClients;
  ExpectInvalid(Decoded(keys), "SecAggKeys.sender = 65536 is outside 0..65535");

  SecAggKeyDirectory dir = SampleDirectory();
  dir.directory.keys[1].client = secagg::kMaxClients + 3;
  ExpectInvalid(Decoded(dir), "SecAggKeyDirectory.keys[1].client");

  SecAggShareKeys shares = SampleShareKeys();
  shares.shares.shares[1].ciphertext.pop_back();
  ExpectInvalid(Decoded(shares), "SecAggShareKeys.shares[1].ciphertext has " +
                                     std::to_string(secagg::SealedShareBytes() - 1) +
                                     " bytes; a sealed share has exactly");
  SecAggForwardedShares forwarded = SampleForwarded();
  forwarded.forwarded.shares[0].ciphertext.push_back(0);
  ExpectInvalid(Decoded(forwarded), "SecAggForwardedShares.shares[0].ciphertext");

  SecAggMaskedInput masked = SampleMasked();
  masked.input.masked.clear();
  ExpectInvalid(Decoded(masked), "SecAggMaskedInput.masked is empty");
  masked = SampleMasked();
  masked.client_id.clear();
  ExpectInvalid(Decoded(masked), "SecAggMaskedInput.client_id");

  SecAggUnmaskRequest request = SampleUnmaskRequest();
  request.request.survivors = {0, 4, 4};
  ExpectInvalid(Decoded(request), "SecAggUnmaskRequest.survivors[2] = 4 does not increase");
  request.request.survivors = {3, 1};
  ExpectInvalid(Decoded(request), "survivors[1] = 1 does not increase");

  SecAggUnmaskShares unmask = SampleUnmaskShares();
  unmask.shares.self_mask_shares[1].share.x = 0;
  ExpectInvalid(Decoded(unmask), "SecAggUnmaskShares.self_mask_shares[1].x = 0");
  unmask = SampleUnmaskShares();
  unmask.shares.mask_key_shares[0].share.y.pop_back();
  ExpectInvalid(Decoded(unmask), "SecAggUnmaskShares.mask_key_shares[0].y has 4 field elements");
  unmask = SampleUnmaskShares();
  unmask.shares.mask_key_shares[0].share.y[2] = shamir::kPrime;
  ExpectInvalid(Decoded(unmask), "mask_key_shares[0].y[2] is not a field element");
}

TEST(FlWireSecAggTest, RejectsBadSecureParams) {
  const auto decoded = [](const std::function<void(SecureParams&)>& breakage) {
    RoundConfig config = SampleRoundConfig();
    config.secure = SampleSecureParams();
    breakage(*config.secure);
    return Decoded(config);
  };
  ExpectInvalid(decoded([](SecureParams& p) { p.secagg.num_clients = 1; }),
                "RoundConfig.secure: secure aggregation needs 2..65536 clients");
  ExpectInvalid(decoded([](SecureParams& p) { p.secagg.threshold = 2; }),
                "threshold 2 must be a strict majority");
  ExpectInvalid(decoded([](SecureParams& p) { p.secagg.vector_length = 0; }), "vector length");
  ExpectInvalid(
      decoded([](SecureParams& p) { p.secagg.vector_length = kMaxSecAggVectorWords + 1; }),
      "RoundConfig.secure.vector_length");
  ExpectInvalid(decoded([](SecureParams& p) { p.client_index = 5; }),
                "RoundConfig.secure.client_index = 5 is outside 0..4");
  ExpectInvalid(decoded([](SecureParams& p) { p.clip = 0; }), "RoundConfig.secure.clip");
  ExpectInvalid(decoded([](SecureParams& p) { p.clip = std::nan(""); }), "is not finite");
  ExpectInvalid(decoded([](SecureParams& p) { p.example_scale = -1; }),
                "RoundConfig.secure.example_scale");
  ExpectInvalid(decoded([](SecureParams& p) { p.fractional_bits = 31; }),
                "RoundConfig.secure.fractional_bits = 31 is outside 0..30");

  // An unknown graph kind from a newer schema.
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<schema::FlMessage>();
  root.setProtocolVersion(kProtocolVersion);
  auto rc = root.initBody().initRoundConfig();
  auto secure = rc.initSecure();
  secure.setGraph(static_cast<schema::SecAggGraph>(7));
  ExpectInvalid(DecodeMessage(Pack(message)).status(), "RoundConfig.secure.graph: unknown value 7");
}

TEST(FlWireSecAggTest, ValidateMessageAgreesWithTheDecoder) {
  std::mt19937 rng(31);
  for (int trial = 0; trial < 200; ++trial) {
    SecAggUnmaskShares m = SampleUnmaskShares();
    if (rng() % 3 == 0) m.shares.self_mask_shares[0].share.x = rng() % 2;
    if (rng() % 3 == 0) m.shares.mask_key_shares[0].share.y[rng() % 5] = shamir::kPrime - rng() % 2;
    if (rng() % 4 == 0) m.round = rng() % 2;
    const Status validated = ValidateMessage(m);
    const Status decoded = Decoded(m);
    EXPECT_EQ(validated.code(), decoded.code())
        << validated.ToString() << " vs " << decoded.ToString();
    EXPECT_EQ(validated.message(), decoded.message());
  }
}

TEST(FlWireSecAggTest, RandomByteFlipsDecodeToValidMessagesOrFail) {
  std::mt19937 rng(37);
  for (const Message& message : SampleSecAggMessages()) {
    const std::string bytes = EncodeMessage(message);
    for (int trial = 0; trial < 300; ++trial) {
      std::string mutated = bytes;
      mutated[rng() % mutated.size()] ^= static_cast<char>(1 + rng() % 255);
      auto decoded = DecodeMessage(mutated);
      if (decoded.ok()) EXPECT_TRUE(ValidateMessage(*decoded).ok());
    }
  }
}

// ---- Checkpoint ----

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cleave_test_fl_wire_" + UniqueSuffix());
    ASSERT_TRUE(fs::create_directories(dir_));
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  static CheckpointData Sample() {
    CheckpointData c;
    c.round = 25;
    c.model_name = "fmnist-cnn";
    c.layout = {{"conv.weight", {4, 1, 3, 3}}, {"conv.bias", {4}}, {"fc.weight", {10, 4}}};
    c.weights = {F32({4, 1, 3, 3}, 1), F32({4}, 2), F32({10, 4}, 3)};
    c.strategy_name = "fedadam";
    c.strategy_state = {{"m.conv.weight", F32({4, 1, 3, 3}, 4)},
                        {"step", F32({}, 5)},
                        {"v.fc.weight", U8({10, 4}, 6)}};
    c.engine_state = R"({"rng":"12345 678","history":[{"round":1,"loss":2.3}]})";
    return c;
  }

  static void ExpectSame(const CheckpointData& a, const CheckpointData& b) {
    EXPECT_EQ(a.format_version, b.format_version);
    EXPECT_EQ(a.round, b.round);
    EXPECT_EQ(a.model_name, b.model_name);
    ASSERT_EQ(a.layout.size(), b.layout.size());
    for (size_t i = 0; i < a.layout.size(); ++i) {
      EXPECT_EQ(a.layout[i].name, b.layout[i].name);
      EXPECT_EQ(a.layout[i].shape, b.layout[i].shape);
      ExpectSameTensor(a.weights[i], b.weights[i]);
    }
    EXPECT_EQ(a.strategy_name, b.strategy_name);
    ASSERT_EQ(a.strategy_state.size(), b.strategy_state.size());
    for (size_t i = 0; i < a.strategy_state.size(); ++i) {
      EXPECT_EQ(a.strategy_state[i].name, b.strategy_state[i].name);
      ExpectSameTensor(a.strategy_state[i].tensor, b.strategy_state[i].tensor);
    }
    EXPECT_EQ(a.engine_state, b.engine_state);
  }

  // Writes raw bytes (bypassing the checkpoint writer) and reads them back as a checkpoint.
  Result<CheckpointData> ReadRaw(const std::string& bytes) {
    const fs::path path = dir_ / "raw.ckpt";
    EXPECT_TRUE(WriteFileAtomic(path, bytes).ok());
    return ReadCheckpointFile(path);
  }

  fs::path dir_;
};

TEST_F(CheckpointTest, WriteReadRoundTrip) {
  const fs::path path = dir_ / "round-25.ckpt";
  const CheckpointData in = Sample();
  ASSERT_TRUE(WriteCheckpointFile(path, in).ok());
  auto out = ReadCheckpointFile(path);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ExpectSame(in, *out);

  // Overwrites atomically; an empty strategy state and engine state are fine.
  CheckpointData next = Sample();
  next.round = 26;
  next.strategy_name = "fedavg";
  next.strategy_state.clear();
  next.engine_state.clear();
  ASSERT_TRUE(WriteCheckpointFile(path, next).ok());
  out = ReadCheckpointFile(path);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ExpectSame(next, *out);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(CheckpointTest, FileLayout) {
  const std::string file = SerializeCheckpointFile(Sample());
  ASSERT_GT(file.size(), kCheckpointHeaderBytes);
  EXPECT_EQ(file.substr(0, 8), "CLVCKPT\n");
  EXPECT_EQ(file.substr(8, 4), std::string("\x01\0\0\0", 4));
  const std::string payload = file.substr(kCheckpointHeaderBytes);
  uint64_t length;
  std::memcpy(&length, file.data() + 12, 8);
  EXPECT_EQ(length, payload.size());
  EXPECT_EQ(file.substr(20, 64), Sha256Hex(payload));
  EXPECT_EQ(payload, EncodeCheckpoint(Sample()));
  auto decoded = DecodeCheckpoint(payload);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  ExpectSame(Sample(), *decoded);
}

TEST_F(CheckpointTest, MissingFileIsNotFound) {
  auto out = ReadCheckpointFile(dir_ / "nope.ckpt");
  EXPECT_EQ(out.status().code(), StatusCode::kNotFound) << out.status().ToString();
  EXPECT_THAT(out.status().message(), HasSubstr("nope.ckpt"));
}

TEST_F(CheckpointTest, EveryTamperedByteIsDetected) {
  const std::string file = SerializeCheckpointFile(Sample());
  for (size_t i = 0; i < file.size(); ++i) {
    std::string tampered = file;
    tampered[i] ^= 0x20;
    auto out = ParseCheckpointFile(tampered, "t.ckpt");
    ASSERT_FALSE(out.ok()) << "byte " << i;
    if (i >= 8 && i < 12) {
      EXPECT_EQ(out.status().code(), StatusCode::kVersionMismatch) << out.status().ToString();
    } else {
      EXPECT_EQ(out.status().code(), StatusCode::kDataLoss)
          << "byte " << i << ": " << out.status().ToString();
    }
  }
  std::string tampered = file;
  tampered.back() ^= 1;
  auto out = ReadRaw(tampered);
  ASSERT_EQ(out.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(out.status().message(), HasSubstr("raw.ckpt' is corrupt: the payload's SHA-256 is"));
}

TEST_F(CheckpointTest, TruncatedFilesAreDataLoss) {
  const std::string file = SerializeCheckpointFile(Sample());
  for (size_t length = 0; length < file.size(); ++length) {
    auto out = ParseCheckpointFile(file.substr(0, length), "t.ckpt");
    ASSERT_EQ(out.status().code(), StatusCode::kDataLoss) << "length " << length;
    EXPECT_THAT(out.status().message(), HasSubstr("'t.ckpt' is truncated"));
  }
  auto out = ReadRaw(file.substr(0, file.size() - 10));
  EXPECT_EQ(out.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(out.status().message(), HasSubstr("is truncated: the header promises a"));
  out = ReadRaw(file + "x");
  EXPECT_EQ(out.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(out.status().message(), HasSubstr("has trailing bytes"));
}

TEST_F(CheckpointTest, WrongMagicAndVersion) {
  std::string file = SerializeCheckpointFile(Sample());
  file[0] = 'X';
  auto out = ReadRaw(file);
  EXPECT_EQ(out.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(out.status().message(), HasSubstr("is not a cleave checkpoint (bad magic)"));
  out = ReadRaw(std::string(200, '\0'));
  EXPECT_THAT(out.status().message(), HasSubstr("bad magic"));

  file = SerializeCheckpointFile(Sample());
  file[8] = 2;
  out = ReadRaw(file);
  EXPECT_EQ(out.status().code(), StatusCode::kVersionMismatch);
  EXPECT_THAT(out.status().message(), HasSubstr("format version 2 but this build reads version 1"));

  // A consistent file whose payload claims another version (header and digest are fine).
  CheckpointData future = Sample();
  future.format_version = 2;
  file = SerializeCheckpointFile(future);
  file[8] = 1;
  out = ReadRaw(file);
  EXPECT_EQ(out.status().code(), StatusCode::kVersionMismatch) << out.status().ToString();
  EXPECT_THAT(out.status().message(), HasSubstr("checkpoint payload has version 2"));
}

TEST_F(CheckpointTest, GarbagePayloadWithValidDigestIsRejected) {
  const std::string payload = "\x10\x20\x30 not capnp";
  std::string file(kCheckpointMagic);
  const uint32_t version = kCheckpointFormatVersion;
  const uint64_t length = payload.size();
  file.append(reinterpret_cast<const char*>(&version), 4);
  file.append(reinterpret_cast<const char*>(&length), 8);
  file += Sha256Hex(payload) + payload;
  auto out = ReadRaw(file);
  ASSERT_EQ(out.status().code(), StatusCode::kInvalidArgument) << out.status().ToString();
  EXPECT_THAT(out.status().message(), HasSubstr("raw.ckpt': malformed checkpoint payload"));
}

TEST_F(CheckpointTest, WriterRefusesInvalidCheckpointsAndWritesNothing) {
  struct Case {
    void (*mutate)(CheckpointData&);
    const char* fragment;
  };
  const Case cases[] = {
      {[](CheckpointData& c) { c.weights.pop_back(); }, "has 2 weight tensors for 3 layout"},
      {[](CheckpointData& c) { c.layout[2].name = "conv.bias"; },
       "checkpoint layout[2] repeats the name 'conv.bias'"},
      {[](CheckpointData& c) { c.layout[1].name.clear(); }, "checkpoint layout[1] name is empty"},
      {[](CheckpointData& c) { c.layout[1].shape = {5}; },
       "checkpoint weights[1] ('conv.bias') has shape [4] but the layout says [5]"},
      {[](CheckpointData& c) {
         c.weights[2] = U8({10, 4}, 1);
       },
       "checkpoint weights[2] ('fc.weight') must be f32"},
      {[](CheckpointData& c) { c.weights[0].data[3] = '\x7f', c.weights[0].data[2] = '\x80'; },
       "checkpoint weights[0] ('conv.weight'): f32 element 0 is not finite"},
      {[](CheckpointData& c) { c.strategy_state[2].name = "step"; },
       "strategy_state[2] repeats the name 'step'"},
      {[](CheckpointData& c) { c.strategy_state[0].tensor.data.clear(); },
       "strategy_state[0] ('m.conv.weight'): tensor data is 0 bytes"},
      {[](CheckpointData& c) { c.strategy_name.clear(); }, "checkpoint strategy_name is empty"},
      {[](CheckpointData& c) { c.model_name = "a\x01"; }, "model_name contains control byte 1"},
      {[](CheckpointData& c) { c.layout.clear(), c.weights.clear(); }, "layout is empty"},
      {[](CheckpointData& c) { c.layout[0].shape.assign(9, 1); }, "layout[0] shape"},
  };
  const fs::path path = dir_ / "bad.ckpt";
  for (const Case& c : cases) {
    CheckpointData data = Sample();
    c.mutate(data);
    ExpectInvalid(ValidateCheckpoint(data), c.fragment);
    const Status status = WriteCheckpointFile(path, data);
    ExpectInvalid(status, c.fragment);
    EXPECT_THAT(status.message(), HasSubstr("refusing to write checkpoint"));
    EXPECT_FALSE(fs::exists(path));
    // The decoder enforces the same rules on a file that bypassed the writer.
    ExpectInvalid(DecodeCheckpoint(EncodeCheckpoint(data)).status(), c.fragment);
  }
  CheckpointData data = Sample();
  data.format_version = 3;
  EXPECT_EQ(WriteCheckpointFile(path, data).code(), StatusCode::kVersionMismatch);
  EXPECT_EQ(WriteCheckpointFile(dir_ / "no-such-dir" / "x.ckpt", Sample()).code(),
            StatusCode::kNotFound);
}

}  // namespace
}  // namespace cleave::wire::fl
