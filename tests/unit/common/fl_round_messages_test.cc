// Federated round messages (common/fl_round_messages.h) through the envelope: round trips of
// every body, and every field rule the decoder and ValidateMessage enforce.
#include "common/fl_round_messages.h"

#include <capnp/message.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "common/federated.capnp.h"
#include "common/fl_wire.h"
#include "unit/common/fl_wire_test_util.h"

namespace cleave::wire::fl {
namespace {

using testing::Decoded;
using testing::ExpectInvalid;
using testing::ExpectSameTensor;
using testing::F32;
using ::testing::HasSubstr;
using testing::LayoutSha;
using testing::Pack;
using testing::RoundTrip;
using testing::SampleRegister;
using testing::SampleRoundConfig;
using testing::SampleSecureParams;
using testing::SampleUpdate;
using testing::U8;

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

TEST(FlWireTest, RoundConfigCarriesTheContinualStream) {
  RoundConfig in = SampleRoundConfig();
  EXPECT_FALSE(RoundTrip(in).continual.has_value());  // unset on the wire
  ContinualRound c;
  c.experience = 3;
  c.experiences = 5;
  c.scenario = ContinualScenario::kDomain;
  c.seed = 0xfeedbeefcafe;
  c.method = ContinualMethod::kDerpp;
  c.buffer_rows = 200;
  c.class_balanced = true;
  c.replay_batch = 16;
  c.ewc_lambda = 90;
  c.ewc_gamma = 0.5;
  c.ewc_samples = 64;
  c.lwf_alpha = 0.25;
  c.lwf_temperature = 3;
  c.derpp_alpha = 0.3;
  c.derpp_beta = 0.7;
  c.kd_temperature = 1.5;
  in.continual = c;
  const RoundConfig out = RoundTrip(in);
  ASSERT_TRUE(out.continual.has_value());
  const ContinualRound& r = *out.continual;
  EXPECT_EQ(r.experience, 3u);
  EXPECT_EQ(r.experiences, 5u);
  EXPECT_EQ(r.scenario, ContinualScenario::kDomain);
  EXPECT_EQ(r.seed, 0xfeedbeefcafeu);
  EXPECT_EQ(r.method, ContinualMethod::kDerpp);
  EXPECT_EQ(r.buffer_rows, 200u);
  EXPECT_TRUE(r.class_balanced);
  EXPECT_EQ(r.replay_batch, 16u);
  EXPECT_EQ(r.ewc_lambda, 90);
  EXPECT_EQ(r.ewc_gamma, 0.5);
  EXPECT_EQ(r.ewc_samples, 64u);
  EXPECT_EQ(r.lwf_alpha, 0.25);
  EXPECT_EQ(r.lwf_temperature, 3);
  EXPECT_EQ(r.derpp_alpha, 0.3);
  EXPECT_EQ(r.derpp_beta, 0.7);
  EXPECT_EQ(r.kd_temperature, 1.5);
  EXPECT_STREQ(ContinualScenarioName(r.scenario), "domain");
  EXPECT_STREQ(ContinualMethodName(r.method), "derpp");
}

TEST(FlWireTest, RejectsBadContinualStreams) {
  struct Case {
    std::function<void(ContinualRound&)> mutate;
    std::string fragment;
  };
  const std::vector<Case> cases = {
      {[](ContinualRound& c) { c.experiences = 0; }, "RoundConfig.continual.experiences"},
      {[](ContinualRound& c) { c.experiences = kMaxExperiences + 1; },
       "RoundConfig.continual.experiences"},
      {[](ContinualRound& c) { c.experience = 5; }, "RoundConfig.continual.experience"},
      {[](ContinualRound& c) { c.scenario = static_cast<ContinualScenario>(9); },
       "RoundConfig.continual.scenario: unknown value 9"},
      {[](ContinualRound& c) { c.method = static_cast<ContinualMethod>(9); },
       "RoundConfig.continual.method: unknown value 9"},
      {[](ContinualRound& c) {
         c.method = ContinualMethod::kEr;
         c.buffer_rows = 0;
       },
       "RoundConfig.continual.buffer_rows"},
      {[](ContinualRound& c) { c.ewc_gamma = 1.5; }, "RoundConfig.continual.ewc_gamma"},
      {[](ContinualRound& c) { c.ewc_lambda = -1; }, "RoundConfig.continual.ewc_lambda"},
      {[](ContinualRound& c) { c.ewc_samples = 0; }, "RoundConfig.continual.ewc_samples"},
      {[](ContinualRound& c) { c.lwf_temperature = 0; }, "RoundConfig.continual.lwf_temperature"},
      {[](ContinualRound& c) { c.derpp_beta = std::nan(""); }, "RoundConfig.continual.derpp_beta"},
      {[](ContinualRound& c) { c.kd_temperature = -2; }, "RoundConfig.continual.kd_temperature"},
  };
  for (const Case& k : cases) {
    RoundConfig m = SampleRoundConfig();
    ContinualRound c;
    c.experiences = 5;
    k.mutate(c);
    m.continual = c;
    ExpectInvalid(ValidateMessage(m), k.fragment);
    if (static_cast<uint8_t>(c.scenario) < 2 && static_cast<uint8_t>(c.method) < 5) {
      ExpectInvalid(Decoded(m), k.fragment);  // the receiver checks it too
    }
  }
  // Naive needs no buffer.
  RoundConfig m = SampleRoundConfig();
  ContinualRound c;
  c.buffer_rows = 0;
  m.continual = c;
  EXPECT_TRUE(ValidateMessage(m).ok()) << ValidateMessage(m).ToString();
}

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

}  // namespace
}  // namespace cleave::wire::fl
