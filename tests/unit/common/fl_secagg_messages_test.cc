// Secure-aggregation stage messages (common/fl_secagg_messages.h) and RoundConfig.secure
// through the envelope: round trips of every stage, and every size, count and index rule.
#include "common/fl_secagg_messages.h"

#include <capnp/message.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <random>
#include <string>

#include "common/federated.capnp.h"
#include "common/fl_wire.h"
#include "common/shamir.h"
#include "unit/common/fl_wire_test_util.h"

namespace cleave::wire::fl {
namespace {

using testing::Decoded;
using testing::ExpectInvalid;
using ::testing::HasSubstr;
using testing::Pack;
using testing::RoundTrip;
using testing::SampleRoundConfig;
using testing::SampleSecureParams;
using testing::TestKey;

// ---- Secure aggregation messages ----

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
      if (decoded.ok()) {
        EXPECT_TRUE(ValidateMessage(*decoded).ok());
      }
    }
  }
}

}  // namespace
}  // namespace cleave::wire::fl
