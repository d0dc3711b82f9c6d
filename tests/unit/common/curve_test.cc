#include "common/curve.h"

#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "common/metrics.h"

namespace cleave {
namespace {

namespace fs = std::filesystem;

class CurveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cleave_test_curve_" + UniqueSuffix());
    ASSERT_TRUE(fs::create_directories(dir_));
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  CurveKeyPair Pair() {
    auto pair = GenerateCurveKeyPair();
    EXPECT_TRUE(pair.ok()) << pair.status().ToString();
    return pair.ok() ? *pair : CurveKeyPair{};
  }
  // One round trip from `client` to `server`; false when the message never arrives.
  static bool RoundTrip(RouterServer& server, DealerClient& client, int attempts = 30) {
    for (int attempt = 0; attempt < attempts; ++attempt) {  // the handshake takes a moment
      if (!client.Send("ping", 100).ok()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      auto got = server.Receive(1000);
      if (!got.ok() || !got->has_value()) return false;
      EXPECT_EQ((*got)->body, "ping");
      EXPECT_TRUE(server.Send((*got)->peer, "pong").ok());
      auto reply = client.Receive(1000);
      return reply.ok() && reply->has_value() && **reply == "pong";
    }
    return false;
  }
  fs::path dir_;
};

TEST_F(CurveTest, KeysAndKeyFiles) {
  const CurveKeyPair pair = Pair();
  EXPECT_TRUE(IsCurveKey(pair.public_z85));
  EXPECT_TRUE(IsCurveKey(pair.secret_z85));
  EXPECT_EQ(*CurvePublicFromSecret(pair.secret_z85), pair.public_z85);
  EXPECT_FALSE(IsCurveKey("short"));
  EXPECT_FALSE(IsCurveKey(std::string(40, '"')));  // not in the Z85 alphabet
  EXPECT_EQ(CurvePublicFromSecret("nope").status().code(), StatusCode::kInvalidArgument);

  ASSERT_TRUE(WriteCurveKeyFiles(pair, dir_ / "server", false).ok());
  struct stat st {};
  ASSERT_EQ(::stat((dir_ / "server.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto secret = ReadCurveKeyFile(dir_ / "server.key", true);
  ASSERT_TRUE(secret.ok()) << secret.status().ToString();
  EXPECT_EQ(secret->secret_z85, pair.secret_z85);
  EXPECT_EQ(secret->public_z85, pair.public_z85);
  auto pub = ReadCurveKeyFile(dir_ / "server.pub", false);
  ASSERT_TRUE(pub.ok());
  EXPECT_EQ(pub->public_z85, pair.public_z85);
  EXPECT_TRUE(pub->secret_z85.empty());
  EXPECT_EQ(WriteCurveKeyFiles(Pair(), dir_ / "server", false).code(), StatusCode::kAlreadyExists);
  // Rejections: a public file where a secret is needed, a readable secret, a mismatch.
  ASSERT_TRUE(
      WriteFileAtomic(dir_ / "public-only.key", "public " + pair.public_z85 + "\n", 0600).ok());
  EXPECT_EQ(ReadCurveKeyFile(dir_ / "public-only.key", true).status().code(),
            StatusCode::kNotFound);
  ASSERT_EQ(::chmod((dir_ / "server.key").c_str(), 0640), 0);
  EXPECT_EQ(ReadCurveKeyFile(dir_ / "server.key", true).status().code(),
            StatusCode::kFailedPrecondition);
  const CurveKeyPair other = Pair();
  ASSERT_TRUE(WriteFileAtomic(dir_ / "mixed.key",
                              "public " + other.public_z85 + "\nsecret " + pair.secret_z85 + "\n",
                              0600)
                  .ok());
  EXPECT_EQ(ReadCurveKeyFile(dir_ / "mixed.key", true).status().code(),
            StatusCode::kInvalidArgument);
  ASSERT_TRUE(WriteFileAtomic(dir_ / "bad.pub", "public abc\n").ok());
  EXPECT_EQ(ReadCurveKeyFile(dir_ / "bad.pub", false).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadCurveKeyFile(dir_ / "missing.pub", false).status().code(), StatusCode::kNotFound);
}

TEST_F(CurveTest, AllowListsParseCommentsAndNameTheBadLine) {
  const CurveKeyPair a = Pair(), b = Pair();
  auto keys = ParseAllowList("# edges of site 1\n\n" + a.public_z85 + "  gateway-1\npublic " +
                             b.public_z85 + "\n   \n");
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  EXPECT_EQ(keys->keys.size(), 2u);
  EXPECT_EQ(keys->keys.count(a.public_z85), 1u);
  EXPECT_EQ(keys->keys.count(b.public_z85), 1u);
  auto bad = ParseAllowList(a.public_z85 + "\nnot-a-key\n");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("line 2"), std::string::npos) << bad.status().ToString();
}

// Lists written before client ids existed mean what they meant: keys, and no id for any.
TEST_F(CurveTest, AllowListsWithoutIdsBindNoClientIds) {
  const CurveKeyPair a = Pair(), b = Pair(), c = Pair();
  auto list = ParseAllowList(a.public_z85 + " gateway-1 site=3 id:7\npublic " + b.public_z85 +
                             " # id=ignored\n" + c.public_z85 + "\t# moved from rack 2\n");
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_EQ(list->keys.size(), 3u);
  EXPECT_TRUE(list->client_id_of_key.empty());
  EXPECT_TRUE(list->key_of_client_id.empty());
}

TEST_F(CurveTest, AllowListsBindKeysToClientIds) {
  const CurveKeyPair a = Pair(), b = Pair(), c = Pair();
  auto list = ParseAllowList("# site 1\n" + a.public_z85 + " id=gateway-a  # rack 3\npublic " +
                             b.public_z85 + " old-name id=b.2@site:1\n" + c.public_z85 + "\n" +
                             a.public_z85 + "\n" + a.public_z85 + " id=gateway-a\n");
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_EQ(list->keys.size(), 3u);
  const std::map<std::string, std::string> ids = {{a.public_z85, "gateway-a"},
                                                  {b.public_z85, "b.2@site:1"}};
  EXPECT_EQ(list->client_id_of_key, ids);
  EXPECT_EQ(list->key_of_client_id.at("gateway-a"), a.public_z85);
  EXPECT_EQ(list->key_of_client_id.at("b.2@site:1"), b.public_z85);
  EXPECT_EQ(list->key_of_client_id.size(), 2u);
}

TEST_F(CurveTest, AllowListIdErrorsNameTheLine) {
  const CurveKeyPair a = Pair(), b = Pair();
  const std::string ok = "# header\n" + a.public_z85 + " id=edge-a\n";
  const struct {
    std::string line;     // the list's third line, after `ok`
    std::string message;  // a fragment of the error besides "line 3"
  } cases[] = {
      {b.public_z85 + " id=", "client id is empty"},
      {b.public_z85 + " id=-edge", "must start with a letter or digit"},
      {b.public_z85 + " id=edge/b", "may use only"},
      {b.public_z85 + " id=" + std::string(129, 'x'), "more than the limit of 128"},
      {b.public_z85 + " id=edge-b id=edge-c", "more than one id= token"},
      {b.public_z85 + " id=edge-a", "client id 'edge-a' is already bound to another key on line 2"},
      {a.public_z85 + " id=edge-b", "already bound to client id 'edge-a' on line 2"},
      {"public " + a.public_z85 + " id=edge-c # moved", "already bound to client id 'edge-a'"},
  };
  for (const auto& c : cases) {
    auto list = ParseAllowList(ok + c.line + "\n" + b.public_z85 + "\n");
    ASSERT_FALSE(list.ok()) << c.line;
    EXPECT_EQ(list.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(list.status().message().find("line 3: "), std::string::npos)
        << list.status().ToString();
    EXPECT_NE(list.status().message().find(c.message), std::string::npos)
        << list.status().ToString();
  }
}

// The bindings follow reloads; a list that does not parse keeps the previous ones.
TEST_F(CurveTest, ZapHandlerLooksUpClientIdsInTheListInForce) {
  const CurveKeyPair a = Pair(), b = Pair();
  const fs::path allow = dir_ / "allow";
  ASSERT_TRUE(WriteFileAtomic(allow, a.public_z85 + " id=edge-a\n" + b.public_z85 + "\n").ok());
  TransportContext context;
  auto zap = ZapHandler::Start(context, allow);
  ASSERT_TRUE(zap.ok()) << zap.status().ToString();
  const CurveClientIds ids = (*zap)->ClientIds();
  EXPECT_EQ((*zap)->ClientIdFor(a.public_z85), "edge-a");
  EXPECT_EQ((*zap)->KeyForClientId("edge-a"), a.public_z85);
  EXPECT_EQ(ids.client_id_of_key(a.public_z85), "edge-a");
  EXPECT_EQ(ids.key_of_client_id("edge-a"), a.public_z85);
  EXPECT_EQ((*zap)->ClientIdFor(b.public_z85), std::nullopt);  // listed, first come
  EXPECT_EQ((*zap)->KeyForClientId("edge-b"), std::nullopt);

  ASSERT_TRUE(
      WriteFileAtomic(allow, a.public_z85 + " id=edge-a2\n" + b.public_z85 + " id=edge-b\n").ok());
  (*zap)->ReloadAllowList();
  for (int i = 0; i < 100 && (*zap)->ClientIdFor(b.public_z85) == std::nullopt; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ((*zap)->ClientIdFor(b.public_z85), "edge-b");
  EXPECT_EQ(ids.client_id_of_key(a.public_z85), "edge-a2");
  EXPECT_EQ(ids.key_of_client_id("edge-a"), std::nullopt);
  EXPECT_EQ(ids.key_of_client_id("edge-b"), b.public_z85);
  const uint64_t reloads = (*zap)->reloads();

  // The same id for both keys: refused, the previous bindings stay.
  ASSERT_TRUE(
      WriteFileAtomic(allow, a.public_z85 + " id=edge-b\n" + b.public_z85 + " id=edge-b\n").ok());
  (*zap)->ReloadAllowList();
  for (int i = 0; i < 100 && (*zap)->last_error().empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_NE((*zap)->last_error().find("line 2"), std::string::npos) << (*zap)->last_error();
  EXPECT_EQ((*zap)->reloads(), reloads);
  EXPECT_EQ(ids.client_id_of_key(a.public_z85), "edge-a2");
  EXPECT_EQ(ids.key_of_client_id("edge-b"), b.public_z85);

  // Ids removed: the keys stay admitted, bound to nothing.
  ASSERT_TRUE(WriteFileAtomic(allow, a.public_z85 + "\n" + b.public_z85 + "\n").ok());
  (*zap)->ReloadAllowList();
  for (int i = 0; i < 100 && (*zap)->ClientIdFor(a.public_z85) != std::nullopt; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(ids.client_id_of_key(a.public_z85), std::nullopt);
  EXPECT_EQ(ids.key_of_client_id("edge-b"), std::nullopt);
  EXPECT_EQ((*zap)->allowed_keys(), 2u);
  EXPECT_TRUE((*zap)->last_error().empty());
}

TEST_F(CurveTest, OnlyListedClientsAreServedAndTheListReloads) {
  const CurveKeyPair server_keys = Pair(), listed = Pair(), unknown = Pair();
  const fs::path allow = dir_ / "allow";
  ASSERT_TRUE(WriteFileAtomic(allow, listed.public_z85 + "\n").ok());
  TransportContext context;
  Metrics metrics;
  prometheus::Counter& refused = metrics.CurveRefused("test");
  auto zap = ZapHandler::Start(context, allow, "cleave", &refused);
  ASSERT_TRUE(zap.ok()) << zap.status().ToString();
  EXPECT_EQ((*zap)->allowed_keys(), 1u);
  // One handler per context: a second one cannot bind the ZAP endpoint.
  EXPECT_FALSE(ZapHandler::Start(context, allow).ok());

  SocketOptions server_options;
  server_options.configure = CurveServer(server_keys, zap->get());
  auto server = RouterServer::Bind(context, "tcp://127.0.0.1:0", server_options);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  const auto connect = [&](const CurveKeyPair* keys) {
    SocketOptions o;
    if (keys) o.configure = CurveClient(*keys, server_keys.public_z85);
    auto client = DealerClient::Connect(context, (*server)->endpoint(), o);
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    return std::move(*client);
  };
  auto good = connect(&listed);
  EXPECT_TRUE(RoundTrip(**server, *good));
  EXPECT_GE((*zap)->accepted(), 1u);
  EXPECT_EQ(refused.Value(), 0.0);

  auto stranger = connect(&unknown);
  EXPECT_FALSE(RoundTrip(**server, *stranger, 8));
  EXPECT_GE((*zap)->refused(), 1u);
  // The exported counter follows (incremented by the handler thread just after refused()).
  for (int i = 0; i < 100 && refused.Value() < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GE(refused.Value(), 1.0);
  auto plain = connect(nullptr);  // no CURVE at all: the handshake cannot even start
  EXPECT_FALSE(plain->Send("ping", 200).ok());
  auto nothing = (*server)->Receive(300);
  ASSERT_TRUE(nothing.ok());
  EXPECT_FALSE(nothing->has_value());

  // The stranger is added: after a reload it is admitted (libzmq does not retry a refused
  // handshake, so it connects again).
  ASSERT_TRUE(WriteFileAtomic(allow, listed.public_z85 + "\n" + unknown.public_z85 + "\n").ok());
  (*zap)->ReloadAllowList();
  stranger = connect(&unknown);
  EXPECT_TRUE(RoundTrip(**server, *stranger));
  EXPECT_EQ((*zap)->allowed_keys(), 2u);
  EXPECT_GE((*zap)->reloads(), 1u);
  // A broken list keeps the previous one in force and says why.
  ASSERT_TRUE(WriteFileAtomic(allow, "garbage\n").ok());
  (*zap)->ReloadAllowList();
  for (int i = 0; i < 50 && (*zap)->last_error().empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_NE((*zap)->last_error().find("line 1"), std::string::npos);
  EXPECT_EQ((*zap)->allowed_keys(), 2u);
  // Changing the file is enough (no explicit reload): checked about once a second.
  ASSERT_TRUE(WriteFileAtomic(allow, "# nobody\n").ok());
  for (int i = 0; i < 100 && (*zap)->allowed_keys() != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ((*zap)->allowed_keys(), 0u);
  EXPECT_TRUE((*zap)->last_error().empty());
  good.reset();
  stranger.reset();
  plain.reset();
  server->reset();
}

// Under CURVE a sender is its key: every connection of one key has the same identity, which
// the ZAP handler vouches for and the message body cannot change.
TEST_F(CurveTest, EnvelopeNamesTheClientsKey) {
  const CurveKeyPair server_keys = Pair(), alice = Pair(), bob = Pair();
  const fs::path allow = dir_ / "allow";
  ASSERT_TRUE(WriteFileAtomic(allow, alice.public_z85 + "\n" + bob.public_z85 + "\n").ok());
  TransportContext context;
  auto zap = ZapHandler::Start(context, allow);
  ASSERT_TRUE(zap.ok()) << zap.status().ToString();
  SocketOptions server_options;
  server_options.configure = CurveServer(server_keys, zap->get());
  auto server = RouterServer::Bind(context, "tcp://127.0.0.1:0", server_options);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  const auto connect = [&](const CurveKeyPair& keys) {
    SocketOptions o;
    o.configure = CurveClient(keys, server_keys.public_z85);
    auto client = DealerClient::Connect(context, (*server)->endpoint(), o);
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    return std::move(*client);
  };
  // The identity of the next message `client` manages to send (the handshake takes a moment).
  const auto identity_of = [&](DealerClient& client) -> Envelope {
    for (int attempt = 0; attempt < 60; ++attempt) {
      if (!client.Send("who am I", 100).ok()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      auto got = (*server)->Receive(2000);
      if (got.ok() && got->has_value()) return **got;
    }
    ADD_FAILURE() << "nothing arrived";
    return Envelope{};
  };
  auto alice_1 = connect(alice), alice_2 = connect(alice), bob_1 = connect(bob);
  const Envelope a1 = identity_of(*alice_1), a2 = identity_of(*alice_2), b1 = identity_of(*bob_1);
  EXPECT_EQ(a1.identity, "curve:" + alice.public_z85);
  EXPECT_EQ(a2.identity, a1.identity);
  EXPECT_NE(a2.peer, a1.peer);  // two connections, one key
  EXPECT_EQ(b1.identity, "curve:" + bob.public_z85);
  alice_1.reset();
  alice_2.reset();
  bob_1.reset();
  server->reset();
}

TEST_F(CurveTest, CurveWithoutAZapHandlerOrWithBadKeysIsAnError) {
  TransportContext context;
  SocketOptions o;
  o.configure = CurveServer(Pair(), nullptr);
  auto server = RouterServer::Bind(context, "tcp://127.0.0.1:0", o);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(server.status().message().find("ZAP"), std::string::npos);
  // A missing allow list is an error naming it.
  auto zap = ZapHandler::Start(context, dir_ / "no-such-list");
  ASSERT_FALSE(zap.ok());
  EXPECT_EQ(zap.status().code(), StatusCode::kNotFound);
  SocketOptions c;
  c.configure = CurveClient(Pair(), "not-a-key");
  EXPECT_EQ(DealerClient::Connect(context, "tcp://127.0.0.1:9", c).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cleave
