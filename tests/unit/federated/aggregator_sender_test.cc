// The aggregator serves a client id only to the transport identity bound to it
// (federated/aggregator_identity.h): the real AggregatorService on loopback, hand-driven
// clients on their own DEALERs (plain and CURVE), forged ids from other connections and keys.
// Every refusal must be answered, counted (summary counters and
// cleave_federated_identity_refused_total) and leave the rounds as if it had never been sent.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "common/curve.h"
#include "common/file_util.h"
#include "common/fl_wire.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/transport.h"
#include "federated/aggregator_service.h"
#include "federated/secure_round.h"
#include "federated/weights.h"
#include "federated/wire_convert.h"
#include "split/vision_model.h"

namespace cleave::federated {
namespace {

namespace fl = wire::fl;
namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kWaitMs = 30000;  // generous: the machine is shared; only reached on failure

// One client on its own DEALER (its own connection), driven by the test thread.
class WireClient {
 public:
  WireClient(TransportContext& context, const std::string& endpoint, SocketOptions options = {}) {
    auto dealer = DealerClient::Connect(context, endpoint, options);
    EXPECT_TRUE(dealer.ok()) << dealer.status().ToString();
    if (dealer.ok()) dealer_ = std::move(dealer).value();
  }

  void Send(const fl::Message& message) {
    ASSERT_TRUE(dealer_->Send(fl::EncodeMessage(message), kWaitMs).ok());
  }
  // The next message of kind T; other kinds are dropped.
  template <typename T>
  std::optional<T> Expect(int timeout_ms = kWaitMs) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline) {
      auto in = dealer_->Receive(50);
      if (!in.ok()) return std::nullopt;
      if (!in->has_value()) continue;
      auto message = fl::DecodeMessage(**in);
      if (!message.ok()) continue;
      if (auto* body = std::get_if<T>(&message->body)) return *body;
    }
    return std::nullopt;
  }
  // Drops whatever has arrived.
  void Drain() {
    for (auto in = dealer_->Receive(0); in.ok() && in->has_value(); in = dealer_->Receive(0)) {
    }
  }

  fl::RegisterReply Register(const std::string& id, uint64_t examples, const std::string& sha) {
    fl::Register reg;
    reg.client_id = id;
    reg.num_examples = examples;
    reg.capabilities.can_train_full = reg.capabilities.can_train_head = true;
    reg.model_name = "tiny";
    reg.layout_sha256 = sha;
    Send(reg);
    auto reply = Expect<fl::RegisterReply>();
    EXPECT_TRUE(reply.has_value()) << "no RegisterReply for " << id;
    return reply.value_or(fl::RegisterReply{});
  }
  void Heartbeat(const std::string& id) {
    fl::Heartbeat hb;
    hb.client_id = id;
    Send(hb);
  }
  void Bye(const std::string& id) {
    fl::Bye bye;
    bye.client_id = id;
    bye.message = "leaving";
    Send(bye);
  }
  // An Update for `config`'s round with the round's global weights as the trained ones.
  void SendUpdate(const fl::RoundConfig& config, const std::string& id) {
    Weights global;
    for (const auto& t : config.weights) global.push_back(*FromWireTensor(t));
    fl::Update update;
    update.round = config.round;
    update.client_id = id;
    update.num_examples = 10;
    update.train_loss = 0.5;
    update.tensors = MaskedToWire(global, config.trainable);
    Send(update);
  }
  fl::UpdateAck ExpectAck() {
    auto ack = Expect<fl::UpdateAck>();
    EXPECT_TRUE(ack.has_value()) << "no UpdateAck";
    return ack.value_or(fl::UpdateAck{});
  }

 private:
  std::unique_ptr<DealerClient> dealer_;
};

void ExpectIdentityRefusal(const fl::RegisterReply& reply, const std::string& fragment) {
  EXPECT_FALSE(reply.accepted);
  EXPECT_NE(reply.error.find("identity: "), std::string::npos) << reply.error;
  EXPECT_NE(reply.error.find(fragment), std::string::npos) << reply.error;
}

void ExpectIdentityRefusal(const fl::UpdateAck& ack, const std::string& fragment) {
  EXPECT_FALSE(ack.accepted);
  EXPECT_EQ(ack.reason, fl::AckReason::kRejected) << fl::AckReasonName(ack.reason);
  EXPECT_NE(ack.message.find("identity: "), std::string::npos) << ack.message;
  EXPECT_NE(ack.message.find(fragment), std::string::npos) << ack.message;
}

class AggregatorSenderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    spec_ = split::VisionModelSpec::TinySplit();
    torch::manual_seed(3);
    split::SplitVisionNet net(spec_);
    initial_ = GetWeights(*net);
    sha_ = LayoutSha256(LayoutOf(*net));
    dir_ = fs::temp_directory_path() / ("cleave_test_sender_" + UniqueSuffix());
    ASSERT_TRUE(fs::create_directories(dir_));
  }
  void TearDown() override {
    Join();
    service_.reset();
    zap_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // One round, started once `clients` clients with data registered; nobody times out.
  AggregatorOptions Options(int clients) {
    AggregatorOptions o;
    o.listen = "tcp://127.0.0.1:0";
    o.rounds = 1;
    o.wait_for_clients = clients;
    o.engine.min_clients = clients;
    o.engine.quorum = clients;
    o.engine.trainable = TrainableSet::kAll;
    o.engine.deadline_micros = 60'000'000;
    o.poll_interval_ms = 20;
    o.client_timeout_ms = 600000;
    o.metrics = metrics_;
    return o;
  }
  void Start(AggregatorOptions options) {
    AggregatorModel model;
    model.spec = spec_;
    model.initial = initial_;
    model.model_name = "tiny";
    auto service = AggregatorService::Create(options, model, context_, SystemClock());
    ASSERT_TRUE(service.ok()) << service.status().ToString();
    service_ = std::move(service).value();
    thread_ = std::thread([this] {
      run_status_ = service_->Run([this] { return stop_.load(); });
      finished_ = true;
    });
  }
  // CURVE with an allow list of `keys`, the i-th bound to client id `ids[i]` when that is
  // given and not empty; returns the server's key pair for the clients.
  CurveKeyPair StartCurve(AggregatorOptions& options, const std::vector<CurveKeyPair>& keys,
                          const std::vector<std::string>& ids = {}) {
    auto server = GenerateCurveKeyPair();
    EXPECT_TRUE(server.ok());
    std::string list;
    for (size_t i = 0; i < keys.size(); ++i) {
      list += keys[i].public_z85;
      if (i < ids.size() && !ids[i].empty()) list += " id=" + ids[i];
      list += "\n";
    }
    EXPECT_TRUE(WriteFileAtomic(dir_ / "allow", list).ok());
    auto zap = ZapHandler::Start(context_, dir_ / "allow");
    EXPECT_TRUE(zap.ok()) << zap.status().ToString();
    zap_ = std::move(zap).value();
    options.socket_configure = CurveServer(*server, zap_.get());
    options.curve_client_ids = zap_->ClientIds();
    return *server;
  }
  // Waits for the run to end by itself (all rounds done), else stops it; then the summary.
  json Finish(int64_t timeout_ms = 60000) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (!finished_.load() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_TRUE(finished_.load()) << "the round never finished";
    Join();
    return service_->Summary();
  }
  void Join() {
    if (!thread_.joinable()) return;
    stop_ = true;
    thread_.join();
  }
  // Polls a thread-safe counter until it reaches `value` (the service runs on its thread).
  static bool Reaches(const prometheus::Counter& counter, double value) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kWaitMs);
    while (counter.Value() < value && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return counter.Value() == value;
  }
  // Polls cleave_connected_edges (live registered clients) until it is `value`.
  bool ConnectedEdgesReach(double value) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kWaitMs);
    while (metrics_->ConnectedEdges().Value() != value &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return metrics_->ConnectedEdges().Value() == value;
  }
  const FederatedMetrics& fed() { return metrics_->Federated(); }
  // Both clients answer their RoundConfig with an update that is accepted.
  static void PlayRound(WireClient& a, const std::string& a_id, WireClient& b,
                        const std::string& b_id) {
    auto config_a = a.Expect<fl::RoundConfig>();
    auto config_b = b.Expect<fl::RoundConfig>();
    ASSERT_TRUE(config_a.has_value() && config_b.has_value());
    a.SendUpdate(*config_a, a_id);
    b.SendUpdate(*config_b, b_id);
    EXPECT_TRUE(a.ExpectAck().accepted);
    EXPECT_TRUE(b.ExpectAck().accepted);
  }
  // The round as the two legitimate clients alone would have left it, after `registrations`
  // accepted Registers.
  static void ExpectUntouchedRound(const json& summary, int registrations = 2) {
    ASSERT_EQ(summary["rounds"].size(), 1u) << summary.dump(2);
    const json& round = summary["rounds"][0];
    EXPECT_TRUE(round["applied"].get<bool>()) << round.dump(2);
    EXPECT_EQ(round["sampled"], 2) << round.dump(2);
    EXPECT_EQ(round["succeeded"], 2) << round.dump(2);
    EXPECT_EQ(round["failed"], 0) << round.dump(2);
    EXPECT_EQ(round["rejected"], 0) << round.dump(2);
    EXPECT_EQ(round["late"], 0) << round.dump(2);
    EXPECT_EQ(summary["clients"], 2) << summary.dump(2);
    EXPECT_EQ(summary["counters"].value("registered", 0), registrations) << summary.dump(2);
  }

  // Declared first: destroyed after every socket of a test.
  TransportContext context_;
  std::shared_ptr<Metrics> metrics_ = std::make_shared<Metrics>();
  split::VisionModelSpec spec_;
  Weights initial_;
  std::string sha_;
  fs::path dir_;
  std::unique_ptr<ZapHandler> zap_;
  std::unique_ptr<AggregatorService> service_;
  std::thread thread_;
  std::atomic<bool> stop_{false}, finished_{false};
  Status run_status_ = Status::Internal("not run");
};

TEST_F(AggregatorSenderTest, SecondConnectionClaimingALiveIdIsRefusedAndChangesNoRound) {
  Start(Options(2));
  WireClient a(context_, service_->endpoint()), b(context_, service_->endpoint());
  WireClient thief(context_, service_->endpoint());
  ASSERT_TRUE(a.Register("edge-a", 64, sha_).accepted);
  ExpectIdentityRefusal(thief.Register("edge-a", 64, sha_), "'edge-a' belongs to another");
  ASSERT_TRUE(b.Register("edge-b", 64, sha_).accepted);

  // The round is open; the thief tries every message of edge-a's.
  auto config_a = a.Expect<fl::RoundConfig>();
  ASSERT_TRUE(config_a.has_value());
  thief.SendUpdate(*config_a, "edge-a");
  ExpectIdentityRefusal(thief.ExpectAck(), "edge-a");
  thief.Heartbeat("edge-a");
  auto refused = thief.Expect<fl::RegisterReply>();
  ASSERT_TRUE(refused.has_value());
  ExpectIdentityRefusal(*refused, "edge-a");
  thief.Bye("edge-a");  // unanswered, but counted: edge-a must not be reported failed
  ASSERT_TRUE(Reaches(*fed().identity_taken, 4));

  a.SendUpdate(*config_a, "edge-a");
  EXPECT_TRUE(a.ExpectAck().accepted) << "edge-a's own update must not be a duplicate";
  auto config_b = b.Expect<fl::RoundConfig>();
  ASSERT_TRUE(config_b.has_value());
  b.SendUpdate(*config_b, "edge-b");
  EXPECT_TRUE(b.ExpectAck().accepted);
  const json summary = Finish();
  ExpectUntouchedRound(summary);
  EXPECT_EQ(summary["counters"].value("identity_refused_taken", 0), 4) << summary.dump(2);
  EXPECT_EQ(summary["counters"].value("identity_refused_mismatch", 0), 0);
  EXPECT_EQ(fed().identity_mismatch->Value(), 0);
}

TEST_F(AggregatorSenderTest, CurveKeyClaimingAnotherKeysIdIsRefusedAndChangesNoRound) {
  auto k1 = GenerateCurveKeyPair(), k2 = GenerateCurveKeyPair();
  ASSERT_TRUE(k1.ok() && k2.ok());
  AggregatorOptions options = Options(2);
  const CurveKeyPair server = StartCurve(options, {*k1, *k2});
  Start(options);
  const auto as = [&](const CurveKeyPair& keys) {
    SocketOptions o;
    o.configure = CurveClient(keys, server.public_z85);
    return std::make_unique<WireClient>(context_, service_->endpoint(), o);
  };
  auto first = as(*k1), other = as(*k2);
  ASSERT_TRUE(first->Register("edge-a", 64, sha_).accepted);
  ExpectIdentityRefusal(other->Register("edge-a", 64, sha_), "another CURVE key");
  other->Heartbeat("edge-a");
  auto refused = other->Expect<fl::RegisterReply>();
  ASSERT_TRUE(refused.has_value());
  ExpectIdentityRefusal(*refused, "edge-a");
  // The key keeps its id after its session ends: a Bye does not hand it to another key.
  ASSERT_TRUE(ConnectedEdgesReach(1));
  first->Bye("edge-a");
  ASSERT_TRUE(ConnectedEdgesReach(0));
  ExpectIdentityRefusal(other->Register("edge-a", 64, sha_), "another CURVE key");
  ASSERT_TRUE(Reaches(*fed().identity_taken, 3));
  // The same key on a new connection is the same client (a restarted edge) - and only that.
  auto second = as(*k1);
  ASSERT_TRUE(second->Register("edge-a", 64, sha_).accepted);
  ExpectIdentityRefusal(second->Register("edge-c", 64, sha_), "speaks for client 'edge-a'");
  ASSERT_TRUE(other->Register("edge-b", 64, sha_).accepted);

  auto config = other->Expect<fl::RoundConfig>();
  ASSERT_TRUE(config.has_value());
  other->SendUpdate(*config, "edge-a");
  ExpectIdentityRefusal(other->ExpectAck(), "not 'edge-a'");
  ASSERT_TRUE(Reaches(*fed().identity_mismatch, 2));
  // Round configs go to edge-a's latest connection.
  auto config_a = second->Expect<fl::RoundConfig>();
  ASSERT_TRUE(config_a.has_value());
  second->SendUpdate(*config_a, "edge-a");
  EXPECT_TRUE(second->ExpectAck().accepted);
  other->SendUpdate(*config, "edge-b");
  EXPECT_TRUE(other->ExpectAck().accepted);
  const json summary = Finish();
  ExpectUntouchedRound(summary, /*registrations=*/3);  // edge-a twice (two connections)
  EXPECT_EQ(summary["counters"].value("identity_refused_taken", 0), 3);
  EXPECT_EQ(summary["counters"].value("identity_refused_mismatch", 0), 2);
}

// The allow list binds key A to "a": the id is A's before A ever connected (as after an
// aggregator restart), and A speaks for nothing else. Key B is listed without an id.
TEST_F(AggregatorSenderTest, IdBoundByTheAllowListIsReservedForItsKey) {
  auto ka = GenerateCurveKeyPair(), kb = GenerateCurveKeyPair();
  ASSERT_TRUE(ka.ok() && kb.ok());
  AggregatorOptions options = Options(2);
  const CurveKeyPair server = StartCurve(options, {*ka, *kb}, {"a", ""});
  Start(options);
  const auto as = [&](const CurveKeyPair& keys) {
    SocketOptions o;
    o.configure = CurveClient(keys, server.public_z85);
    return std::make_unique<WireClient>(context_, service_->endpoint(), o);
  };
  auto b = as(*kb);
  ExpectIdentityRefusal(b->Register("a", 64, sha_), "another CURVE key (the allow list binds it)");
  b->Heartbeat("a");
  auto refused = b->Expect<fl::RegisterReply>();
  ASSERT_TRUE(refused.has_value());
  ExpectIdentityRefusal(*refused, "'a' belongs to another CURVE key");
  ASSERT_TRUE(Reaches(*fed().identity_taken, 2));
  EXPECT_EQ(metrics_->ConnectedEdges().Value(), 0);  // nobody registered

  auto a = as(*ka);
  const fl::RegisterReply reply = a->Register("a", 64, sha_);
  ASSERT_TRUE(reply.accepted) << reply.error;
  ExpectIdentityRefusal(a->Register("b", 64, sha_),
                        "is bound by the CURVE allow list to client 'a', not 'b'");
  ASSERT_TRUE(Reaches(*fed().identity_mismatch, 1));
  ASSERT_TRUE(b->Register("b", 64, sha_).accepted);  // unlisted keys: first come
  PlayRound(*a, "a", *b, "b");
  const json summary = Finish();
  ExpectUntouchedRound(summary);
  EXPECT_EQ(summary["counters"].value("identity_refused_taken", 0), 2);
  EXPECT_EQ(summary["counters"].value("identity_refused_mismatch", 0), 1);
}

TEST_F(AggregatorSenderTest, TenThousandFreshIdsFromOneConnectionAreRefused) {
  Start(Options(2));
  WireClient a(context_, service_->endpoint()), b(context_, service_->endpoint());
  ASSERT_TRUE(a.Register("edge-a", 64, sha_).accepted);
  // edge-a's connection turns Sybil: every further id is refused, whatever it claims.
  constexpr int kSybils = 10000;
  for (int i = 0; i < kSybils; ++i) {
    fl::Register reg;
    reg.client_id = "sybil-" + std::to_string(i);
    reg.num_examples = 64;
    reg.model_name = "tiny";
    reg.layout_sha256 = sha_;
    a.Send(reg);
    if (i % 100 == 0) a.Drain();  // keep the replies flowing
  }
  ASSERT_TRUE(Reaches(*fed().identity_mismatch, kSybils));
  auto refusal = a.Expect<fl::RegisterReply>();
  ASSERT_TRUE(refusal.has_value());
  ExpectIdentityRefusal(*refusal, "speaks for client 'edge-a'");
  a.Drain();
  ASSERT_TRUE(b.Register("edge-b", 64, sha_).accepted);
  PlayRound(a, "edge-a", b, "edge-b");
  const json summary = Finish();
  ExpectUntouchedRound(summary);  // two clients known, two sampled: no Sybil among them
  EXPECT_EQ(summary["counters"].value("identity_refused_mismatch", 0), kSybils);
  EXPECT_EQ(fed().identity_taken->Value(), 0);
  EXPECT_EQ(fed().identity_max_clients->Value(), 0);
}

TEST_F(AggregatorSenderTest, RegistrationsBeyondMaxClientsAreRefused) {
  AggregatorOptions options = Options(2);
  options.max_clients = 0;
  AggregatorModel model;
  model.spec = spec_;
  model.initial = initial_;
  auto bad = AggregatorService::Create(options, model, context_);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("max_clients"), std::string::npos);

  options.max_clients = 2;
  Start(options);
  WireClient a(context_, service_->endpoint()), b(context_, service_->endpoint());
  WireClient c(context_, service_->endpoint());
  ASSERT_TRUE(a.Register("edge-a", 64, sha_).accepted);
  ASSERT_TRUE(a.Register("edge-a", 64, sha_).accepted) << "re-registering is not a new client";
  ASSERT_TRUE(b.Register("edge-b", 64, sha_).accepted);
  ExpectIdentityRefusal(c.Register("edge-c", 64, sha_), "aggregator.max_clients");
  EXPECT_EQ(fed().identity_max_clients->Value(), 1);
  PlayRound(a, "edge-a", b, "edge-b");
  const json summary = Finish();
  ExpectUntouchedRound(summary, /*registrations=*/3);  // edge-a twice
  EXPECT_EQ(summary["counters"].value("identity_refused_max_clients", 0), 1);
}

// A plain connection whose session ended (Bye) gives its id up to the next connection that
// registers it (an edge that reconnected); the old connection then speaks for nobody.
TEST_F(AggregatorSenderTest, EndedSessionIsTakenOverByARegisterFromANewConnection) {
  Start(Options(2));
  WireClient old_link(context_, service_->endpoint()), b(context_, service_->endpoint());
  ASSERT_TRUE(old_link.Register("edge-a", 64, sha_).accepted);
  ASSERT_TRUE(ConnectedEdgesReach(1));
  old_link.Bye("edge-a");
  ASSERT_TRUE(ConnectedEdgesReach(0));  // the Bye has been handled
  WireClient new_link(context_, service_->endpoint());
  // A heartbeat cannot take the id over; a Register can.
  new_link.Heartbeat("edge-a");
  auto not_yours = new_link.Expect<fl::RegisterReply>();
  ASSERT_TRUE(not_yours.has_value());
  ExpectIdentityRefusal(*not_yours, "belongs to another connection: register again");
  const fl::RegisterReply reply = new_link.Register("edge-a", 64, sha_);
  ASSERT_TRUE(reply.accepted) << reply.error;
  old_link.Heartbeat("edge-a");
  auto refused = old_link.Expect<fl::RegisterReply>();
  ASSERT_TRUE(refused.has_value());
  ExpectIdentityRefusal(*refused, "belongs to another connection");
  ASSERT_TRUE(b.Register("edge-b", 64, sha_).accepted);
  PlayRound(new_link, "edge-a", b, "edge-b");
  const json summary = Finish();
  ASSERT_EQ(summary["rounds"].size(), 1u);
  EXPECT_EQ(summary["rounds"][0]["succeeded"], 2) << summary.dump(2);
  EXPECT_EQ(summary["clients"], 2);
}

// The four SecAgg stage messages pass the same check first; a secure aggregator keeps no
// client's example count in its logs.
TEST_F(AggregatorSenderTest, SecureStageMessagesNamingAnotherClientAreRefused) {
  const fs::path log = dir_ / "aggregator.log";
  ASSERT_TRUE(InitLogging("info", log.string()).ok());
  AggregatorOptions options = Options(3);
  options.engine.trainable = TrainableSet::kHeadAndExits;
  options.engine.secure.enabled = true;
  Start(options);
  std::vector<std::unique_ptr<WireClient>> c;
  for (int i = 0; i < 3; ++i) {
    c.push_back(std::make_unique<WireClient>(context_, service_->endpoint()));
    ASSERT_TRUE(c.back()->Register("c-" + std::to_string(i), 7654321 + i, sha_).accepted);
  }
  WireClient stranger(context_, service_->endpoint());
  std::vector<fl::SecAggKeys> keys;
  std::vector<SecureClientSession> sessions;
  for (int i = 0; i < 3; ++i) {
    auto config = c[i]->Expect<fl::RoundConfig>();
    ASSERT_TRUE(config.has_value() && config->secure.has_value());
    SecureRoundParams params;
    params.secagg = config->secure->secagg;
    params.clip = config->secure->clip;
    params.fractional_bits = static_cast<int>(config->secure->fractional_bits);
    params.example_scale = config->secure->example_scale;
    auto session = SecureClientSession::Create(params, static_cast<secagg::ClientIndex>(i));
    ASSERT_TRUE(session.ok()) << session.status().ToString();
    sessions.push_back(std::move(*session));
    fl::SecAggKeys k;
    k.round = config->round;
    k.client_id = "c-" + std::to_string(i);
    auto advertised = sessions.back().Advertise();
    ASSERT_TRUE(advertised.ok());
    k.keys = *advertised;
    keys.push_back(k);
  }
  const uint32_t round = keys[0].round;
  stranger.Send(keys[0]);  // an unregistered connection naming c-0
  ExpectIdentityRefusal(stranger.ExpectAck(), "belongs to another");
  // c-1's connection naming c-0, in every stage message.
  fl::SecAggKeys as_c0 = keys[1];
  as_c0.client_id = "c-0";
  c[1]->Send(as_c0);
  fl::SecAggShareKeys shares;
  shares.round = round;
  shares.client_id = "c-0";
  c[1]->Send(shares);
  fl::SecAggMaskedInput masked;
  masked.round = round;
  masked.client_id = "c-0";
  masked.input.masked = {1, 2, 3};
  c[1]->Send(masked);
  fl::SecAggUnmaskShares unmask;
  unmask.round = round;
  unmask.client_id = "c-0";
  c[1]->Send(unmask);
  for (int i = 0; i < 4; ++i) ExpectIdentityRefusal(c[1]->ExpectAck(), "speaks for client 'c-1'");
  ASSERT_TRUE(Reaches(*fed().identity_mismatch, 4));
  EXPECT_EQ(fed().identity_taken->Value(), 1);

  // Nothing was taken for c-0: its own keys count, and the key exchange completes.
  for (int i = 0; i < 3; ++i) c[i]->Send(keys[i]);
  for (int i = 0; i < 3; ++i) {
    auto directory = c[i]->Expect<fl::SecAggKeyDirectory>();
    ASSERT_TRUE(directory.has_value()) << "c-" << i;
    EXPECT_EQ(directory->directory.recipient, static_cast<secagg::ClientIndex>(i));
  }
  Join();
  const json summary = service_->Summary();
  EXPECT_EQ(summary["counters"].value("identity_refused_mismatch", 0), 4);
  EXPECT_EQ(summary["counters"].value("identity_refused_taken", 0), 1);
  EXPECT_EQ(summary["counters"].value("secagg_rejected_duplicate", 0), 0) << summary.dump(2);
  ASSERT_TRUE(InitLogging("info").ok());
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_NE(text.str().find("client 'c-0' registered"), std::string::npos) << text.str();
  for (const char* count : {"7654321", "7654322", "7654323"}) {
    EXPECT_EQ(text.str().find(count), std::string::npos) << "example count in the log";
  }
  EXPECT_EQ(summary.dump().find("7654321"), std::string::npos);
}

}  // namespace
}  // namespace cleave::federated
