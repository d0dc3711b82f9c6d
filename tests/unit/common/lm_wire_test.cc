#include "common/lm_wire.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace cleave::lm_wire {
namespace {

LmRequest Request(uint32_t tokens = 3, uint32_t width = 4) {
  LmRequest r;
  r.request_id = 42;
  r.model = "lm";
  r.session = "edge-1/session-7";
  r.start = 17;
  std::vector<float> values(tokens * width);
  for (size_t i = 0; i < values.size(); ++i) values[i] = 0.25f * static_cast<float>(i) - 1.0f;
  auto t = wire::EncodeTensor(values.data(), {tokens, width}, wire::DType::kUInt8, 0);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  r.states = *t;
  r.predict = tokens > 0;
  r.deadline_ms = 250;
  return r;
}

TEST(LmWireTest, RequestRoundTrip) {
  const LmRequest r = Request();
  auto back = DecodeLmRequest(EncodeLmRequest(r));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->request_id, 42u);
  EXPECT_EQ(back->model, "lm");
  EXPECT_EQ(back->session, r.session);
  EXPECT_EQ(back->start, 17u);
  EXPECT_EQ(back->states.shape, (std::vector<uint32_t>{3, 4}));
  EXPECT_EQ(back->states.channel_axis, 0u);
  EXPECT_EQ(back->states.data, r.states.data);
  EXPECT_TRUE(back->predict);
  EXPECT_FALSE(back->end_session);
  EXPECT_EQ(back->deadline_ms, 250u);
  EXPECT_FALSE(back->reset_session);
  LmRequest reset = Request();
  reset.reset_session = true;
  EXPECT_TRUE(DecodeLmRequest(EncodeLmRequest(reset))->reset_session);
  // Ending a session needs no states.
  LmRequest end = Request(0);
  end.end_session = true;
  auto ended = DecodeLmRequest(EncodeLmRequest(end));
  ASSERT_TRUE(ended.ok()) << ended.status().ToString();
  EXPECT_TRUE(ended->end_session);
  EXPECT_EQ(ended->states.shape[0], 0u);
  EXPECT_TRUE(ended->tokens.empty());
}

TEST(LmWireTest, TokenRequestRoundTripAndRejections) {
  LmRequest r = Request(0);
  r.states = {};  // a token request needs no states
  r.tokens = std::string("ab\0\xff", 4);
  r.predict = true;
  auto back = DecodeLmRequest(EncodeLmRequest(r));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->tokens, r.tokens);
  EXPECT_TRUE(back->states.shape.empty());
  EXPECT_TRUE(back->predict);
  // Empty states beside tokens are accepted too.
  LmRequest with_empty = Request(0);
  with_empty.tokens = "xyz";
  with_empty.predict = true;
  back = DecodeLmRequest(EncodeLmRequest(with_empty));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->tokens, "xyz");
  EXPECT_EQ(back->states.shape[0], 0u);

  LmRequest both = Request(2);
  both.tokens = "ab";
  auto status = DecodeLmRequest(EncodeLmRequest(both)).status();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("not both"), std::string::npos) << status.ToString();
  LmRequest neither = Request(0);
  neither.states = {};  // no states and no tokens: states are missing
  EXPECT_EQ(DecodeLmRequest(EncodeLmRequest(neither)).status().code(),
            StatusCode::kInvalidArgument);
  LmRequest many = Request(0);
  many.states = {};
  many.tokens.assign(kMaxStatesPerRequest + 1, 'a');
  EXPECT_EQ(DecodeLmRequest(EncodeLmRequest(many)).status().code(), StatusCode::kInvalidArgument);
}

TEST(LmWireTest, ReplyRoundTripWithEveryStatus) {
  for (LmStatus s : {LmStatus::kOk, LmStatus::kError, LmStatus::kOverloaded,
                     LmStatus::kDeadlineExceeded, LmStatus::kResync}) {
    LmReply r;
    r.request_id = 9;
    r.status = s;
    r.error = s == LmStatus::kOk ? "" : "why";
    r.position = 123;
    if (s == LmStatus::kOk) r.log_probs = {-0.5f, -1.0f, -3.0f, 0.0f};
    r.compute_us = 77;
    r.macs = uint64_t{1} << 40;
    auto back = DecodeLmReply(EncodeLmReply(r));
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(back->status, s);
    EXPECT_EQ(back->error, r.error);
    EXPECT_EQ(back->position, 123u);
    EXPECT_EQ(back->log_probs, r.log_probs);
    EXPECT_EQ(back->compute_us, 77u);
    EXPECT_EQ(back->macs, uint64_t{1} << 40);
    EXPECT_STRNE(LmStatusName(s), "unknown");
  }
  EXPECT_STREQ(LmStatusName(static_cast<LmStatus>(9)), "unknown");
}

TEST(LmWireTest, RequestRejections) {
  const auto rejected = [](LmRequest r) {
    return DecodeLmRequest(EncodeLmRequest(r)).status().code();
  };
  LmRequest r = Request();
  r.protocol_version = 2;
  EXPECT_EQ(rejected(r), StatusCode::kVersionMismatch);
  r = Request();
  r.session = "";
  EXPECT_EQ(rejected(r), StatusCode::kInvalidArgument);
  r.session = std::string(kMaxSessionBytes + 1, 's');
  EXPECT_EQ(rejected(r), StatusCode::kInvalidArgument);
  r.session = "bad\nsession";
  EXPECT_EQ(rejected(r), StatusCode::kInvalidArgument);
  r = Request();
  r.model = std::string(1, '\x01');
  EXPECT_EQ(rejected(r), StatusCode::kInvalidArgument);
  r = Request();
  r.states.shape = {12};  // not [tokens, width]
  EXPECT_EQ(rejected(r), StatusCode::kInvalidArgument);
  r = Request();
  r.states.data.pop_back();  // fewer bytes than the shape needs
  EXPECT_EQ(rejected(r), StatusCode::kInvalidArgument);
  r = Request();
  r.states.quant.scale[0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(rejected(r), StatusCode::kInvalidArgument);
  r = Request(0);
  r.predict = true;  // nothing to predict from
  EXPECT_EQ(rejected(r), StatusCode::kInvalidArgument);
  r = Request(1, 1);
  r.states.shape = {1, 0};
  r.states.data.clear();
  r.states.quant = {};
  EXPECT_EQ(rejected(r), StatusCode::kInvalidArgument);
  r = Request();
  r.start = uint64_t{1} << 63;
  EXPECT_EQ(rejected(r), StatusCode::kInvalidArgument);
  // Too many tokens for one request (checked before the tensor's bytes).
  r = Request(1, 1);
  r.states.dtype = wire::DType::kFloat32;
  r.states.quant = {};
  r.states.shape = {kMaxStatesPerRequest + 1, 1};
  r.states.data.assign(4 * (kMaxStatesPerRequest + 1), '\0');
  EXPECT_EQ(rejected(r), StatusCode::kInvalidArgument);
}

TEST(LmWireTest, ReplyRejectionsAndGarbage) {
  LmReply r;
  r.log_probs = {-1.0f, 0.5f};  // a probability above 1
  EXPECT_EQ(DecodeLmReply(EncodeLmReply(r)).status().code(), StatusCode::kInvalidArgument);
  r.log_probs = {-1.0f, std::numeric_limits<float>::quiet_NaN()};
  EXPECT_EQ(DecodeLmReply(EncodeLmReply(r)).status().code(), StatusCode::kInvalidArgument);
  r.log_probs.assign(kMaxVocab + 1, -1.0f);
  EXPECT_EQ(DecodeLmReply(EncodeLmReply(r)).status().code(), StatusCode::kInvalidArgument);
  r.log_probs.clear();
  r.status = static_cast<LmStatus>(7);
  EXPECT_EQ(DecodeLmReply(EncodeLmReply(r)).status().code(), StatusCode::kInvalidArgument);
  r.status = LmStatus::kOk;
  r.protocol_version = 0;
  EXPECT_EQ(DecodeLmReply(EncodeLmReply(r)).status().code(), StatusCode::kVersionMismatch);

  EXPECT_FALSE(DecodeLmRequest("").ok());
  EXPECT_FALSE(DecodeLmRequest("not a message at all").ok());
  const std::string bytes = EncodeLmRequest(Request());
  for (size_t cut : {size_t{1}, bytes.size() / 2, bytes.size() - 1}) {
    EXPECT_FALSE(DecodeLmRequest(bytes.substr(0, cut)).ok()) << cut;
  }
  EXPECT_FALSE(DecodeLmRequest(bytes + "x").ok());  // trailing bytes
  EXPECT_FALSE(DecodeLmReply(std::string(kMaxMessageBytes + 1, '\0')).ok());
}

}  // namespace
}  // namespace cleave::lm_wire
