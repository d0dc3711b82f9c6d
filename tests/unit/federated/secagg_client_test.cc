// The secure-aggregation client against a misbehaving server or transport: tampered or
// misrouted shares, a directory that lies, unmask requests that would make it reveal what it
// must not. Each makes only that client abort; the round goes on without it.
#include "federated/secagg_client.h"

#include <string>

#include <gtest/gtest.h>

#include "unit/federated/secagg_test_harness.h"

namespace cleave::secagg {
namespace {

using testing::CompleteConfig;
using testing::HararyConfig;
using testing::Harness;
using testing::PlainSum;
using testing::SmallInputs;

TEST(SecAggClientTest, StepsOutOfOrderAreRefusedWithoutAborting) {
  auto client = SecAggClient::Create(CompleteConfig(4, 3), 1);
  ASSERT_TRUE(client.ok());
  auto early = client->RevealShares({42, {0, 1, 2}});
  EXPECT_EQ(early.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(client->stage(), SecAggClient::Stage::kNew);
  ASSERT_TRUE(client->Advertise().ok());
  EXPECT_EQ(client->Advertise().status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(client->stage(), SecAggClient::Stage::kAdvertised);
}

TEST(SecAggClientTest, ATamperedShareMakesOnlyItsRecipientDrop) {
  Harness h(CompleteConfig(6, 4));
  ASSERT_TRUE(h.ready());
  const auto inputs = SmallInputs(6, 16, 20);
  ASSERT_TRUE(h.Advertise().ok());
  ASSERT_TRUE(h.ShareKeys().ok());
  h.forwarded[2].shares[1].ciphertext[20] ^= 0x10;
  ASSERT_TRUE(h.MaskInputs(inputs).ok());
  ASSERT_EQ(h.aborted.count(2), 1u);
  EXPECT_NE(h.aborted[2].find("tampered"), std::string::npos) << h.aborted[2];
  EXPECT_EQ(h.clients[2].stage(), SecAggClient::Stage::kAborted);
  EXPECT_EQ(h.clients[2].MaskInput(h.forwarded[2], inputs[2]).status().code(),
            StatusCode::kFailedPrecondition);
  auto result = h.Unmask();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->sum, PlainSum(inputs, {0, 1, 3, 4, 5}));
  EXPECT_EQ(result->recovered_dropouts, std::vector<ClientIndex>{2});
}

TEST(SecAggClientTest, MisroutedOrRepeatedForwardedSharesAbort) {
  Harness h(CompleteConfig(6, 4));
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.Advertise().ok());
  ASSERT_TRUE(h.ShareKeys().ok());
  const auto inputs = SmallInputs(6, 16, 21);
  // A share for client 1 delivered to client 0: sealed for someone else, it cannot open it.
  ForwardedShares to_zero = h.forwarded[0];
  to_zero.shares[1] = h.forwarded[1].shares[1];
  to_zero.shares[1].recipient = 0;
  EXPECT_EQ(h.clients[0].MaskInput(to_zero, inputs[0]).status().code(), StatusCode::kDataLoss);
  // The same share twice.
  ForwardedShares twice = h.forwarded[3];
  twice.shares.push_back(twice.shares[0]);
  EXPECT_EQ(h.clients[3].MaskInput(twice, inputs[3]).status().code(), StatusCode::kAlreadyExists);
  // Shares meant for another recipient, and an input of the wrong length.
  EXPECT_EQ(h.clients[4].MaskInput(h.forwarded[5], inputs[4]).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(h.clients[1].MaskInput(h.forwarded[1], std::vector<uint32_t>(15)).status().code(),
            StatusCode::kInvalidArgument);
  for (ClientIndex u : {0u, 1u, 3u, 4u}) {
    EXPECT_EQ(h.clients[u].stage(), SecAggClient::Stage::kAborted) << u;
  }
  // Four of six clients aborted: the server still fails cleanly, not wrongly.
  Status closed = h.MaskInputs(inputs);
  EXPECT_NE(closed.message().find("only 2 of 6 clients sent masked inputs"), std::string::npos)
      << closed.ToString();
}

TEST(SecAggClientTest, ADirectoryThatLiesAboutTheClientOrItsNeighboursIsRefused) {
  // k = 8: after clients 0..3 abort, every client keeps at least 1 + 4 = 5 = t holders.
  Harness h(HararyConfig(12, 8, 5));
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.Advertise().ok());
  auto graph = NeighbourGraph::Build(h.config);
  ASSERT_TRUE(graph.ok());

  KeyDirectory lies_about_self = h.directories[0];
  for (PublicKeys& keys : lies_about_self.keys) {
    if (keys.client == 0) keys.mask_public_key[0] ^= 1;
  }
  auto self = h.clients[0].ShareSecrets(lies_about_self);
  EXPECT_EQ(self.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(self.status().message().find("own keys"), std::string::npos);

  KeyDirectory stranger = h.directories[1];
  ClientIndex not_neighbour = 0;
  while (not_neighbour == 1 || graph->Adjacent(1, not_neighbour)) ++not_neighbour;
  stranger.keys.push_back(h.directories[not_neighbour].keys[0]);
  stranger.keys.back().client = not_neighbour;
  auto with_stranger = h.clients[1].ShareSecrets(stranger);
  EXPECT_EQ(with_stranger.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(with_stranger.status().message().find("not a neighbour"), std::string::npos);

  // Itself and one neighbour: fewer holders than t = 5 could never unmask its input.
  KeyDirectory too_small = h.directories[2];
  too_small.keys.clear();
  bool kept_neighbour = false;
  for (const PublicKeys& k : h.directories[2].keys) {
    if (k.client == 2 || !kept_neighbour) too_small.keys.push_back(k);
    kept_neighbour = kept_neighbour || k.client != 2;
  }
  ASSERT_EQ(too_small.keys.size(), 2u);
  auto small = h.clients[2].ShareSecrets(too_small);
  EXPECT_EQ(small.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(small.status().message().find("threshold is 5"), std::string::npos)
      << small.status().message();

  KeyDirectory wrong_recipient = h.directories[3];
  wrong_recipient.recipient = 4;
  EXPECT_EQ(h.clients[3].ShareSecrets(wrong_recipient).status().code(),
            StatusCode::kInvalidArgument);

  // The rest of the round proceeds without clients 0..3.
  const auto inputs = SmallInputs(12, 16, 22);
  ASSERT_TRUE(h.ShareKeys().ok());
  ASSERT_TRUE(h.MaskInputs(inputs).ok());
  auto result = h.Unmask();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->sum, PlainSum(inputs, {4, 5, 6, 7, 8, 9, 10, 11}));
}

TEST(SecAggClientTest, UnmaskRequestsThatWouldLeakAreRefused) {
  Harness h(CompleteConfig(6, 4));
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.Advertise().ok());
  ASSERT_TRUE(h.ShareKeys(/*drop=*/{5}).ok());
  ASSERT_TRUE(h.MaskInputs(SmallInputs(6, 16, 23)).ok());
  ASSERT_EQ(h.request.survivors, (std::vector<ClientIndex>{0, 1, 2, 3, 4}));

  // Leaves the recipient out: it would reveal its own masking key.
  auto without_self = h.clients[0].RevealShares({42, {1, 2, 3, 4}});
  EXPECT_EQ(without_self.status().code(), StatusCode::kFailedPrecondition);
  // Below the threshold.
  auto too_few = h.clients[1].RevealShares({42, {0, 1, 2}});
  EXPECT_NE(too_few.status().message().find("only 3 survivors; threshold is 4"), std::string::npos)
      << too_few.status().message();
  // Names as survivor a client that never shared keys (5 dropped before round 1).
  auto phantom = h.clients[2].RevealShares({42, {0, 1, 2, 3, 5}});
  EXPECT_NE(phantom.status().message().find("never shared keys"), std::string::npos);
  // Unsorted or repeated indices.
  EXPECT_EQ(h.clients[3].RevealShares({42, {0, 3, 1, 2}}).status().code(),
            StatusCode::kInvalidArgument);

  // A well-formed request is answered once, and only once.
  auto reveal = h.clients[4].RevealShares(h.request);
  ASSERT_TRUE(reveal.ok()) << reveal.status().ToString();
  EXPECT_EQ(reveal->self_mask_shares.size(), 5u);
  EXPECT_TRUE(reveal->mask_key_shares.empty());
  EXPECT_EQ(h.clients[4].stage(), SecAggClient::Stage::kDone);
  EXPECT_EQ(h.clients[4].RevealShares(h.request).status().code(), StatusCode::kFailedPrecondition);
}

TEST(SecAggClientTest, AClientWithAnotherConfigurationCannotOpenSharesSoTheRoundFailsCleanly) {
  // Keys are derived under every configuration field: a client told a different vector
  // length (or threshold, graph seed...) derives unrelated keys, and the mismatch surfaces as
  // shares that do not open, never as masks that silently fail to cancel.
  Harness h(CompleteConfig(4, 3, 16));
  ASSERT_TRUE(h.ready());
  auto odd_one = SecAggClient::Create(CompleteConfig(4, 3, 17), 3);
  ASSERT_TRUE(odd_one.ok());
  h.clients[3] = std::move(odd_one).value();
  auto inputs = SmallInputs(4, 16, 24);
  inputs[3].push_back(0);
  ASSERT_TRUE(h.Advertise().ok());
  ASSERT_TRUE(h.ShareKeys().ok());
  Status closed = h.MaskInputs(inputs);
  EXPECT_NE(closed.message().find("only 0 of 4 clients sent masked inputs"), std::string::npos)
      << closed.ToString();
  ASSERT_EQ(h.aborted.size(), 4u);
  for (const auto& [client, reason] : h.aborted) {
    EXPECT_NE(reason.find("tampered"), std::string::npos) << client << ": " << reason;
  }
}

}  // namespace
}  // namespace cleave::secagg
