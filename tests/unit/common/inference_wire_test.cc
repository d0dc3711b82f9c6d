#include "common/inference_wire.h"

#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/serialize-packed.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <kj/io.h>

#include <cmath>
#include <iostream>
#include <random>

#include "common/inference.capnp.h"

namespace cleave::wire {
namespace {

using ::testing::HasSubstr;

void ExpectInvalid(const Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_THAT(status.message(), HasSubstr(fragment));
}

EncodedTensor U4Features() {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1.0f, 4.0f);
  std::vector<float> values(98);
  for (float& v : values) v = dist(rng);
  auto tensor = EncodeTensor(values.data(), {1, 2, 7, 7}, DType::kUInt4, 1);
  EXPECT_TRUE(tensor.ok()) << tensor.status().ToString();
  return *tensor;
}

InferRequest FeaturesRequest() {
  InferRequest request;
  request.request_id = 42;
  request.model = "fmnist";
  request.deadline_ms = 150;
  request.input = InputKind::kFeatures;
  request.features = U4Features();
  return request;
}

InferReply OkReply() {
  InferReply reply;
  reply.request_id = 42;
  reply.status = ReplyStatus::kOk;
  reply.num_classes = 10;
  reply.scores = {0.1f, -2.0f, 3.5f, 0, 0, 0, 0, 0, 1e-3f, 9.0f};
  reply.batch_size = 7;
  reply.queue_us = 1234;
  reply.compute_us = 5678;
  return reply;
}

std::string Pack(capnp::MessageBuilder& message) {
  kj::VectorOutputStream out;
  capnp::writePackedMessage(out, message);
  auto bytes = out.getArray();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

TEST(WireTest, FeaturesRequestRoundTrip) {
  const InferRequest request = FeaturesRequest();
  const std::string bytes = EncodeInferRequest(request);
  auto decoded = DecodeInferRequest(bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->protocol_version, kProtocolVersion);
  EXPECT_EQ(decoded->request_id, 42u);
  EXPECT_EQ(decoded->model, "fmnist");
  EXPECT_EQ(decoded->deadline_ms, 150u);
  EXPECT_EQ(decoded->input, InputKind::kFeatures);
  EXPECT_EQ(decoded->features.dtype, DType::kUInt4);
  EXPECT_EQ(decoded->features.shape, request.features.shape);
  EXPECT_EQ(decoded->features.channel_axis, 1u);
  EXPECT_EQ(decoded->features.quant.scale, request.features.quant.scale);
  EXPECT_EQ(decoded->features.quant.zero_point, request.features.quant.zero_point);
  EXPECT_EQ(decoded->features.data, request.features.data);
  EXPECT_TRUE(decoded->png.empty());
}

// The number the whole design fights for: bytes on the wire per offloaded sample.
TEST(WireTest, U4FeaturesRequestSize) {
  const std::string bytes = EncodeInferRequest(FeaturesRequest());
  std::cout << "[ wire size ] InferRequest with u4 [1,2,7,7], 2-channel quant, model \"fmnist\": "
            << bytes.size() << " bytes (tensor payload 49 + 8 scale + 2 zero-point bytes)\n";
  RecordProperty("u4_request_bytes", static_cast<int>(bytes.size()));
  EXPECT_LE(bytes.size(), 110u) << "wire overhead regressed";
}

TEST(WireTest, Float32FeaturesRoundTripCarriesNoQuantParams) {
  InferRequest request = FeaturesRequest();
  const float values[] = {1.5f, -2.0f, 0.25f};
  request.features = *EncodeTensor(values, {1, 3}, DType::kFloat32);
  auto decoded = DecodeInferRequest(EncodeInferRequest(request));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(*DecodeTensor(decoded->features), std::vector<float>(values, values + 3));
}

TEST(WireTest, PngRequestRoundTrip) {
  InferRequest request;
  request.request_id = 0xFFFFFFFFFFFFFFFFull;
  request.model = "fmnist";
  request.input = InputKind::kPng;
  request.png = std::string("\x89PNG\r\n\x1a\n", 8) + std::string(100, '\0') + "tail";
  auto decoded = DecodeInferRequest(EncodeInferRequest(request));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->request_id, request.request_id);
  EXPECT_EQ(decoded->input, InputKind::kPng);
  EXPECT_EQ(decoded->png, request.png);
  EXPECT_EQ(decoded->deadline_ms, 0u);
}

TEST(WireTest, ReplyRoundTrip) {
  const InferReply reply = OkReply();
  auto decoded = DecodeInferReply(EncodeInferReply(reply));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->request_id, 42u);
  EXPECT_EQ(decoded->status, ReplyStatus::kOk);
  EXPECT_EQ(decoded->scores, reply.scores);
  EXPECT_EQ(decoded->num_classes, 10u);
  EXPECT_EQ(decoded->batch_size, 7u);
  EXPECT_EQ(decoded->queue_us, 1234u);
  EXPECT_EQ(decoded->compute_us, 5678u);
  EXPECT_TRUE(decoded->error.empty());
}

TEST(WireTest, ErrorReplyRoundTripWithoutScores) {
  for (ReplyStatus status :
       {ReplyStatus::kError, ReplyStatus::kOverloaded, ReplyStatus::kDeadlineExceeded}) {
    InferReply reply;
    reply.request_id = 9;
    reply.status = status;
    reply.error = std::string("cloud says: ") + ReplyStatusName(status);
    auto decoded = DecodeInferReply(EncodeInferReply(reply));
    ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
    EXPECT_EQ(decoded->status, status);
    EXPECT_EQ(decoded->error, reply.error);
    EXPECT_TRUE(decoded->scores.empty());
  }
  EXPECT_STREQ(ReplyStatusName(ReplyStatus::kDeadlineExceeded), "deadline_exceeded");
  EXPECT_STREQ(ReplyStatusName(static_cast<ReplyStatus>(9)), "unknown");
}

// Found by inference_wire_fuzz (then wire_fuzz): text with an embedded NUL was cut short when
// re-encoded.
TEST(WireTest, TextWithEmbeddedNulRoundTrips) {
  InferReply reply;
  reply.status = ReplyStatus::kError;
  reply.error = std::string("bad\0tail", 8);
  auto decoded = DecodeInferReply(EncodeInferReply(reply));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->error, reply.error);
}

TEST(WireTest, DecodesUnalignedInput) {
  const std::string bytes = EncodeInferRequest(FeaturesRequest());
  for (size_t offset = 1; offset < 8; ++offset) {
    const std::string shifted = std::string(offset, 'x') + bytes;
    auto decoded = DecodeInferRequest(std::string_view(shifted).substr(offset));
    ASSERT_TRUE(decoded.ok()) << "offset " << offset << ": " << decoded.status().ToString();
    EXPECT_EQ(decoded->features.data, FeaturesRequest().features.data);
  }
}

TEST(WireTest, WrongProtocolVersionIsVersionMismatch) {
  InferRequest request = FeaturesRequest();
  request.protocol_version = 3;
  const std::string bytes = EncodeInferRequest(request);
  auto decoded = DecodeInferRequest(bytes);
  ASSERT_EQ(decoded.status().code(), StatusCode::kVersionMismatch);
  EXPECT_THAT(decoded.status().message(), HasSubstr("protocol version 3"));
  EXPECT_THAT(decoded.status().message(), HasSubstr("speaks versions 1 and 2"));
  EXPECT_EQ(PeekRequestId(bytes), 42u);  // an error reply can still be routed

  InferReply reply = OkReply();
  reply.protocol_version = 0;
  const std::string reply_bytes = EncodeInferReply(reply);
  EXPECT_EQ(DecodeInferReply(reply_bytes).status().code(), StatusCode::kVersionMismatch);
  EXPECT_EQ(PeekRequestId(reply_bytes), 42u);
}

TEST(WireTest, PeekRequestIdOfUnreadableBytesIsZero) {
  EXPECT_EQ(PeekRequestId(""), 0u);
  EXPECT_EQ(PeekRequestId("\xff\xff"), 0u);
  EXPECT_EQ(PeekRequestId(EncodeInferRequest(FeaturesRequest())), 42u);
}

TEST(WireTest, RejectsEveryTruncation) {
  const std::string request = EncodeInferRequest(FeaturesRequest());
  for (size_t length = 0; length < request.size(); ++length) {
    EXPECT_EQ(DecodeInferRequest(request.substr(0, length)).status().code(),
              StatusCode::kInvalidArgument)
        << "length " << length;
  }
  const std::string reply = EncodeInferReply(OkReply());
  for (size_t length = 0; length < reply.size(); ++length) {
    EXPECT_EQ(DecodeInferReply(reply.substr(0, length)).status().code(),
              StatusCode::kInvalidArgument)
        << "length " << length;
  }
  ExpectInvalid(DecodeInferRequest("").status(), "empty InferRequest");
  ExpectInvalid(DecodeInferRequest("\x10").status(), "malformed InferRequest");
}

TEST(WireTest, RejectsTrailingBytes) {
  const std::string bytes = EncodeInferRequest(FeaturesRequest()) + std::string("\x01\x07", 2);
  ExpectInvalid(DecodeInferRequest(bytes).status(), "trailing bytes after the message");
}

TEST(WireTest, RejectsRandomGarbage) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string bytes(1 + rng() % 200, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    EXPECT_FALSE(DecodeInferRequest(bytes).ok());
    EXPECT_FALSE(DecodeInferReply(bytes).ok());
    (void)PeekRequestId(bytes);
  }
}

TEST(WireTest, RejectsOversizedInputAndPackedBombs) {
  ExpectInvalid(DecodeInferRequest(std::string(kMaxMessageBytes + 1, '\0')).status(),
                "more than the limit of 67108864");
  // Each "\0\xff" unpacks to 256 zero words: 80 KiB of input claims 80 MiB.
  std::string bomb;
  for (int i = 0; i < 40 * 1024; ++i) bomb += std::string("\0\xff", 2);
  ExpectInvalid(DecodeInferRequest(bomb).status(), "unpacks to");
  // A segment table that claims more words than the input holds.
  // A segment table that claims 256 words when the input unpacks to 2.
  const std::string claims_more =
      std::string("\x20\x01\xff", 3) + std::string(8, '\xff') + std::string(1, '\0');
  ExpectInvalid(DecodeInferRequest(claims_more).status(), "malformed InferRequest");
}

TEST(WireTest, RejectsInconsistentTensorInsideValidMessage) {
  InferRequest request = FeaturesRequest();
  request.features.data.resize(37);
  ExpectInvalid(DecodeInferRequest(EncodeInferRequest(request)).status(),
                "features: tensor data is 37 bytes but shape [1,2,7,7] of u4 needs 49");
  request = FeaturesRequest();
  request.features.quant.zero_point.push_back(1);
  ExpectInvalid(DecodeInferRequest(EncodeInferRequest(request)).status(),
                "got 2 scales and 3 zero points");
  request = FeaturesRequest();
  request.features.quant.scale[0] = std::nanf("");
  ExpectInvalid(DecodeInferRequest(EncodeInferRequest(request)).status(), "scale[0] = nan");
  request = FeaturesRequest();
  request.features.shape.assign(9, 1);
  ExpectInvalid(DecodeInferRequest(EncodeInferRequest(request)).status(), "rank 9 exceeds");
  request = FeaturesRequest();
  request.features.dtype = static_cast<DType>(9);
  ExpectInvalid(DecodeInferRequest(EncodeInferRequest(request)).status(),
                "unknown tensor dtype value 9");
}

TEST(WireTest, RejectsBadModelNames) {
  InferRequest request = FeaturesRequest();
  request.model = std::string(kMaxModelNameBytes, 'm');
  EXPECT_TRUE(DecodeInferRequest(EncodeInferRequest(request)).ok());
  request.model += 'm';
  ExpectInvalid(DecodeInferRequest(EncodeInferRequest(request)).status(),
                "model name is 257 bytes, more than the limit of 256");
  request.model = "fm\nnist";
  ExpectInvalid(DecodeInferRequest(EncodeInferRequest(request)).status(),
                "model name contains control byte 10 at offset 2");
}

TEST(WireTest, RejectsBadPngPayloads) {
  InferRequest request;
  request.model = "fmnist";
  request.input = InputKind::kPng;
  ExpectInvalid(DecodeInferRequest(EncodeInferRequest(request)).status(), "png input is empty");
  request.png.assign(kMaxPngBytes + 1, 'p');
  ExpectInvalid(DecodeInferRequest(EncodeInferRequest(request)).status(),
                "png input is 4194305 bytes, more than the limit of 4194304");
}

TEST(WireTest, RejectsInconsistentReplies) {
  InferReply reply = OkReply();
  reply.scores.pop_back();
  ExpectInvalid(DecodeInferReply(EncodeInferReply(reply)).status(),
                "9 scores, not a positive multiple of num_classes 10");
  reply = OkReply();
  reply.scores.clear();
  ExpectInvalid(DecodeInferReply(EncodeInferReply(reply)).status(), "0 scores");
  reply = OkReply();
  reply.num_classes = 0;
  ExpectInvalid(DecodeInferReply(EncodeInferReply(reply)).status(),
                "num_classes 0 is outside 1..100000");
  reply.num_classes = kMaxNumClasses + 1;
  ExpectInvalid(DecodeInferReply(EncodeInferReply(reply)).status(), "outside 1..100000");
  reply = OkReply();
  reply.scores[3] = std::nanf("");
  ExpectInvalid(DecodeInferReply(EncodeInferReply(reply)).status(), "score 3 is not finite");
  reply = OkReply();
  reply.status = static_cast<ReplyStatus>(7);
  ExpectInvalid(DecodeInferReply(EncodeInferReply(reply)).status(), "unknown reply status value 7");
  // An error reply that still carries scores must carry consistent ones.
  reply = OkReply();
  reply.status = ReplyStatus::kError;
  reply.num_classes = 3;
  ExpectInvalid(DecodeInferReply(EncodeInferReply(reply)).status(), "not a positive multiple");
}

TEST(WireTest, RejectsUnknownInputKindFromANewerSchema) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<schema::InferRequest>();
  root.setProtocolVersion(kProtocolVersion);
  root.setRequestId(5);
  root.getInput().setPng(capnp::Data::Reader(reinterpret_cast<const kj::byte*>("x"), 1));
  // The union discriminant is the UInt16 at data offset 1 (bytes 2-3 of word 0).
  capnp::AnyStruct::Builder any = capnp::toAny(root);
  ASSERT_EQ(root.getInput().which(), schema::InferRequest::Input::PNG);
  any.getDataSection()[2] = 7;
  any.getDataSection()[3] = 0;
  const std::string bytes = Pack(message);
  ExpectInvalid(DecodeInferRequest(bytes).status(), "unknown input kind 7");
  EXPECT_EQ(PeekRequestId(bytes), 5u);
}

TEST(WireTest, DecodesMultiSegmentMessagesFromOtherEncoders) {
  // A tiny fixed first segment forces the tensor into later segments.
  capnp::MallocMessageBuilder message(8, capnp::AllocationStrategy::FIXED_SIZE);
  auto root = message.initRoot<schema::InferRequest>();
  root.setProtocolVersion(kProtocolVersion);
  root.setRequestId(77);
  root.setModel("fmnist");
  const EncodedTensor features = U4Features();
  auto tensor = root.getInput().initFeatures();
  tensor.setDtype(schema::Tensor::DType::UINT4);
  auto shape = tensor.initShape(4);
  for (unsigned i = 0; i < 4; ++i) shape.set(i, features.shape[i]);
  tensor.setChannelAxis(1);
  auto scale = tensor.initScale(2);
  auto zero_point = tensor.initZeroPoint(2);
  for (unsigned i = 0; i < 2; ++i) {
    scale.set(i, features.quant.scale[i]);
    zero_point.set(i, features.quant.zero_point[i]);
  }
  tensor.setData(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(features.data.data()),
                                     features.data.size()));
  ASSERT_GT(message.getSegmentsForOutput().size(), 1u);
  auto decoded = DecodeInferRequest(Pack(message));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->request_id, 77u);
  EXPECT_EQ(decoded->features.data, features.data);
}

// ---- version 2 (InferRequestV2) ---------------------------------------------------------

InferRequest CompactRequest(size_t coded_bytes) {
  InferRequest request;
  request.protocol_version = kCompactProtocolVersion;
  request.request_id = 1234;
  request.deadline_ms = 250;
  request.split = 1;
  request.layout_tag = 0xBEEF;
  request.input = InputKind::kCodedFeatures;
  std::mt19937 rng(5);
  for (size_t i = 0; i < coded_bytes; ++i) request.coded.push_back(static_cast<char>(rng()));
  return request;
}

TEST(WireTest, CompactRequestRoundTripsEveryField) {
  const InferRequest request = CompactRequest(37);
  auto decoded = DecodeInferRequest(EncodeInferRequest(request));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->protocol_version, kCompactProtocolVersion);
  EXPECT_EQ(decoded->request_id, 1234u);
  EXPECT_EQ(decoded->deadline_ms, 250u);
  EXPECT_EQ(decoded->split, 1);
  EXPECT_EQ(decoded->layout_tag, 0xBEEF);
  EXPECT_EQ(decoded->input, InputKind::kCodedFeatures);
  EXPECT_EQ(decoded->coded, request.coded);
  EXPECT_TRUE(decoded->model.empty());

  InferRequest image = CompactRequest(0);
  image.input = InputKind::kPng;
  image.png = "\x89PNG fake";
  auto decoded_image = DecodeInferRequest(EncodeInferRequest(image));
  ASSERT_TRUE(decoded_image.ok()) << decoded_image.status().ToString();
  EXPECT_EQ(decoded_image->input, InputKind::kPng);
  EXPECT_EQ(decoded_image->png, image.png);
  EXPECT_EQ(PeekRequestId(EncodeInferRequest(image)), 1234u);

  InferRequest packed = CompactRequest(49);
  packed.input = InputKind::kPackedFeatures;
  auto decoded_packed = DecodeInferRequest(EncodeInferRequest(packed));
  ASSERT_TRUE(decoded_packed.ok()) << decoded_packed.status().ToString();
  EXPECT_EQ(decoded_packed->input, InputKind::kPackedFeatures);
  EXPECT_EQ(decoded_packed->coded, packed.coded);
  packed.coded.clear();
  ExpectInvalid(DecodeInferRequest(EncodeInferRequest(packed)).status(),
                "packed features is empty");
}

// The point of version 2: the envelope around the features shrinks to what the receiver does
// not know. Packed: the segment table (2 bytes), the root pointer (3), a two-word data section
// with a random tag and small id and deadline (~10), the blob pointer (4) and the blob's
// packing tags (~1 per 8 bytes of random data) -- about 20 + n/8 bytes, where version 1
// spent ~61 on the model name and the tensor header.
TEST(WireTest, CompactEnvelopeCostsAboutTwentyBytes) {
  for (size_t n : {1u, 20u, 37u, 49u, 200u}) {
    const InferRequest request = CompactRequest(n);
    const size_t bytes = EncodeInferRequest(request).size();
    EXPECT_LE(bytes, n + 20 + (n + 7) / 8) << n << " coded bytes";
  }
  InferRequest v1 = FeaturesRequest();
  const size_t v1_envelope = EncodeInferRequest(v1).size() - v1.features.data.size();
  InferRequest v2 = CompactRequest(0);
  v2.coded = v1.features.data;
  const size_t v2_envelope = EncodeInferRequest(v2).size() - v2.coded.size();
  EXPECT_LE(v2_envelope * 2, v1_envelope) << v2_envelope << " vs " << v1_envelope;
}

TEST(WireTest, CompactRequestRejectsEmptyAndOversizedInputs) {
  InferRequest request = CompactRequest(0);
  ExpectInvalid(DecodeInferRequest(EncodeInferRequest(request)).status(), "features is empty");
  request.input = InputKind::kPng;
  ExpectInvalid(DecodeInferRequest(EncodeInferRequest(request)).status(), "image input is empty");
  request.png.assign(kMaxPngBytes + 1, 'x');
  ExpectInvalid(DecodeInferRequest(EncodeInferRequest(request)).status(), "more than the limit");
  request = CompactRequest(0);
  request.coded.assign(kMaxCodedFeatureBytes + 1, 'x');
  ExpectInvalid(DecodeInferRequest(EncodeInferRequest(request)).status(), "more than the limit");
}

TEST(WireTest, CompactRequestRejectsUnknownInputKind) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<schema::InferRequestV2>();
  root.setProtocolVersion(kCompactProtocolVersion);
  root.setRequestId(9);
  root.getInput().setImage(capnp::Data::Reader(reinterpret_cast<const kj::byte*>("x"), 1));
  // The union discriminant is the UInt16 at bytes 6-7 of data word 1 (bytes 14-15).
  capnp::AnyStruct::Builder any = capnp::toAny(root);
  ASSERT_EQ(root.getInput().which(), schema::InferRequestV2::Input::IMAGE);
  ASSERT_EQ(any.getDataSection()[14], 1);
  any.getDataSection()[14] = 7;
  const std::string bytes = Pack(message);
  ExpectInvalid(DecodeInferRequest(bytes).status(), "unknown input kind 7");
  EXPECT_EQ(PeekRequestId(bytes), 9u);
}

TEST(WireTest, VersionsOtherThanOneAndTwoAreRefused) {
  InferRequest request = CompactRequest(4);
  request.protocol_version = 3;
  EXPECT_EQ(DecodeInferRequest(EncodeInferRequest(request)).status().code(),
            StatusCode::kVersionMismatch);
  // Replies stay version 1.
  InferReply reply = OkReply();
  reply.protocol_version = kCompactProtocolVersion;
  EXPECT_EQ(DecodeInferReply(EncodeInferReply(reply)).status().code(),
            StatusCode::kVersionMismatch);
}

// What the cloud's socket thread admits by: the header of either version, without the payload.
TEST(WireTest, PeekReadsTheHeaderOfBothVersions) {
  InferRequest compact = CompactRequest(37);
  auto header = PeekInferRequest(EncodeInferRequest(compact));
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  EXPECT_EQ(header->protocol_version, kCompactProtocolVersion);
  EXPECT_EQ(header->request_id, 1234u);
  EXPECT_EQ(header->deadline_ms, 250u);
  EXPECT_EQ(header->split, 1);
  EXPECT_EQ(header->layout_tag, 0xBEEF);
  EXPECT_EQ(header->input, InputKind::kCodedFeatures);
  compact.input = InputKind::kPackedFeatures;
  EXPECT_EQ(PeekInferRequest(EncodeInferRequest(compact))->input, InputKind::kPackedFeatures);
  compact.input = InputKind::kPng;
  compact.png = "png";
  EXPECT_EQ(PeekInferRequest(EncodeInferRequest(compact))->input, InputKind::kPng);

  const InferRequest v1 = FeaturesRequest();
  auto v1_header = PeekInferRequest(EncodeInferRequest(v1));
  ASSERT_TRUE(v1_header.ok()) << v1_header.status().ToString();
  EXPECT_EQ(v1_header->protocol_version, kProtocolVersion);
  EXPECT_EQ(v1_header->request_id, 42u);
  EXPECT_EQ(v1_header->deadline_ms, 150u);
  EXPECT_EQ(v1_header->input, InputKind::kFeatures);
}

// The peek refuses what is not a request of a known version, with DecodeInferRequest's
// messages, and leaves the payload to the decoder: a request whose payload is bad peeks fine.
TEST(WireTest, PeekRefusesGarbageAndOtherVersionsButNotBadPayloads) {
  InferRequest request = CompactRequest(4);
  request.protocol_version = 3;
  const std::string other_version = EncodeInferRequest(request);
  EXPECT_EQ(PeekInferRequest(other_version).status().code(), StatusCode::kVersionMismatch);
  EXPECT_EQ(PeekInferRequest(other_version).status().message(),
            DecodeInferRequest(other_version).status().message());
  EXPECT_FALSE(PeekInferRequest("").ok());
  EXPECT_FALSE(PeekInferRequest("\x10\x20\x30 not a message").ok());
  const std::string whole = EncodeInferRequest(CompactRequest(20));
  for (size_t cut = 0; cut < whole.size(); ++cut) {
    EXPECT_FALSE(PeekInferRequest(whole.substr(0, cut)).ok()) << cut;
  }
  EXPECT_FALSE(PeekInferRequest(whole + "x").ok());

  InferRequest empty = CompactRequest(0);  // no features: the decoder refuses it
  ASSERT_TRUE(PeekInferRequest(EncodeInferRequest(empty)).ok());
  ExpectInvalid(DecodeInferRequest(EncodeInferRequest(empty)).status(), "features is empty");
  InferRequest bad_model = FeaturesRequest();
  bad_model.model = std::string("a\x01b", 3);
  ASSERT_TRUE(PeekInferRequest(EncodeInferRequest(bad_model)).ok());
  EXPECT_FALSE(DecodeInferRequest(EncodeInferRequest(bad_model)).ok());
}

// The encoders into a caller's buffer build in the thread's scratch words: the bytes are those
// of the allocating encoders, also for messages too large for the scratch and one after the
// other (the scratch is zeroed again between messages).
TEST(WireTest, EncodingIntoABufferGivesTheSameBytes) {
  std::string buffer;
  InferReply reply = OkReply();
  EncodeInferReply(reply, &buffer);
  EXPECT_EQ(buffer, EncodeInferReply(reply));
  InferReply error;
  error.request_id = 7;
  error.status = ReplyStatus::kError;
  error.error = "short";
  EncodeInferReply(error, &buffer);
  EXPECT_EQ(buffer, EncodeInferReply(error));
  auto decoded = DecodeInferReply(buffer);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_TRUE(decoded->scores.empty());
  EXPECT_EQ(decoded->error, "short");
  InferReply large = OkReply();  // far beyond the scratch words
  large.num_classes = 5000;
  large.scores.assign(10000, 0.5f);
  EncodeInferReply(large, &buffer);
  EXPECT_EQ(buffer, EncodeInferReply(large));
  EXPECT_EQ(DecodeInferReply(buffer)->scores.size(), 10000u);
  EncodeInferReply(reply, &buffer);
  EXPECT_EQ(DecodeInferReply(buffer)->scores, reply.scores);

  for (const InferRequest& request : {FeaturesRequest(), CompactRequest(37)}) {
    EncodeInferRequest(request, &buffer);
    auto back = DecodeInferRequest(buffer);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(back->request_id, request.request_id);
  }
}

}  // namespace
}  // namespace cleave::wire
