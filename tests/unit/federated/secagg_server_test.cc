// Hostile input to the secure-aggregation server: every malformed, replayed, duplicate,
// unknown-client, wrong-round and wrong-stage message is rejected with a precise code, leaves
// the state unchanged, and the round still completes exactly afterwards.
#include "federated/secagg_server.h"

#include <string>

#include <gtest/gtest.h>

#include "unit/federated/secagg_test_harness.h"

namespace cleave::secagg {
namespace {

using testing::CompleteConfig;
using testing::Harness;
using testing::PlainSum;
using testing::SmallInputs;

::testing::AssertionResult HasCode(const Status& status, StatusCode code,
                                   const std::string& fragment = "") {
  if (status.code() != code) {
    return ::testing::AssertionFailure()
           << "expected " << StatusCodeName(code) << ", got " << status.ToString();
  }
  if (status.message().find(fragment) == std::string::npos) {
    return ::testing::AssertionFailure()
           << "'" << status.message() << "' lacks '" << fragment << "'";
  }
  return ::testing::AssertionSuccess();
}

TEST(SecAggServerTest, CreateRejectsAnInvalidConfiguration) {
  EXPECT_EQ(SecAggServer::Create(CompleteConfig(10, 3)).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(SecAggClient::Create(CompleteConfig(10, 6), 10).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(SecAggServerTest, RejectsBadAdvertisements) {
  Harness h(CompleteConfig(5, 3));
  ASSERT_TRUE(h.ready());
  SecAggServer& server = *h.server;
  auto m0 = h.clients[0].Advertise();
  ASSERT_TRUE(m0.ok());

  AdvertiseKeys bad = *m0;
  bad.round_id = 41;
  EXPECT_TRUE(HasCode(server.HandleAdvertiseKeys(bad), StatusCode::kInvalidArgument,
                      "for round 41 reached round 42"));
  bad = *m0;
  bad.sender = 5;
  EXPECT_TRUE(HasCode(server.HandleAdvertiseKeys(bad), StatusCode::kNotFound,
                      "client 5, which is not in this round of 5 clients"));
  ASSERT_TRUE(server.HandleAdvertiseKeys(*m0).ok());
  EXPECT_TRUE(HasCode(server.HandleAdvertiseKeys(*m0), StatusCode::kAlreadyExists));

  auto m1 = h.clients[1].Advertise();
  ASSERT_TRUE(m1.ok());
  bad = *m1;
  bad.cipher_public_key = m0->cipher_public_key;  // a copy of another client's key
  EXPECT_TRUE(HasCode(server.HandleAdvertiseKeys(bad), StatusCode::kInvalidArgument,
                      "another client uses"));
  bad = *m1;
  bad.mask_public_key = bad.cipher_public_key;
  EXPECT_TRUE(HasCode(server.HandleAdvertiseKeys(bad), StatusCode::kInvalidArgument,
                      "same key for both purposes"));
  bad = *m1;
  bad.mask_public_key = Key256{};  // u = 0, a low-order point
  EXPECT_TRUE(
      HasCode(server.HandleAdvertiseKeys(bad), StatusCode::kInvalidArgument, "unusable key"));

  // Messages of later stages, and closing later stages, are refused without harm.
  EXPECT_TRUE(HasCode(server.HandleShareKeys({42, 0, {}}), StatusCode::kFailedPrecondition,
                      "stage 'advertise_keys'"));
  EXPECT_TRUE(HasCode(server.HandleMaskedInput({42, 0, std::vector<uint32_t>(16)}),
                      StatusCode::kFailedPrecondition));
  EXPECT_TRUE(HasCode(server.Finish().status(), StatusCode::kFailedPrecondition));
  EXPECT_EQ(server.stage(), SecAggServer::Stage::kAdvertiseKeys);
  EXPECT_EQ(server.progress().advertised, 1u);

  ASSERT_TRUE(server.HandleAdvertiseKeys(*m1).ok());
  const auto inputs = SmallInputs(5, 16, 10);
  auto result = h.Run(inputs);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->sum, PlainSum(inputs, {0, 1, 2, 3, 4}));
}

TEST(SecAggServerTest, RejectsBadShareKeys) {
  Harness h(CompleteConfig(5, 3));
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.Advertise(/*drop=*/{4}).ok());
  SecAggServer& server = *h.server;
  auto m0 = h.clients[0].ShareSecrets(h.directories[0]);
  ASSERT_TRUE(m0.ok()) << m0.status().ToString();
  ASSERT_EQ(m0->shares.size(), 3u);  // clients 1, 2, 3: client 4 never advertised

  ShareKeys bad = *m0;
  bad.round_id = 7;
  EXPECT_TRUE(HasCode(server.HandleShareKeys(bad), StatusCode::kInvalidArgument));
  bad = *m0;
  bad.shares.pop_back();
  EXPECT_TRUE(HasCode(server.HandleShareKeys(bad), StatusCode::kInvalidArgument,
                      "sent shares for 2 of its 3 neighbours"));
  bad = *m0;
  bad.shares[1].recipient = 99;  // unknown client
  EXPECT_TRUE(
      HasCode(server.HandleShareKeys(bad), StatusCode::kInvalidArgument, "share for client 99"));
  bad = *m0;
  bad.shares[1].recipient = 4;  // known, but never advertised keys
  EXPECT_TRUE(HasCode(server.HandleShareKeys(bad), StatusCode::kInvalidArgument,
                      "not one of its neighbours with keys"));
  bad = *m0;
  bad.shares[2] = bad.shares[0];
  EXPECT_TRUE(HasCode(server.HandleShareKeys(bad), StatusCode::kAlreadyExists, "two shares"));
  bad = *m0;
  bad.shares[0].ciphertext.pop_back();
  EXPECT_TRUE(HasCode(server.HandleShareKeys(bad), StatusCode::kInvalidArgument, "bytes, not"));
  bad = *m0;
  bad.shares[0].sender = 1;
  EXPECT_TRUE(HasCode(server.HandleShareKeys(bad), StatusCode::kInvalidArgument,
                      "labelled as from client 1"));
  EXPECT_TRUE(HasCode(server.HandleShareKeys({42, 4, {}}), StatusCode::kFailedPrecondition,
                      "did not advertise"));
  EXPECT_TRUE(HasCode(server.HandleShareKeys({42, 12, {}}), StatusCode::kNotFound));
  EXPECT_EQ(server.progress().shared, 0u);

  ASSERT_TRUE(server.HandleShareKeys(*m0).ok());
  EXPECT_TRUE(HasCode(server.HandleShareKeys(*m0), StatusCode::kAlreadyExists, "already shared"));
  ASSERT_TRUE(h.ShareKeys().ok());
  const auto inputs = SmallInputs(5, 16, 11);
  ASSERT_TRUE(h.MaskInputs(inputs).ok());
  auto result = h.Unmask();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->sum, PlainSum(inputs, {0, 1, 2, 3}));
}

TEST(SecAggServerTest, RejectsBadMaskedInputs) {
  Harness h(CompleteConfig(5, 3));
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.Advertise().ok());
  ASSERT_TRUE(h.ShareKeys(/*drop=*/{4}).ok());
  SecAggServer& server = *h.server;
  const auto inputs = SmallInputs(5, 16, 12);
  auto m0 = h.clients[0].MaskInput(h.forwarded[0], inputs[0]);
  ASSERT_TRUE(m0.ok()) << m0.status().ToString();

  MaskedInput bad = *m0;
  bad.masked.pop_back();
  EXPECT_TRUE(
      HasCode(server.HandleMaskedInput(bad), StatusCode::kInvalidArgument, "has 15 words, not 16"));
  bad = *m0;
  bad.masked.push_back(0);
  EXPECT_TRUE(HasCode(server.HandleMaskedInput(bad), StatusCode::kInvalidArgument));
  bad = *m0;
  bad.round_id = 43;
  EXPECT_TRUE(HasCode(server.HandleMaskedInput(bad), StatusCode::kInvalidArgument));
  bad = *m0;
  bad.sender = 4;  // advertised, but never shared keys
  EXPECT_TRUE(HasCode(server.HandleMaskedInput(bad), StatusCode::kFailedPrecondition,
                      "did not share its keys"));
  bad.sender = 77;
  EXPECT_TRUE(HasCode(server.HandleMaskedInput(bad), StatusCode::kNotFound));
  EXPECT_TRUE(HasCode(server.HandleUnmaskShares({42, 0, {}, {}}), StatusCode::kFailedPrecondition,
                      "stage 'masked_input'"));
  EXPECT_TRUE(
      HasCode(server.HandleAdvertiseKeys({42, 0, {}, {}}), StatusCode::kFailedPrecondition));

  ASSERT_TRUE(server.HandleMaskedInput(*m0).ok());
  EXPECT_TRUE(HasCode(server.HandleMaskedInput(*m0), StatusCode::kAlreadyExists));
  ASSERT_TRUE(h.MaskInputs(inputs).ok());
  auto result = h.Unmask();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->sum, PlainSum(inputs, {0, 1, 2, 3}));
  EXPECT_EQ(result->recovered_dropouts, std::vector<ClientIndex>{});  // 4 never masked with anyone
}

TEST(SecAggServerTest, RejectsReplayedForgedAndIncompleteUnmaskingShares) {
  // Client 5 drops before masking, so survivors reveal both kinds of shares.
  Harness h(CompleteConfig(6, 4));
  ASSERT_TRUE(h.ready());
  const auto inputs = SmallInputs(6, 16, 13);
  ASSERT_TRUE(h.Advertise().ok());
  ASSERT_TRUE(h.ShareKeys().ok());
  ASSERT_TRUE(h.MaskInputs(inputs, /*drop=*/{5}).ok());
  SecAggServer& server = *h.server;
  auto m0 = h.clients[0].RevealShares(h.request);
  auto m1 = h.clients[1].RevealShares(h.request);
  ASSERT_TRUE(m0.ok() && m1.ok());
  ASSERT_EQ(m0->self_mask_shares.size(), 5u);
  ASSERT_EQ(m0->mask_key_shares.size(), 1u);

  // Client 1 replays client 0's share of client 2's seed as its own.
  UnmaskShares bad = *m1;
  bad.self_mask_shares[2] = m0->self_mask_shares[2];
  ASSERT_EQ(bad.self_mask_shares[2].owner, 2u);
  EXPECT_TRUE(
      HasCode(server.HandleUnmaskShares(bad), StatusCode::kInvalidArgument, "(a replayed share?)"));
  // Client 0's whole message replayed under client 1's name.
  bad = *m0;
  bad.sender = 1;
  EXPECT_TRUE(HasCode(server.HandleUnmaskShares(bad), StatusCode::kInvalidArgument,
                      "not the sender's point 2"));
  bad = *m0;
  bad.self_mask_shares.push_back({99, m0->self_mask_shares[0].share});
  EXPECT_TRUE(HasCode(server.HandleUnmaskShares(bad), StatusCode::kNotFound,
                      "share of client 99: no such client"));
  // The share of the dropped client's self-mask seed must never be accepted (nor asked for).
  bad = *m0;
  bad.self_mask_shares.push_back(bad.mask_key_shares[0]);
  bad.mask_key_shares.clear();
  EXPECT_TRUE(HasCode(server.HandleUnmaskShares(bad), StatusCode::kInvalidArgument,
                      "self-mask share of client 5"));
  bad = *m0;
  bad.self_mask_shares.push_back(bad.self_mask_shares[0]);
  EXPECT_TRUE(HasCode(server.HandleUnmaskShares(bad), StatusCode::kAlreadyExists, "sent twice"));
  bad = *m0;
  bad.self_mask_shares.pop_back();
  EXPECT_TRUE(HasCode(server.HandleUnmaskShares(bad), StatusCode::kInvalidArgument,
                      "revealed 4 self-mask shares; it holds 5"));
  bad = *m0;
  bad.mask_key_shares.clear();
  EXPECT_TRUE(HasCode(server.HandleUnmaskShares(bad), StatusCode::kInvalidArgument,
                      "revealed 0 masking-key shares; it holds 1"));
  bad = *m0;
  bad.self_mask_shares[1].share.y[0] = shamir::kPrime;
  EXPECT_TRUE(HasCode(server.HandleUnmaskShares(bad), StatusCode::kOutOfRange));
  bad = *m0;
  bad.mask_key_shares[0].share.y.pop_back();
  EXPECT_TRUE(
      HasCode(server.HandleUnmaskShares(bad), StatusCode::kInvalidArgument, "field elements"));
  bad = *m0;
  bad.round_id = 1;
  EXPECT_TRUE(HasCode(server.HandleUnmaskShares(bad), StatusCode::kInvalidArgument));
  EXPECT_TRUE(HasCode(server.HandleUnmaskShares({42, 5, {}, {}}), StatusCode::kFailedPrecondition,
                      "only survivors unmask"));
  EXPECT_EQ(server.progress().unmasked, 0u);

  ASSERT_TRUE(server.HandleUnmaskShares(*m0).ok());
  EXPECT_TRUE(HasCode(server.HandleUnmaskShares(*m0), StatusCode::kAlreadyExists));
  ASSERT_TRUE(server.HandleUnmaskShares(*m1).ok());
  auto result = h.Unmask();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->sum, PlainSum(inputs, {0, 1, 2, 3, 4}));
  EXPECT_EQ(result->recovered_dropouts, std::vector<ClientIndex>{5});
}

TEST(SecAggServerTest, CorruptShareValuesFailTheRoundInsteadOfAWrongSum) {
  Harness h(CompleteConfig(6, 4));
  ASSERT_TRUE(h.ready());
  const auto inputs = SmallInputs(6, 16, 14);
  ASSERT_TRUE(h.Advertise().ok());
  ASSERT_TRUE(h.ShareKeys().ok());
  ASSERT_TRUE(h.MaskInputs(inputs).ok());
  auto m0 = h.clients[0].RevealShares(h.request);
  ASSERT_TRUE(m0.ok());
  // In range, at the right point, but not the value the client was dealt.
  m0->self_mask_shares[3].share.y[0] = (m0->self_mask_shares[3].share.y[0] + 1) % shamir::kPrime;
  ASSERT_TRUE(h.server->HandleUnmaskShares(*m0).ok());
  auto result = h.Unmask();
  ASSERT_FALSE(result.ok());
  EXPECT_TRUE(
      HasCode(result.status(), StatusCode::kFailedPrecondition, "self-mask seed of client 3"));
  EXPECT_NE(result.status().message().find("inconsistent"), std::string::npos);
  EXPECT_EQ(h.server->stage(), SecAggServer::Stage::kFailed);
}

TEST(SecAggServerTest, ACorruptMaskingKeyAtExactlyTheThresholdIsCaughtByItsPublicKey) {
  // Client 4 drops before masking, client 3 before unmasking: exactly t = 3 shares of s_4^SK
  // arrive, so no spare share can expose the corrupt one; the reconstructed key no longer
  // matches the public key client 4 advertised (or does not even fit 32 bytes).
  Harness h(CompleteConfig(5, 3));
  ASSERT_TRUE(h.ready());
  const auto inputs = SmallInputs(5, 16, 15);
  ASSERT_TRUE(h.Advertise().ok());
  ASSERT_TRUE(h.ShareKeys().ok());
  ASSERT_TRUE(h.MaskInputs(inputs, /*drop=*/{4}).ok());
  auto m0 = h.clients[0].RevealShares(h.request);
  ASSERT_TRUE(m0.ok());
  ASSERT_EQ(m0->mask_key_shares.size(), 1u);
  m0->mask_key_shares[0].share.y[4] ^= 1;
  ASSERT_TRUE(h.server->HandleUnmaskShares(*m0).ok());
  auto result = h.Unmask(/*drop=*/{3});
  ASSERT_FALSE(result.ok());
  EXPECT_TRUE(HasCode(result.status(), StatusCode::kFailedPrecondition, "client 4"));
}

}  // namespace
}  // namespace cleave::secagg
