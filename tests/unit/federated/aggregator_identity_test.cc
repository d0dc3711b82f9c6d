// ClientIdentities: the binding of transport identities to client ids, on its own. The
// aggregator's use of it over real sockets is in aggregator_sender_test.cc.
#include "federated/aggregator_identity.h"

#include <gtest/gtest.h>

#include <map>
#include <optional>
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

// An allow list binding key A to "edge-a" (key C is listed without an id), as a lookup that
// the test can change, like a reloaded list.
struct FakeAllowList {
  std::map<std::string, std::string> id_of_key;  // Z85 key -> client id
  CurveClientIds Lookups() {
    CurveClientIds ids;
    ids.client_id_of_key = [this](const std::string& key) -> std::optional<std::string> {
      auto it = id_of_key.find(key);
      if (it == id_of_key.end()) return std::nullopt;
      return it->second;
    };
    ids.key_of_client_id = [this](const std::string& id) -> std::optional<std::string> {
      for (const auto& [key, bound] : id_of_key) {
        if (bound == id) return key;
      }
      return std::nullopt;
    };
    return ids;
  }
};

const std::string kZ85A(40, 'A'), kZ85C(40, 'C');
const std::string kKeyC = "curve:" + kZ85C;

TEST(ClientIdentitiesTest, AListedIdIsReservedForItsKeyBeforeItEverRegistered) {
  FakeAllowList list{{{kZ85A, "edge-a"}}};
  ClientIdentities ids(list.Lookups());
  EXPECT_EQ(ids.ListedClientOf(kKeyA), "edge-a");
  EXPECT_EQ(ids.ListedClientOf(kKeyB), "");
  EXPECT_EQ(ids.ListedClientOf(kConn1), "");
  EXPECT_EQ(ids.ListedIdentityOf("edge-a"), kKeyA);
  EXPECT_EQ(ids.ListedIdentityOf("edge-b"), "");
  // Nobody holds edge-a yet, and still nobody but key A may have it.
  EXPECT_EQ(ids.Check(kKeyB, "edge-a", false), IdentityVerdict::kTaken);
  EXPECT_EQ(ids.Check(kConn1, "edge-a", false), IdentityVerdict::kTaken);
  EXPECT_EQ(ids.size(), 0u);
  // Key A speaks for edge-a only, first registration or not.
  EXPECT_EQ(ids.Check(kKeyA, "edge-b", false), IdentityVerdict::kMismatch);
  EXPECT_EQ(ids.Check(kKeyA, "edge-a", false), IdentityVerdict::kFree);
  ids.Bind(kKeyA, "edge-a");
  EXPECT_EQ(ids.Check(kKeyA, "edge-a", true), IdentityVerdict::kBound);
  EXPECT_EQ(ids.Check(kKeyA, "edge-b", true), IdentityVerdict::kMismatch);
  EXPECT_EQ(ids.Check(kKeyB, "edge-a", false), IdentityVerdict::kTaken);
  // Unlisted keys and connections keep first come for the other ids.
  EXPECT_EQ(ids.Check(kKeyB, "edge-b", false), IdentityVerdict::kFree);
  ids.Bind(kKeyB, "edge-b");
  EXPECT_EQ(ids.Check(kKeyC, "edge-b", false), IdentityVerdict::kTaken);
  EXPECT_EQ(ids.Check(kConn1, "edge-c", false), IdentityVerdict::kFree);
}

// An aggregator restart forgets every binding; the list's do not depend on that memory.
TEST(ClientIdentitiesTest, ListedBindingsSurviveARestart) {
  FakeAllowList list{{{kZ85A, "edge-a"}}};
  {
    ClientIdentities before(list.Lookups());
    before.Bind(kKeyA, "edge-a");
  }
  ClientIdentities after(list.Lookups());  // nothing bound
  EXPECT_EQ(after.Check(kKeyB, "edge-a", false), IdentityVerdict::kTaken);
  EXPECT_EQ(after.Check(kConn1, "edge-a", false), IdentityVerdict::kTaken);
  EXPECT_EQ(after.Check(kKeyA, "edge-a", false), IdentityVerdict::kFree);
  // Without the list, the first key to come back would have had it.
  ClientIdentities unlisted;
  EXPECT_EQ(unlisted.Check(kKeyB, "edge-a", false), IdentityVerdict::kFree);
}

// A list reloaded with new ids wins over first-come bindings made before it.
TEST(ClientIdentitiesTest, TheListWinsOverEarlierFirstComeBindings) {
  FakeAllowList list;
  ClientIdentities ids(list.Lookups());
  ids.Bind(kKeyB, "edge-a");  // key B came first, while the list bound nothing
  ids.Bind(kKeyA, "edge-x");
  list.id_of_key[kZ85A] = "edge-a";
  // Key B may no longer use edge-a, nor mint another id.
  EXPECT_EQ(ids.Check(kKeyB, "edge-a", true), IdentityVerdict::kTaken);
  EXPECT_EQ(ids.Check(kKeyB, "edge-b", true), IdentityVerdict::kMismatch);
  // Key A takes edge-a over by registering, and gives its first-come id up.
  EXPECT_EQ(ids.Check(kKeyA, "edge-x", true), IdentityVerdict::kMismatch);
  EXPECT_EQ(ids.Check(kKeyA, "edge-a", true), IdentityVerdict::kReleasable);
  ids.Bind(kKeyA, "edge-a");
  EXPECT_EQ(ids.ClientOf(kKeyA), "edge-a");
  EXPECT_EQ(ids.IdentityOf("edge-a"), kKeyA);
  EXPECT_EQ(ids.ClientOf(kKeyB), "");
  EXPECT_EQ(ids.IdentityOf("edge-x"), "");
  EXPECT_EQ(ids.size(), 1u);
  EXPECT_EQ(ids.Check(kKeyA, "edge-a", true), IdentityVerdict::kBound);
  // Key C (unlisted) may take the id key A gave up.
  EXPECT_EQ(ids.Check(kKeyC, "edge-x", false), IdentityVerdict::kFree);
  // The list drops the ids: key A keeps edge-a as a first-come binding.
  list.id_of_key.clear();
  EXPECT_EQ(ids.Check(kKeyA, "edge-a", false), IdentityVerdict::kBound);
  EXPECT_EQ(ids.Check(kKeyB, "edge-a", false), IdentityVerdict::kTaken);
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
