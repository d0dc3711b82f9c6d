// Secure aggregation over ZeroMQ, in process: the real AggregatorService with
// secure_aggregation enabled, against real FederatedClients (whole rounds, a dropout after the
// key exchange) and against hand-driven clients that play the protocol with their own
// SecureClientSessions and send hostile messages in between.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <optional>
#include <thread>
#include <variant>

#include "common/fl_wire.h"
#include "common/metrics.h"
#include "edge/fl_client.h"
#include "federated/aggregator_service.h"
#include "federated/secure_round.h"
#include "federated/wire_convert.h"
#include "testing/tiny_bundle.h"
#include "unit/edge/fl_test_harness.h"

namespace cleave::edge {
namespace {

namespace fl = wire::fl;
using nlohmann::json;

constexpr int kSecureWaitMs = 30000;  // generous: the machine is shared

class SecureFederatedTest : public InProcessFederationTest {
 protected:
  federated::AggregatorOptions AggregatorOptions(int rounds, int clients) {
    federated::AggregatorOptions o = InProcessFederationTest::AggregatorOptions(rounds, clients);
    o.engine.trainable = federated::TrainableSet::kHeadAndExits;
    o.engine.secure.enabled = true;
    return o;
  }
};

TEST_F(SecureFederatedTest, FourEdgesRunTwoSecureRounds) {
  StartAggregator(AggregatorOptions(2, 4));
  for (int i = 0; i < 4; ++i) StartClient("edge-" + std::to_string(i));
  ASSERT_TRUE(JoinAggregator(120000)) << run_status_.ToString() << service_->Summary().dump(2);
  const json summary = service_->Summary();
  ASSERT_EQ(summary["rounds"].size(), 2u);
  for (const json& round : summary["rounds"]) {
    EXPECT_TRUE(round["applied"].get<bool>()) << round.dump(2);
    EXPECT_EQ(round["succeeded"], 4) << round.dump(2);
    EXPECT_EQ(round["rejected"], 0) << round.dump(2);
    const json& secure = round["secure_aggregation"];
    EXPECT_EQ(secure["contributors"], 4) << round.dump(2);
    EXPECT_EQ(secure["recovered_dropouts"], 0);
    EXPECT_EQ(round["examples"], 4 * 64);  // decoded from the unmasked sum
    EXPECT_EQ(round["secure_stages"]["unmasked"], 4);
  }
  EXPECT_EQ(summary["counters"].value("received_update", 0), 0) << "a plain update was sent";
  for (const auto& c : clients_) {
    ASSERT_TRUE(
        c->WaitFor([](const FederatedClientStats& s) { return s.finished; }, kSecureWaitMs));
    const FederatedClientStats s = c->stats();
    EXPECT_EQ(s.secure_rounds, 2u);
    EXPECT_EQ(s.masked_inputs_sent, 2u);
    EXPECT_EQ(s.updates_accepted, 2u);
    EXPECT_EQ(s.unmask_shares_sent, 2u);
    EXPECT_EQ(s.malformed_messages, 0u);
  }
}

TEST_F(SecureFederatedTest, EdgeThatDropsAfterSharingKeysIsRecovered) {
  federated::AggregatorOptions options = AggregatorOptions(1, 4);
  options.client_timeout_ms = 1500;  // the vanished edge is noticed by its silence
  StartAggregator(options);
  for (int i = 0; i < 3; ++i) StartClient("edge-" + std::to_string(i));
  StartClient("edge-3", /*drop_round=*/1);
  ASSERT_TRUE(JoinAggregator(120000)) << service_->Summary().dump(2);
  const json round = service_->Summary()["rounds"][0];
  EXPECT_TRUE(round["applied"].get<bool>()) << round.dump(2);
  EXPECT_EQ(round["succeeded"], 3) << round.dump(2);
  EXPECT_EQ(round["failed"], 1) << round.dump(2);
  EXPECT_EQ(round["secure_aggregation"]["contributors"], 3) << round.dump(2);
  EXPECT_EQ(round["secure_aggregation"]["recovered_dropouts"], 1) << round.dump(2);
  EXPECT_EQ(round["examples"], 3 * 64);
  EXPECT_EQ(round["secure_stages"]["shared"], 4);
  const FederatedClientStats dropped = clients_[3]->stats();
  EXPECT_FALSE(dropped.running);
  EXPECT_EQ(dropped.masked_inputs_sent, 0u);
}

// ---- Hand-driven clients ----

// One client on its own DEALER, driven by the test thread.
class ManualClient {
 public:
  ManualClient(TransportContext& context, const std::string& endpoint, std::string id)
      : id_(std::move(id)) {
    auto dealer = DealerClient::Connect(context, endpoint, SocketOptions{});
    EXPECT_TRUE(dealer.ok()) << dealer.status().ToString();
    if (dealer.ok()) dealer_ = std::move(dealer).value();
  }
  const std::string& id() const { return id_; }

  void Send(const fl::Message& message) { SendRaw(fl::EncodeMessage(message)); }
  void SendRaw(const std::string& bytes) { ASSERT_TRUE(dealer_->Send(bytes, 5000).ok()); }

  // The next message of kind T; other kinds are dropped.
  template <typename T>
  std::optional<T> Expect(int timeout_ms = kSecureWaitMs) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline) {
      auto in = dealer_->Receive(50);
      if (!in.ok()) return std::nullopt;
      if (!in->has_value()) continue;
      auto message = fl::DecodeMessage(**in);
      EXPECT_TRUE(message.ok()) << message.status().ToString();
      if (!message.ok()) continue;
      if (auto* body = std::get_if<T>(&message->body)) return *body;
    }
    return std::nullopt;
  }
  // The next UpdateAck (the aggregator's answer to a refused message).
  fl::UpdateAck ExpectAck() {
    auto ack = Expect<fl::UpdateAck>();
    EXPECT_TRUE(ack.has_value()) << "no UpdateAck for " << id_;
    return ack.value_or(fl::UpdateAck{});
  }

  void Register(int64_t examples, const std::string& layout_sha) {
    fl::Register reg;
    reg.client_id = id_;
    reg.num_examples = static_cast<uint64_t>(examples);
    reg.capabilities.can_train_full = reg.capabilities.can_train_head = true;
    reg.model_name = "tiny";
    reg.layout_sha256 = layout_sha;
    Send(reg);
    auto reply = Expect<fl::RegisterReply>();
    ASSERT_TRUE(reply.has_value());
    ASSERT_TRUE(reply->accepted) << reply->error;
  }

 private:
  std::string id_;
  std::unique_ptr<DealerClient> dealer_;
};

federated::SecureRoundParams FromWire(const fl::SecureParams& p) {
  federated::SecureRoundParams out;
  out.secagg = p.secagg;
  out.clip = p.clip;
  out.fractional_bits = static_cast<int>(p.fractional_bits);
  out.example_scale = p.example_scale;
  return out;
}

void ExpectRefused(ManualClient& client, fl::AckReason reason, const std::string& fragment) {
  const fl::UpdateAck ack = client.ExpectAck();
  EXPECT_FALSE(ack.accepted);
  EXPECT_EQ(ack.reason, reason) << fl::AckReasonName(ack.reason) << ": " << ack.message;
  EXPECT_NE(ack.message.find(fragment), std::string::npos) << ack.message;
}

TEST_F(SecureFederatedTest, HostileMessagesAreRefusedAndTheRoundStillApplies) {
  federated::AggregatorOptions options = AggregatorOptions(1, 3);
  options.client_timeout_ms = 600000;  // the manual clients do not heartbeat
  StartAggregator(options);
  const std::string sha = federated::LayoutSha256(layout_);
  std::vector<std::unique_ptr<ManualClient>> c;
  for (const char* id : {"c-0", "c-1", "c-2"}) {
    c.push_back(std::make_unique<ManualClient>(context_, service_->endpoint(), id));
    c.back()->Register(100 * static_cast<int64_t>(c.size()), sha);
  }
  ManualClient stranger(context_, service_->endpoint(), "stranger");

  // Every sampled client gets the secure parameters and its own roster index (sorted ids).
  std::vector<fl::RoundConfig> configs;
  for (size_t i = 0; i < c.size(); ++i) {
    auto config = c[i]->Expect<fl::RoundConfig>();
    ASSERT_TRUE(config.has_value());
    ASSERT_TRUE(config->secure.has_value());
    EXPECT_EQ(config->secure->client_index, i);
    EXPECT_EQ(config->secure->secagg.num_clients, 3u);
    configs.push_back(*config);
  }
  const uint32_t round = configs[0].round;
  const fl::SecureParams& wire_params = *configs[0].secure;
  federated::Weights global;
  for (const auto& t : configs[0].weights) global.push_back(*federated::FromWireTensor(t));
  const std::vector<bool>& trainable = configs[0].trainable;
  int64_t trainable_values = 0;
  for (size_t i = 0; i < global.size(); ++i) {
    if (trainable[i]) trainable_values += global[i].numel();
  }
  EXPECT_EQ(wire_params.secagg.vector_length, static_cast<uint32_t>(trainable_values + 2));

  // A plain update is refused, never aggregated.
  fl::Update plain;
  plain.round = round;
  plain.client_id = "c-0";
  plain.num_examples = 100;
  plain.tensors = federated::MaskedToWire(global, trainable);
  c[0]->Send(plain);
  ExpectRefused(*c[0], fl::AckReason::kRejected, "secure aggregation");
  // Garbage, wrong round, unknown client, out of stage, someone else's index.
  c[0]->SendRaw("not capnp");
  ExpectRefused(*c[0], fl::AckReason::kMalformed, "federated message");

  std::vector<federated::SecureClientSession> sessions;
  std::vector<fl::SecAggKeys> keys;
  for (size_t i = 0; i < c.size(); ++i) {
    auto session = federated::SecureClientSession::Create(FromWire(wire_params),
                                                          static_cast<secagg::ClientIndex>(i));
    ASSERT_TRUE(session.ok()) << session.status().ToString();
    sessions.push_back(std::move(*session));
    fl::SecAggKeys k;
    k.round = round;
    k.client_id = c[i]->id();
    auto advertised = sessions.back().Advertise();
    ASSERT_TRUE(advertised.ok());
    k.keys = *advertised;
    keys.push_back(k);
  }
  fl::SecAggKeys wrong_round = keys[0];
  wrong_round.round = round + 1;
  c[0]->Send(wrong_round);
  ExpectRefused(*c[0], fl::AckReason::kStaleRound, "the open round is");
  fl::SecAggKeys unknown = keys[0];
  unknown.client_id = "stranger";
  stranger.Send(unknown);
  ExpectRefused(stranger, fl::AckReason::kUnknownClient, "register first");
  fl::SecAggKeys impostor = keys[1];
  impostor.client_id = "c-0";  // c-0 speaking as roster index 1
  c[0]->Send(impostor);
  ExpectRefused(*c[0], fl::AckReason::kRejected, "sent a message as client 1");
  fl::SecAggShareKeys early_shares;
  early_shares.round = round;
  early_shares.client_id = "c-0";
  c[0]->Send(early_shares);
  ExpectRefused(*c[0], fl::AckReason::kRejected, "has not begun");

  // Keys: c-0 first, then its replay is a duplicate; the stage closes when all three sent.
  c[0]->Send(keys[0]);
  c[0]->Send(keys[0]);
  ExpectRefused(*c[0], fl::AckReason::kDuplicate, "already answered");
  c[1]->Send(keys[1]);
  c[2]->Send(keys[2]);
  std::vector<fl::SecAggShareKeys> shares;
  for (size_t i = 0; i < c.size(); ++i) {
    auto directory = c[i]->Expect<fl::SecAggKeyDirectory>();
    ASSERT_TRUE(directory.has_value()) << c[i]->id();
    EXPECT_EQ(directory->directory.recipient, i);
    auto shared = sessions[i].ShareSecrets(directory->directory);
    ASSERT_TRUE(shared.ok()) << shared.status().ToString();
    fl::SecAggShareKeys message;
    message.round = round;
    message.client_id = c[i]->id();
    message.shares = *shared;
    shares.push_back(message);
  }
  c[0]->Send(keys[0]);  // the keys stage is over
  ExpectRefused(*c[0], fl::AckReason::kLate, "closed");
  for (size_t i = 0; i < c.size(); ++i) c[i]->Send(shares[i]);

  // Masked inputs: what the aggregator receives is not the encoded contribution.
  double loss_sum = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    auto forwarded = c[i]->Expect<fl::SecAggForwardedShares>();
    ASSERT_TRUE(forwarded.has_value()) << c[i]->id();
    federated::Weights trained;
    for (size_t k = 0; k < global.size(); ++k) {
      trained.push_back(global[k] + 0.01f * static_cast<float>(i + 1));
    }
    const int64_t examples = 100 * static_cast<int64_t>(i + 1);
    const double loss = 0.5 + static_cast<double>(i);
    loss_sum += loss * static_cast<double>(examples);
    crypto::Key256 seed{};
    seed[0] = static_cast<uint8_t>(i);
    auto encoded = federated::EncodeContribution(FromWire(wire_params), global, trained, trainable,
                                                 examples, loss, seed);
    ASSERT_TRUE(encoded.ok());
    auto masked = sessions[i].MaskUpdate(forwarded->forwarded, global, trained, trainable, examples,
                                         loss, seed);
    ASSERT_TRUE(masked.ok()) << masked.status().ToString();
    EXPECT_NE(masked->masked, *encoded) << "the masked input equals the plain contribution";
    fl::SecAggMaskedInput input;
    input.round = round;
    input.client_id = c[i]->id();
    input.input = *masked;
    c[i]->Send(input);
    const fl::UpdateAck ack = c[i]->ExpectAck();
    EXPECT_TRUE(ack.accepted) << ack.message;
    if (i == 0) {
      c[0]->Send(input);  // a replayed masked input
      ExpectRefused(*c[0], fl::AckReason::kDuplicate, "already answered");
    }
  }

  // Unmasking: every survivor is asked, answers, and the round applies.
  for (size_t i = 0; i < c.size(); ++i) {
    auto request = c[i]->Expect<fl::SecAggUnmaskRequest>();
    ASSERT_TRUE(request.has_value()) << c[i]->id();
    EXPECT_EQ(request->request.survivors, (std::vector<uint32_t>{0, 1, 2}));
    auto revealed = sessions[i].RevealShares(request->request);
    ASSERT_TRUE(revealed.ok()) << revealed.status().ToString();
    fl::SecAggUnmaskShares message;
    message.round = round;
    message.client_id = c[i]->id();
    message.shares = *revealed;
    if (i == 0) {
      fl::SecAggUnmaskShares tampered = message;
      tampered.shares.self_mask_shares.pop_back();
      c[0]->Send(tampered);
      ExpectRefused(*c[0], fl::AckReason::kRejected, "unmasking shares");
    }
    c[i]->Send(message);
  }
  ASSERT_TRUE(JoinAggregator(60000)) << service_->Summary().dump(2);
  const json record = service_->Summary()["rounds"][0];
  EXPECT_TRUE(record["applied"].get<bool>()) << record.dump(2);
  EXPECT_EQ(record["succeeded"], 3);
  EXPECT_EQ(record["examples"], 600);
  EXPECT_NEAR(record["train_loss"].get<double>(), loss_sum / 600, 1e-4);
  EXPECT_GE(record["rejected"].get<int>(), 1);  // the plain update
}

}  // namespace
}  // namespace cleave::edge
