// ClientIdentities: the binding of transport identities to client ids, on its own. The
// aggregator's use of it over real sockets is in aggregator_sender_test.cc.
#include "federated/aggregator_identity.h"

#include <gtest/gtest.h>

#include <string>

namespace cleave::federated {
namespace {

const std::string kKeyA = "curve:" + std::string(40, 'A');
const std::string kKeyB = "curve:" + std::string(40, 'B');
const std::string kConn1 = "conn:00000001";
const std::string kConn2 = "conn:00000002";

TEST(ClientIdentitiesTest, UnboundPairsAreFreeAndABindingIsOneToOne) {
  ClientIdentities ids;
  EXPECT_EQ(ids.Check(kConn1, "edge-a", /*session_live=*/false), IdentityVerdict::kFree);
  ids.Bind(kConn1, "edge-a");
  EXPECT_EQ(ids.size(), 1u);
  EXPECT_EQ(ids.ClientOf(kConn1), "edge-a");
  EXPECT_EQ(ids.ClientOf(kConn2), "");
  EXPECT_EQ(ids.IdentityOf("edge-a"), kConn1);
  EXPECT_EQ(ids.IdentityOf("edge-b"), "");
  EXPECT_EQ(ids.Check(kConn1, "edge-a", true), IdentityVerdict::kBound);
  // The connection holds one id: naming any other is a mismatch, however many it tries.
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(ids.Check(kConn1, "sybil-" + std::to_string(i), false), IdentityVerdict::kMismatch);
  }
  // Another connection may not use the id while its session is live...
  EXPECT_EQ(ids.Check(kConn2, "edge-a", /*session_live=*/true), IdentityVerdict::kTaken);
  // ...and may take it over once the session ended; the first connection then holds nothing.
  EXPECT_EQ(ids.Check(kConn2, "edge-a", /*session_live=*/false), IdentityVerdict::kReleasable);
  ids.Bind(kConn2, "edge-a");
  EXPECT_EQ(ids.size(), 1u);
  EXPECT_EQ(ids.ClientOf(kConn1), "");
  EXPECT_EQ(ids.ClientOf(kConn2), "edge-a");
  EXPECT_EQ(ids.Check(kConn1, "edge-a", false), IdentityVerdict::kReleasable);
  EXPECT_EQ(ids.Check(kConn2, "edge-a", false), IdentityVerdict::kBound);
}

TEST(ClientIdentitiesTest, AKeyOwnsItsIdForGood) {
  ClientIdentities ids;
  ids.Bind(kKeyA, "edge-a");
  EXPECT_EQ(ids.Check(kKeyA, "edge-a", false), IdentityVerdict::kBound);
  EXPECT_EQ(ids.Check(kKeyA, "edge-b", false), IdentityVerdict::kMismatch);
  // Another key (or a connection) never gets it, live session or not.
  EXPECT_EQ(ids.Check(kKeyB, "edge-a", true), IdentityVerdict::kTaken);
  EXPECT_EQ(ids.Check(kKeyB, "edge-a", false), IdentityVerdict::kTaken);
  EXPECT_EQ(ids.Check(kConn1, "edge-a", false), IdentityVerdict::kTaken);
  EXPECT_EQ(ids.Check(kKeyB, "edge-b", false), IdentityVerdict::kFree);
}

TEST(ClientIdentitiesTest, NamesAndDescriptions) {
  EXPECT_STREQ(IdentityVerdictName(IdentityVerdict::kBound), "bound");
  EXPECT_STREQ(IdentityVerdictName(IdentityVerdict::kFree), "free");
  EXPECT_STREQ(IdentityVerdictName(IdentityVerdict::kReleasable), "releasable");
  EXPECT_STREQ(IdentityVerdictName(IdentityVerdict::kMismatch), "mismatch");
  EXPECT_STREQ(IdentityVerdictName(IdentityVerdict::kTaken), "taken");
  EXPECT_TRUE(ClientIdentities::IsCurveKey(kKeyA));
  EXPECT_FALSE(ClientIdentities::IsCurveKey(kConn1));
  EXPECT_EQ(ClientIdentities::Describe(kKeyA), "curve:AAAAAAAAAAAA...");
  EXPECT_EQ(ClientIdentities::Describe(kConn1), "conn:00000001");
  EXPECT_EQ(ClientIdentities::Describe("odd"), "odd");
}

}  // namespace
}  // namespace cleave::federated
