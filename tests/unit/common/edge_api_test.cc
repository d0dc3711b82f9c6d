#include "common/edge_api.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace cleave::edge_api {
namespace {

ClassifyRequest GrayRequest() {
  ClassifyRequest r;
  r.request_id = 42;
  r.deadline_ms = 150;
  r.exit_threshold = 0.9f;
  r.kind = ImageKind::kGray8;
  r.width = 4;
  r.height = 3;
  r.pixels = std::string(12, '\x7f');
  return r;
}

TEST(EdgeApiTest, GrayRequestRoundTrip) {
  ClassifyRequest in = GrayRequest();
  auto out = DecodeClassifyRequest(EncodeClassifyRequest(in));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->request_id, 42u);
  EXPECT_EQ(out->deadline_ms, 150u);
  EXPECT_FLOAT_EQ(out->exit_threshold, 0.9f);
  EXPECT_EQ(out->kind, ImageKind::kGray8);
  EXPECT_EQ(out->width, 4u);
  EXPECT_EQ(out->height, 3u);
  EXPECT_EQ(out->pixels, in.pixels);
}

TEST(EdgeApiTest, PngRequestRoundTripAndDefaultThreshold) {
  ClassifyRequest in;
  in.request_id = 7;
  in.kind = ImageKind::kPng;
  in.png = "\x89PNG not really";
  auto out = DecodeClassifyRequest(EncodeClassifyRequest(in));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->kind, ImageKind::kPng);
  EXPECT_EQ(out->png, in.png);
  EXPECT_LT(out->exit_threshold, 0.0f);  // calibrated by default
}

TEST(EdgeApiTest, JpegAndRgbRequestsRoundTrip) {
  ClassifyRequest jpeg;
  jpeg.request_id = 8;
  jpeg.kind = ImageKind::kJpeg;
  jpeg.jpeg = "\xff\xd8\xff not really";
  auto out = DecodeClassifyRequest(EncodeClassifyRequest(jpeg));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->kind, ImageKind::kJpeg);
  EXPECT_EQ(out->jpeg, jpeg.jpeg);

  ClassifyRequest rgb = GrayRequest();
  rgb.kind = ImageKind::kRgb8;
  rgb.pixels = std::string(4 * 3 * 3, '\x10');
  out = DecodeClassifyRequest(EncodeClassifyRequest(rgb));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->kind, ImageKind::kRgb8);
  EXPECT_EQ(out->width, 4u);
  EXPECT_EQ(out->height, 3u);
  EXPECT_EQ(out->pixels, rgb.pixels);
}

TEST(EdgeApiTest, RejectsRgbWithTheWrongPixelCountAndEmptyJpeg) {
  ClassifyRequest rgb = GrayRequest();
  rgb.kind = ImageKind::kRgb8;  // 12 bytes: a gray image's count, not 4 x 3 x 3
  auto out = DecodeClassifyRequest(EncodeClassifyRequest(rgb));
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("rgb8 image carries 12 bytes"), std::string::npos);
  ClassifyRequest empty_rgb = rgb;
  empty_rgb.width = 0;
  empty_rgb.pixels.clear();
  EXPECT_FALSE(DecodeClassifyRequest(EncodeClassifyRequest(empty_rgb)).ok());
  ClassifyRequest no_jpeg;
  no_jpeg.kind = ImageKind::kJpeg;
  out = DecodeClassifyRequest(EncodeClassifyRequest(no_jpeg));
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("empty jpeg"), std::string::npos);
}

TEST(EdgeApiTest, ReplyCarriesTheClassName) {
  ClassifyReply in;
  in.source = AnswerSource::kCloud;
  in.predicted_class = 2;
  in.class_name = "Pullover";
  auto out = DecodeClassifyReply(EncodeClassifyReply(in));
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->class_name, "Pullover");
  in.class_name = std::string(2000, 'x');
  EXPECT_FALSE(DecodeClassifyReply(EncodeClassifyReply(in)).ok());
}

TEST(EdgeApiTest, ReplyRoundTrip) {
  ClassifyReply in;
  in.request_id = 9;
  in.source = AnswerSource::kDegraded;
  in.error = "cloud did not answer";
  in.predicted_class = 3;
  in.confidence = 0.5f;
  in.scores = {0.1f, -2.0f, 3.5f};
  in.exit_index = 0;
  in.wire_bytes = 61;
  in.edge_micros = 800;
  in.total_micros = 250000;
  auto out = DecodeClassifyReply(EncodeClassifyReply(in));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->source, AnswerSource::kDegraded);
  EXPECT_EQ(out->error, in.error);
  EXPECT_EQ(out->predicted_class, 3);
  EXPECT_EQ(out->scores, in.scores);
  EXPECT_EQ(out->wire_bytes, 61u);
  EXPECT_EQ(out->total_micros, 250000u);
  EXPECT_STREQ(AnswerSourceName(out->source), "degraded");
}

TEST(EdgeApiTest, ReplyCarriesTheOffloadOptionThatServedIt) {
  ClassifyReply in;
  in.source = AnswerSource::kEdgeExit;
  auto out = DecodeClassifyReply(EncodeClassifyReply(in));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->split, -1);  // the defaults: local only, calibrated exits, no probe
  EXPECT_FLOAT_EQ(out->exit_threshold, -1.0f);
  EXPECT_FALSE(out->probe);
  in.split = 2;
  in.exit_threshold = 0.93f;
  in.probe = true;
  out = DecodeClassifyReply(EncodeClassifyReply(in));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->split, 2);
  EXPECT_FLOAT_EQ(out->exit_threshold, 0.93f);
  EXPECT_TRUE(out->probe);
}

TEST(EdgeApiTest, RejectsOtherProtocolVersion) {
  ClassifyRequest in = GrayRequest();
  in.protocol_version = kEnvelopeProtocolVersion + 1;  // 2 is the v2 envelope's
  const std::string bytes = EncodeClassifyRequest(in);
  auto out = DecodeClassifyRequest(bytes);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kVersionMismatch);
  EXPECT_EQ(PeekClassifyRequestId(bytes), 42u);  // still routable for the error reply

  ClassifyReply reply;
  reply.protocol_version = 0;
  EXPECT_EQ(DecodeClassifyReply(EncodeClassifyReply(reply)).status().code(),
            StatusCode::kVersionMismatch);
}

TEST(EdgeApiTest, RejectsPixelCountMismatch) {
  ClassifyRequest in = GrayRequest();
  in.pixels.pop_back();
  auto out = DecodeClassifyRequest(EncodeClassifyRequest(in));
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("needs 12"), std::string::npos) << out.status().message();
}

TEST(EdgeApiTest, RejectsEmptyAndOversizedImages) {
  ClassifyRequest empty = GrayRequest();
  empty.width = 0;
  empty.pixels.clear();
  EXPECT_FALSE(DecodeClassifyRequest(EncodeClassifyRequest(empty)).ok());

  ClassifyRequest huge = GrayRequest();
  huge.width = kMaxImageSide + 1;
  huge.height = 1;
  huge.pixels.assign(kMaxImageSide + 1, 'x');
  EXPECT_FALSE(DecodeClassifyRequest(EncodeClassifyRequest(huge)).ok());

  ClassifyRequest no_png;
  no_png.kind = ImageKind::kPng;
  EXPECT_FALSE(DecodeClassifyRequest(EncodeClassifyRequest(no_png)).ok());
}

TEST(EdgeApiTest, RejectsBadThreshold) {
  ClassifyRequest above = GrayRequest();
  above.exit_threshold = 1.5f;
  EXPECT_EQ(DecodeClassifyRequest(EncodeClassifyRequest(above)).status().code(),
            StatusCode::kInvalidArgument);
  ClassifyRequest nan = GrayRequest();
  nan.exit_threshold = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(DecodeClassifyRequest(EncodeClassifyRequest(nan)).ok());
}

TEST(EdgeApiTest, RejectsGarbageAndTruncation) {
  EXPECT_EQ(DecodeClassifyRequest("").status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(DecodeClassifyRequest("\xff\xff\xff\xff garbage").ok());
  const std::string bytes = EncodeClassifyRequest(GrayRequest());
  for (size_t cut = 1; cut < bytes.size(); cut += 3) {
    EXPECT_FALSE(DecodeClassifyRequest(bytes.substr(0, cut)).ok()) << "cut at " << cut;
  }
  EXPECT_EQ(PeekClassifyRequestId("garbage"), 0u);
  EXPECT_FALSE(DecodeClassifyReply("\x00\x01").ok());
}

TEST(EdgeApiTest, RejectsOversizedMessage) {
  std::string big(kMaxMessageBytes + 1, '\0');
  auto out = DecodeClassifyRequest(big);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("exceeds"), std::string::npos);
}

// Found by tests/fuzz/edge_api_fuzz.cc: a message whose header promises more than the input
// holds, so the reader's destructor throws after the version check failed. Both decoders
// must return an error (under ASan the test also shows the error Status is not leaked).
TEST(EdgeApiTest, ReaderThatThrowsOnDestructionGivesAnError) {
  const std::string bytes("\x15\x01\x00\x01\x01\x01\x00\x00", 8);
  EXPECT_FALSE(DecodeClassifyRequest(bytes).ok());
  EXPECT_FALSE(DecodeClassifyReply(bytes).ok());
}

TEST(EdgeApiTest, VersionOneRequestsStillDecodeAsLocalRequests) {
  auto r = DecodeLocalRequest(EncodeClassifyRequest(GrayRequest()));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->kind, LocalRequest::Kind::kClassify);
  EXPECT_FALSE(r->enveloped);
  EXPECT_EQ(r->classify.request_id, 42u);
  EXPECT_EQ(r->classify.pixels, GrayRequest().pixels);
}

TEST(EdgeApiTest, EnvelopedClassifyAndFeedbackRoundTrip) {
  auto c = DecodeLocalRequest(EncodeEnvelopedClassifyRequest(GrayRequest()));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->enveloped);
  EXPECT_EQ(c->kind, LocalRequest::Kind::kClassify);
  EXPECT_EQ(c->classify.width, 4u);
  const std::string feedback = EncodeFeedbackRequest({77, 3});
  auto f = DecodeLocalRequest(feedback);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_TRUE(f->enveloped);
  EXPECT_EQ(f->kind, LocalRequest::Kind::kFeedback);
  EXPECT_EQ(f->feedback.request_id, 77u);
  EXPECT_EQ(f->feedback.true_class, 3);
  EXPECT_EQ(PeekClassifyRequestId(feedback), 77u);
  // A v1 reader refuses the envelope by its version.
  EXPECT_EQ(DecodeClassifyRequest(feedback).status().code(), StatusCode::kVersionMismatch);

  LocalReply reply;
  reply.kind = LocalRequest::Kind::kFeedback;
  reply.feedback = {77, false, "unknown request id 77"};
  auto back = DecodeLocalReply(EncodeLocalReply(reply));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->kind, LocalRequest::Kind::kFeedback);
  EXPECT_EQ(back->feedback.request_id, 77u);
  EXPECT_FALSE(back->feedback.accepted);
  EXPECT_EQ(back->feedback.error, "unknown request id 77");
  LocalReply classified;
  classified.classify.request_id = 5;
  classified.classify.class_name = "shirt";
  auto cr = DecodeLocalReply(EncodeLocalReply(classified));
  ASSERT_TRUE(cr.ok());
  EXPECT_EQ(cr->kind, LocalRequest::Kind::kClassify);
  EXPECT_EQ(cr->classify.class_name, "shirt");
}

TEST(EdgeApiTest, LocalRequestRejectsOtherVersionsAndGarbage) {
  // A class out of range decodes: the daemon, which knows its classes, answers why.
  auto negative = DecodeLocalRequest(EncodeFeedbackRequest({1, -1}));
  ASSERT_TRUE(negative.ok());
  EXPECT_EQ(negative->feedback.true_class, -1);
  EXPECT_EQ(PeekProtocolVersion(EncodeFeedbackRequest({1, -1})), 2);
  EXPECT_EQ(PeekProtocolVersion(EncodeClassifyRequest(GrayRequest())), 1);
  EXPECT_EQ(PeekProtocolVersion("garbage"), 0);
  ClassifyRequest v3 = GrayRequest();
  v3.protocol_version = 3;
  Status s = DecodeLocalRequest(EncodeClassifyRequest(v3)).status();
  EXPECT_EQ(s.code(), StatusCode::kVersionMismatch);
  EXPECT_NE(s.message().find("versions 1 and 2"), std::string::npos) << s.ToString();
  EXPECT_EQ(DecodeLocalRequest("not capnp at all").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeLocalReply(EncodeClassifyReply(ClassifyReply{})).status().code(),
            StatusCode::kVersionMismatch);
}

}  // namespace
}  // namespace cleave::edge_api
