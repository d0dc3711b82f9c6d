// The federated envelope (common/fl_wire.h): message kinds, alignment, multi-segment input
// from other encoders, and every framing rejection (version, truncation, garbage, bombs,
// unknown kinds, long lists). Each body's own rules: fl_round_messages_test.cc and
// fl_secagg_messages_test.cc.
#include "common/fl_wire.h"

#include <capnp/any.h>
#include <capnp/message.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "common/federated.capnp.h"
#include "unit/common/fl_wire_test_util.h"

namespace cleave::wire::fl {
namespace {

using testing::Decoded;
using testing::ExpectInvalid;
using testing::F32;
using ::testing::HasSubstr;
using testing::Pack;
using testing::SampleRegister;
using testing::SampleRoundConfig;
using testing::SampleUpdate;

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

}  // namespace
}  // namespace cleave::wire::fl
