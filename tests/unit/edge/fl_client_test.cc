// FederatedClient against a fake aggregator: a ROUTER driven by the test thread that decodes
// what the client sends and answers with hand-made fl_wire messages (or garbage, or
// nothing). Waits are on conditions (a message arriving, a stats predicate) with generous
// timeouts; the only clock assertion is an upper bound on Stop().
#include "edge/fl_client.h"

#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <variant>

#include "common/fl_wire.h"
#include "common/metrics.h"
#include "federated/aggregator_service.h"
#include "federated/wire_convert.h"
#include "unit/edge/fl_test_harness.h"

namespace cleave::edge {
namespace {

namespace fl = wire::fl;

constexpr int kFlWaitMs = 20000;  // generous: the machine is shared

// The aggregator side of the conversation, driven by the test thread.
class FakeAggregator {
 public:
  explicit FakeAggregator(TransportContext& context) {
    auto router = RouterServer::Bind(context, "tcp://127.0.0.1:0");
    EXPECT_TRUE(router.ok()) << router.status().ToString();
    if (router.ok()) router_ = std::move(router).value();
  }
  const std::string& endpoint() const { return router_->endpoint(); }

  // The next message of kind T within timeout_ms; other kinds are appended to `skipped`.
  // Every message from the client must decode.
  template <typename T>
  std::optional<T> Expect(int timeout_ms = kFlWaitMs, std::vector<fl::Message>* skipped = nullptr) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      auto in = router_->Receive(static_cast<int>(std::max<int64_t>(1, left.count())));
      if (!in.ok()) {
        ADD_FAILURE() << in.status().ToString();
        return std::nullopt;
      }
      if (!in->has_value()) continue;
      peer_ = (*in)->peer;
      auto message = fl::DecodeMessage((*in)->body);
      if (!message.ok()) {
        ADD_FAILURE() << "the client sent an invalid message: " << message.status().ToString();
        continue;
      }
      if (auto* body = std::get_if<T>(&message->body)) return *body;
      if (skipped) skipped->push_back(*message);
    }
    return std::nullopt;
  }

  void Send(const fl::Message& message) { SendRaw(fl::EncodeMessage(message)); }
  void SendRaw(const std::string& bytes) {
    ASSERT_FALSE(peer_.empty()) << "no client has spoken yet";
    ASSERT_TRUE(router_->Send(peer_, bytes).ok());
  }

  // Waits for the Register and accepts it.
  std::optional<fl::Register> AcceptRegistration(uint32_t poll_interval_ms = 20) {
    auto reg = Expect<fl::Register>();
    if (!reg) return reg;
    fl::RegisterReply reply;
    reply.accepted = true;
    reply.round = 0;
    reply.poll_interval_ms = poll_interval_ms;
    Send(reply);
    return reg;
  }

 private:
  std::unique_ptr<RouterServer> router_;
  std::string peer_;
};

bool IsUpdate(const fl::Message& m) { return std::holds_alternative<fl::Update>(m.body); }

class FederatedClientTest : public TinyFederationTest {
 protected:
  void SetUp() override {
    TinyFederationTest::SetUp();
    options_.client_id = "edge-test-1";
    options_.register_timeout_ms = 2000;
  }
  void TearDown() override { client_.reset(); }

  void StartClient(const std::string& endpoint) {
    options_.aggregator = endpoint;
    auto client = FederatedClient::Start(context_, options_, spec_, initial_, data_);
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    client_ = std::move(client).value();
  }

  bool WaitStats(const std::function<bool(const FederatedClientStats&)>& predicate) {
    return client_->WaitFor(predicate, kFlWaitMs);
  }

  // A valid config for round `round` training the head and exits from `initial_`.
  fl::RoundConfig Config(uint32_t round) const {
    fl::RoundConfig c;
    c.round = round;
    c.model_name = "tiny";
    c.layout_sha256 = federated::LayoutSha256(layout_);
    for (const auto& w : initial_) c.weights.push_back(federated::ToWireTensor(w));
    c.trainable_set = fl::TrainableSet::kHeadAndExits;
    c.trainable = federated::TrainableMask(layout_, federated::TrainableSet::kHeadAndExits,
                                           spec_.split_after);
    c.local_epochs = 1;
    c.batch_size = 16;
    c.learning_rate = 0.05;
    c.momentum = 0.9;
    c.max_steps = 5;
    c.deadline_ms = 60000;
    c.seed = 11;
    EXPECT_TRUE(fl::ValidateMessage(fl::Message(c)).ok());
    return c;
  }

  // The client is alive: `n` heartbeats arrive, each naming `training_round` (unless
  // nullopt), with no Update among the messages.
  void ExpectHeartbeatsWithoutUpdates(FakeAggregator& aggregator, int n,
                                      std::optional<uint32_t> training_round = 0) {
    std::vector<fl::Message> skipped;
    for (int i = 0; i < n; ++i) {
      auto hb = aggregator.Expect<fl::Heartbeat>(kFlWaitMs, &skipped);
      ASSERT_TRUE(hb.has_value()) << "the client stopped heartbeating";
      EXPECT_EQ(hb->client_id, options_.client_id);
      if (training_round) {
        EXPECT_EQ(hb->training_round, *training_round);
      }
    }
    for (const auto& m : skipped) EXPECT_FALSE(IsUpdate(m)) << "unexpected Update";
  }

  // Skips messages until a heartbeat naming `training_round` arrives.
  bool AwaitHeartbeatFor(FakeAggregator& aggregator, uint32_t training_round) {
    for (int i = 0; i < 1000; ++i) {
      auto hb = aggregator.Expect<fl::Heartbeat>();
      if (!hb) return false;
      if (hb->training_round == training_round) return true;
    }
    return false;
  }

  std::unique_ptr<FederatedClient> client_;
};

TEST_F(FederatedClientTest, RegistersWithTheModelsLayoutFingerprint) {
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  auto reg = aggregator.Expect<fl::Register>();
  ASSERT_TRUE(reg.has_value());
  split::SplitVisionNet fresh(spec_);  // computed independently of the client
  EXPECT_EQ(reg->layout_sha256, federated::LayoutSha256(federated::LayoutOf(*fresh)));
  EXPECT_EQ(reg->layout_sha256, client_->layout_sha256());
  EXPECT_EQ(reg->client_id, "edge-test-1");
  EXPECT_EQ(reg->model_name, "tiny");
  EXPECT_EQ(reg->num_examples, 64u);
  EXPECT_TRUE(reg->capabilities.can_train_head);
  EXPECT_FALSE(reg->capabilities.accepts_delta);
  EXPECT_FALSE(client_->stats().registered);
}

TEST_F(FederatedClientTest, RoundConfigLeadsToExactlyOneUpdate) {
  options_.max_steps = 2;  // the local limit is below the round's 5
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  ASSERT_TRUE(aggregator.AcceptRegistration());
  ASSERT_TRUE(aggregator.Expect<fl::Heartbeat>());
  const fl::RoundConfig config = Config(1);
  aggregator.Send(config);

  auto update = aggregator.Expect<fl::Update>();
  ASSERT_TRUE(update.has_value());
  EXPECT_EQ(update->round, 1u);
  EXPECT_EQ(update->client_id, "edge-test-1");
  EXPECT_EQ(update->num_examples, 64u);
  EXPECT_EQ(update->steps, 2u);
  EXPECT_FALSE(update->is_delta);
  EXPECT_TRUE(std::isfinite(update->train_loss));
  EXPECT_GT(update->train_loss, 0.0);
  // Only the trainable entries, in layout order, with the layout's shapes and finite values.
  std::vector<size_t> trainable;
  for (size_t i = 0; i < config.trainable.size(); ++i) {
    if (config.trainable[i]) trainable.push_back(i);
  }
  ASSERT_LT(trainable.size(), layout_.size()) << "the test needs a partial mask";
  ASSERT_EQ(update->tensors.size(), trainable.size());
  bool changed = false;
  for (size_t k = 0; k < trainable.size(); ++k) {
    const size_t i = trainable[k];
    auto t = federated::FromWireTensor(update->tensors[k]);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->sizes().vec(), layout_.shapes[i]) << layout_.names[i];
    EXPECT_TRUE(torch::isfinite(*t).all().item<bool>()) << layout_.names[i];
    changed = changed || !torch::equal(*t, initial_[i]);
  }
  EXPECT_TRUE(changed) << "training did not move any trainable weight";
  // The rebuilt weights pass the aggregator's own check.
  auto rebuilt = federated::MaskedFromWire(update->tensors, config.trainable, layout_, initial_);
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status().ToString();

  aggregator.Send(fl::MakeUpdateAck(1, fl::AckReason::kOk));
  ASSERT_TRUE(WaitStats([](const FederatedClientStats& s) { return s.updates_accepted == 1; }));
  // The same config again (e.g. a resend crossing the ack) is ignored, not retrained.
  aggregator.Send(config);
  ASSERT_TRUE(AwaitHeartbeatFor(aggregator, 0));  // heartbeats queued before the ack say 1
  ExpectHeartbeatsWithoutUpdates(aggregator, 3);
  const FederatedClientStats s = client_->stats();
  EXPECT_EQ(s.rounds_trained, 1u);
  EXPECT_EQ(s.updates_sent, 1u);
  EXPECT_EQ(s.updates_rejected, 0u);
  EXPECT_EQ(s.last_round, 1u);
  EXPECT_DOUBLE_EQ(s.last_train_loss, update->train_loss);
  EXPECT_TRUE(s.registered);
}

TEST_F(FederatedClientTest, RejectedUpdatesAreCountedByReason) {
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  ASSERT_TRUE(aggregator.AcceptRegistration());
  aggregator.Send(Config(4));
  ASSERT_TRUE(aggregator.Expect<fl::Update>());
  aggregator.Send(fl::MakeUpdateAck(4, fl::AckReason::kLate, "round 4 already closed"));
  ASSERT_TRUE(WaitStats([](const FederatedClientStats& s) { return s.updates_rejected == 1; }));
  const FederatedClientStats s = client_->stats();
  EXPECT_EQ(s.updates_accepted, 0u);
  EXPECT_EQ(s.rejected_by_reason.at("late"), 1u);
  EXPECT_NE(s.last_error.find("already closed"), std::string::npos) << s.last_error;
}

TEST_F(FederatedClientTest, LateAckForAnEarlierRoundStillCounts) {
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  ASSERT_TRUE(aggregator.AcceptRegistration());
  aggregator.Send(Config(1));
  ASSERT_TRUE(aggregator.Expect<fl::Update>());
  aggregator.Send(Config(2));  // round 1 closed at its deadline before our update arrived
  auto second = aggregator.Expect<fl::Update>();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->round, 2u);
  aggregator.Send(fl::MakeUpdateAck(1, fl::AckReason::kStaleRound, "the open round is 2"));
  aggregator.Send(fl::MakeUpdateAck(2, fl::AckReason::kOk));
  ASSERT_TRUE(WaitStats([](const FederatedClientStats& s) {
    return s.updates_accepted == 1 && s.updates_rejected == 1;
  }));
  const FederatedClientStats s = client_->stats();
  EXPECT_EQ(s.rejected_by_reason.at("stale_round"), 1u);
  EXPECT_EQ(s.rounds_trained, 2u);
  EXPECT_EQ(s.last_round, 2u);
  EXPECT_EQ(s.unexpected_messages, 0u);
}

TEST_F(FederatedClientTest, ConfigCrossingTheUpdateIsIgnored) {
  options_.ack_timeout_ms = 600000;  // the ack is merely slow, never "lost", in this test
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  ASSERT_TRUE(aggregator.AcceptRegistration());
  aggregator.Send(Config(3));
  ASSERT_TRUE(aggregator.Expect<fl::Update>());
  // What the aggregator sends in reply to a heartbeat that left before the update did.
  aggregator.Send(Config(3));
  // Heartbeats now say "round 3" (so the real aggregator would not ask again); no Update.
  ExpectHeartbeatsWithoutUpdates(aggregator, 3, 3);
  aggregator.Send(fl::MakeUpdateAck(3, fl::AckReason::kOk));
  ASSERT_TRUE(AwaitHeartbeatFor(aggregator, 0));
  const FederatedClientStats s = client_->stats();
  EXPECT_EQ(s.rounds_trained, 1u);
  EXPECT_EQ(s.updates_sent, 1u);
  EXPECT_EQ(s.updates_accepted, 1u);
}

TEST_F(FederatedClientTest, LostUpdateIsResentWithoutRetraining) {
  options_.ack_timeout_ms = 50;
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  ASSERT_TRUE(aggregator.AcceptRegistration());
  aggregator.Send(Config(2));
  auto first = aggregator.Expect<fl::Update>();
  ASSERT_TRUE(first.has_value());
  // No ack: once the client stops waiting its heartbeats say idle, and the aggregator,
  // which never saw the update, sends the config again.
  ASSERT_TRUE(AwaitHeartbeatFor(aggregator, 0));
  aggregator.Send(Config(2));
  auto second = aggregator.Expect<fl::Update>();
  ASSERT_TRUE(second.has_value());
  ASSERT_EQ(second->tensors.size(), first->tensors.size());
  for (size_t k = 0; k < first->tensors.size(); ++k) {
    EXPECT_EQ(second->tensors[k].data, first->tensors[k].data);
  }
  // The counter moves just after the send, so wait for it rather than read it at once.
  ASSERT_TRUE(WaitStats([](const FederatedClientStats& s) { return s.updates_sent == 2; }));
  EXPECT_EQ(client_->stats().rounds_trained, 1u);
}

// Configs the client cannot use: declined with Bye{leaving} before any training; the client
// keeps heartbeating.
class BadRoundConfigTest
    : public FederatedClientTest,
      public ::testing::WithParamInterface<std::pair<std::string, std::string>> {};

TEST_P(BadRoundConfigTest, IsDeclinedWithoutTraining) {
  const auto& [breakage, expected_error] = GetParam();
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  ASSERT_TRUE(aggregator.AcceptRegistration());
  fl::RoundConfig config = Config(1);
  if (breakage == "layout") {
    config.layout_sha256 = std::string(64, 'f');
  } else if (breakage == "count") {
    config.weights.pop_back();
    config.trainable.pop_back();
  } else if (breakage == "shape") {
    std::vector<int64_t> shape = initial_[0].sizes().vec();
    shape.back() += 1;
    config.weights[0] = federated::ToWireTensor(torch::zeros(shape));
  } else if (breakage == "delta") {
    config.is_delta = true;  // the client registered accepts_delta = false
    config.base_round = 0;
  }
  ASSERT_TRUE(fl::ValidateMessage(fl::Message(config)).ok()) << "the test must send valid wire";
  aggregator.Send(config);

  std::vector<fl::Message> skipped;
  auto bye = aggregator.Expect<fl::Bye>(kFlWaitMs, &skipped);
  ASSERT_TRUE(bye.has_value());
  EXPECT_EQ(bye->reason, fl::ByeReason::kLeaving);
  EXPECT_EQ(bye->client_id, "edge-test-1");
  EXPECT_NE(bye->message.find(expected_error), std::string::npos) << bye->message;
  for (const auto& m : skipped) EXPECT_FALSE(IsUpdate(m));
  ExpectHeartbeatsWithoutUpdates(aggregator, 3);
  const FederatedClientStats s = client_->stats();
  EXPECT_EQ(s.configs_rejected, 1u);
  EXPECT_EQ(s.rounds_trained, 0u);
  EXPECT_EQ(s.updates_sent, 0u);
  EXPECT_TRUE(s.running);
  EXPECT_NE(s.last_error.find(expected_error), std::string::npos) << s.last_error;
}

INSTANTIATE_TEST_SUITE_P(Breakages, BadRoundConfigTest,
                         ::testing::Values(std::make_pair("layout", "model mismatch"),
                                           std::make_pair("count", "weight tensors"),
                                           std::make_pair("shape", "has shape"),
                                           std::make_pair("delta", "delta")),
                         [](const auto& info) { return info.param.first; });

// Continual rounds (RoundConfig.continual): the client trains on its rows of the round's
// experience only, declines an experience it has no rows of (saying so), and consolidates its
// strategy when the experience changes.
TEST_F(FederatedClientTest, ContinualRoundsTrainOnTheExperiencesRowsOnly) {
  // 40 rows of classes 0..4 (experience 0 of 2), 24 of classes 5..9 (experience 1).
  data_.labels = torch::cat(
      {torch::randint(0, 5, {40}, torch::kLong), torch::randint(5, 10, {24}, torch::kLong)});
  options_.max_steps = 2;
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  ASSERT_TRUE(aggregator.AcceptRegistration());
  const auto continual_config = [&](uint32_t round, uint32_t experience) {
    fl::RoundConfig c = Config(round);
    fl::ContinualRound r;
    r.experience = experience;
    r.experiences = 2;
    r.method = fl::ContinualMethod::kEr;
    r.buffer_rows = 16;
    c.continual = r;
    return c;
  };
  aggregator.Send(continual_config(1, 0));
  auto first = aggregator.Expect<fl::Update>();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->num_examples, 40u);  // the rows of classes 0..4, not all 64
  aggregator.Send(fl::MakeUpdateAck(1, fl::AckReason::kOk));
  aggregator.Send(continual_config(2, 1));
  auto second = aggregator.Expect<fl::Update>();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->round, 2u);
  EXPECT_EQ(second->num_examples, 24u);
  aggregator.Send(fl::MakeUpdateAck(2, fl::AckReason::kOk));
  ASSERT_TRUE(WaitStats([](const FederatedClientStats& s) { return s.updates_accepted == 2; }));
  const FederatedClientStats s = client_->stats();
  EXPECT_EQ(s.continual_rounds, 2u);
  EXPECT_EQ(s.experience, 1);
  EXPECT_EQ(s.rounds_without_data, 0u);
}

// Domain-incremental: each experience is the client's next contiguous share of its rows, seen
// through the experience's pixel permutation (the update differs from one trained on the
// unpermuted rows of the same share).
TEST_F(FederatedClientTest, DomainIncrementalRoundsTrainEachShareOfTheRows) {
  options_.max_steps = 2;
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  ASSERT_TRUE(aggregator.AcceptRegistration());
  const auto domain_config = [&](uint32_t round, uint32_t experience, uint64_t seed) {
    fl::RoundConfig c = Config(round);
    fl::ContinualRound r;
    r.experience = experience;
    r.experiences = 4;
    r.scenario = fl::ContinualScenario::kDomain;
    r.seed = seed;
    c.continual = r;
    return c;
  };
  std::vector<uint64_t> examples;
  std::vector<fl::Update> updates;
  const std::vector<std::pair<uint32_t, uint64_t>> rounds = {{0, 5}, {3, 5}, {3, 6}};
  for (size_t k = 0; k < rounds.size(); ++k) {
    const uint32_t round = static_cast<uint32_t>(k + 1);
    aggregator.Send(domain_config(round, rounds[k].first, rounds[k].second));
    auto update = aggregator.Expect<fl::Update>();
    ASSERT_TRUE(update.has_value()) << "round " << round;
    updates.push_back(*update);
    aggregator.Send(fl::MakeUpdateAck(round, fl::AckReason::kOk));
  }
  // 64 rows in 4 shares of 16.
  for (const fl::Update& u : updates) EXPECT_EQ(u.num_examples, 16u);
  // The same share seen through another permutation trains to other weights.
  bool differ = false;
  for (size_t i = 0; i < updates[1].tensors.size(); ++i) {
    auto a = federated::FromWireTensor(updates[1].tensors[i]);
    auto b = federated::FromWireTensor(updates[2].tensors[i]);
    ASSERT_TRUE(a.ok() && b.ok());
    differ = differ || !torch::equal(*a, *b);
  }
  EXPECT_TRUE(differ) << "the permutation seed did not reach the training rows";
  ASSERT_TRUE(WaitStats([](const FederatedClientStats& s) { return s.updates_accepted == 3; }));
  EXPECT_EQ(client_->stats().continual_rounds, 3u);
}

TEST_F(FederatedClientTest, ContinualExperienceWithoutRowsIsDeclinedSayingWhy) {
  data_.labels = torch::randint(0, 5, {64}, torch::kLong);  // nothing of classes 5..9
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  ASSERT_TRUE(aggregator.AcceptRegistration());
  fl::RoundConfig config = Config(1);
  fl::ContinualRound r;
  r.experience = 1;
  r.experiences = 2;
  config.continual = r;
  aggregator.Send(config);
  std::vector<fl::Message> skipped;
  auto bye = aggregator.Expect<fl::Bye>(kFlWaitMs, &skipped);
  ASSERT_TRUE(bye.has_value());
  EXPECT_EQ(bye->reason, fl::ByeReason::kLeaving);
  EXPECT_NE(bye->message.find("no examples in experience 1"), std::string::npos) << bye->message;
  for (const auto& m : skipped) EXPECT_FALSE(IsUpdate(m));
  // A stream of more class-incremental experiences than the model has classes is refused.
  fl::RoundConfig too_many = Config(2);
  r.experience = 0;
  r.experiences = 11;
  too_many.continual = r;
  aggregator.Send(too_many);
  bye = aggregator.Expect<fl::Bye>(kFlWaitMs, &skipped);
  ASSERT_TRUE(bye.has_value());
  EXPECT_NE(bye->message.find("11 class-incremental experiences"), std::string::npos)
      << bye->message;
  ExpectHeartbeatsWithoutUpdates(aggregator, 2);
  const FederatedClientStats s = client_->stats();
  EXPECT_EQ(s.rounds_without_data, 1u);
  EXPECT_EQ(s.configs_rejected, 1u);
  EXPECT_EQ(s.rounds_trained, 0u);
  EXPECT_TRUE(s.running);
}

TEST_F(FederatedClientTest, RefusedRegistrationIsRetried) {
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  ASSERT_TRUE(aggregator.Expect<fl::Register>());
  fl::RegisterReply refusal;
  refusal.accepted = false;
  refusal.error = "model mismatch: this aggregator coordinates model 'other'";
  aggregator.Send(refusal);
  ASSERT_TRUE(aggregator.Expect<fl::Register>()) << "refused registration was not retried";
  FederatedClientStats s = client_->stats();
  EXPECT_EQ(s.registrations_refused, 1u);
  EXPECT_FALSE(s.registered);
  EXPECT_NE(s.last_error.find("model mismatch"), std::string::npos) << s.last_error;
  EXPECT_TRUE(s.running);
  // Accepted the second time.
  fl::RegisterReply accept;
  accept.accepted = true;
  aggregator.Send(accept);
  ASSERT_TRUE(WaitStats([](const FederatedClientStats& st) { return st.registered; }));
  ASSERT_TRUE(aggregator.Expect<fl::Heartbeat>());
}

TEST_F(FederatedClientTest, ForgottenClientRegistersAgain) {
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  ASSERT_TRUE(aggregator.AcceptRegistration());
  ASSERT_TRUE(aggregator.Expect<fl::Heartbeat>());
  fl::RegisterReply unknown;  // what a restarted aggregator answers to a Heartbeat
  unknown.accepted = false;
  unknown.error = "unknown client 'edge-test-1': register first";
  aggregator.Send(unknown);
  ASSERT_TRUE(aggregator.Expect<fl::Register>());
}

TEST_F(FederatedClientTest, UnansweredRegisterIsResent) {
  options_.register_timeout_ms = 30;
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  ASSERT_TRUE(aggregator.Expect<fl::Register>());
  ASSERT_TRUE(aggregator.Expect<fl::Register>());
  EXPECT_FALSE(client_->stats().registered);
}

TEST_F(FederatedClientTest, ByeFinishedEndsTheThread) {
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  ASSERT_TRUE(aggregator.AcceptRegistration());
  ASSERT_TRUE(aggregator.Expect<fl::Heartbeat>());
  fl::Bye bye;
  bye.client_id = "edge-test-1";
  bye.reason = fl::ByeReason::kFinished;
  bye.message = "all 3 rounds done";
  aggregator.Send(bye);
  ASSERT_TRUE(WaitStats([](const FederatedClientStats& s) { return !s.running; }));
  const FederatedClientStats s = client_->stats();
  EXPECT_TRUE(s.finished);
  EXPECT_FALSE(s.registered);
}

TEST_F(FederatedClientTest, GarbageFromTheAggregatorIsCountedAndIgnored) {
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  ASSERT_TRUE(aggregator.AcceptRegistration());
  aggregator.SendRaw("definitely not capnp");
  aggregator.SendRaw(std::string());
  aggregator.SendRaw(std::string(4096, '\xff'));
  fl::Register wrong_direction;  // valid, but a client-to-aggregator kind
  wrong_direction.client_id = "x";
  wrong_direction.model_name = "m";
  wrong_direction.layout_sha256 = std::string(64, '0');
  aggregator.Send(wrong_direction);
  aggregator.Send(fl::MakeUpdateAck(9, fl::AckReason::kOk));  // for an update never sent
  ASSERT_TRUE(WaitStats([](const FederatedClientStats& s) {
    return s.malformed_messages == 3 && s.unexpected_messages == 2;
  }));
  ExpectHeartbeatsWithoutUpdates(aggregator, 2);
  // Still a working participant.
  aggregator.Send(Config(1));
  ASSERT_TRUE(aggregator.Expect<fl::Update>());
  EXPECT_TRUE(client_->stats().running);
  EXPECT_EQ(client_->stats().updates_accepted, 0u);
}

TEST_F(FederatedClientTest, HeartbeatsDuringTrainingAndStopInterruptsIt) {
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  ASSERT_TRUE(aggregator.AcceptRegistration());
  fl::RoundConfig config = Config(1);
  config.local_epochs = fl::kMaxLocalEpochs;  // far longer than the test waits
  config.max_steps = 0;
  config.deadline_ms = 0;
  aggregator.Send(config);
  std::optional<fl::Heartbeat> hb;
  for (int i = 0; i < 100 && !(hb && hb->training_round == 1); ++i) {
    hb = aggregator.Expect<fl::Heartbeat>();
    ASSERT_TRUE(hb.has_value());
  }
  ASSERT_EQ(hb->training_round, 1u) << "no heartbeat while training";
  const auto start = std::chrono::steady_clock::now();
  client_.reset();  // Stop + join, in the middle of training
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  auto bye = aggregator.Expect<fl::Bye>();
  ASSERT_TRUE(bye.has_value());
  EXPECT_EQ(bye->reason, fl::ByeReason::kLeaving);
}

TEST_F(FederatedClientTest, StopIsPromptWhenTheAggregatorNeverAnswers) {
  FakeAggregator aggregator(context_);
  StartClient(aggregator.endpoint());
  ASSERT_TRUE(aggregator.Expect<fl::Register>());  // the client is in its loop; no answer
  const auto start = std::chrono::steady_clock::now();
  client_->Stop();
  client_.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST_F(FederatedClientTest, UnreachableAggregatorIsRetriedWithBackoff) {
  // Bind and close a router to get a port nobody listens on.
  std::string endpoint;
  {
    auto probe = RouterServer::Bind(context_, "tcp://127.0.0.1:0");
    ASSERT_TRUE(probe.ok());
    endpoint = (*probe)->endpoint();
  }
  StartClient(endpoint);
  ASSERT_TRUE(WaitStats([](const FederatedClientStats& s) { return s.send_failures >= 3; }));
  const FederatedClientStats s = client_->stats();
  EXPECT_TRUE(s.running);
  EXPECT_FALSE(s.registered);
  EXPECT_NE(s.last_error.find("register"), std::string::npos) << s.last_error;
  const auto start = std::chrono::steady_clock::now();
  client_.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

// The real aggregator service in process: two edges train two rounds and are told to stop;
// the aggregator's metrics count the rounds and updates.
TEST_F(FederatedClientTest, TwoClientsFinishRoundsWithTheRealAggregator) {
  federated::AggregatorOptions aggregator_options;
  aggregator_options.listen = "tcp://127.0.0.1:0";
  aggregator_options.rounds = 2;
  aggregator_options.wait_for_clients = 2;
  aggregator_options.engine.min_clients = 2;
  aggregator_options.engine.quorum = 2;
  aggregator_options.engine.trainable = federated::TrainableSet::kHeadAndExits;
  aggregator_options.engine.fit.max_steps = 3;
  aggregator_options.engine.fit.batch_size = 16;
  aggregator_options.poll_interval_ms = 20;
  aggregator_options.client_timeout_ms = 10000;
  auto metrics = std::make_shared<Metrics>();
  aggregator_options.metrics = metrics;
  federated::AggregatorModel model;
  model.spec = spec_;
  model.initial = initial_;
  model.model_name = "tiny";
  auto service =
      federated::AggregatorService::Create(aggregator_options, model, context_, SystemClock());
  ASSERT_TRUE(service.ok()) << service.status().ToString();
  std::atomic<bool> stop_aggregator{false};
  Status run_status = Status::Internal("not run");
  std::thread aggregator_thread(
      [&] { run_status = (*service)->Run([&] { return stop_aggregator.load(); }); });

  StartClient((*service)->endpoint());
  options_.client_id = "edge-test-2";
  auto second = FederatedClient::Start(context_, options_, spec_, initial_, data_);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  const auto done = [](const FederatedClientStats& s) { return s.finished && !s.running; };
  const bool finished = client_->WaitFor(done, 60000) && (*second)->WaitFor(done, 60000);
  stop_aggregator = !finished;
  aggregator_thread.join();
  ASSERT_TRUE(finished) << client_->stats().ToJson().dump() << "\n"
                        << (*second)->stats().ToJson().dump();
  EXPECT_TRUE(run_status.ok()) << run_status.ToString();
  for (const FederatedClient* c : {client_.get(), second->get()}) {
    const FederatedClientStats s = c->stats();
    EXPECT_EQ(s.rounds_trained, 2u);
    EXPECT_EQ(s.updates_accepted, 2u);
    EXPECT_EQ(s.updates_rejected, 0u);
    EXPECT_EQ(s.last_round, 2u);
    EXPECT_EQ(s.malformed_messages, 0u);
  }
  const nlohmann::json summary = (*service)->Summary();
  EXPECT_EQ(summary["rounds_completed"], 2);
  ASSERT_EQ(summary["rounds"].size(), 2u);
  for (const auto& round : summary["rounds"]) {
    EXPECT_TRUE(round["applied"].get<bool>()) << round.dump();
    EXPECT_EQ(round["succeeded"], 2) << round.dump();
    EXPECT_EQ(round["rejected"], 0) << round.dump();  // no duplicate or stale updates
  }
  const FederatedMetrics& fed = metrics->Federated();
  EXPECT_EQ(fed.round->Value(), 2);
  EXPECT_EQ(fed.updates_accepted->Value(), 4);
  EXPECT_EQ(fed.updates_rejected->Value(), 0);
  EXPECT_EQ(fed.updates_failed->Value(), 0);
  const prometheus::ClientMetric durations = fed.round_duration_seconds->Collect();
  EXPECT_EQ(durations.histogram.sample_count, 2u);
  EXPECT_GT(durations.histogram.sample_sum, 0.0);
  EXPECT_EQ(metrics->ConnectedEdges().Value(), 2);
  const ServiceMetrics& aggregator = metrics->Service("aggregator");
  EXPECT_GT(aggregator.requests[static_cast<size_t>(Outcome::kOk)]->Value(), 4);  // + heartbeats
  EXPECT_EQ(aggregator.requests[static_cast<size_t>(Outcome::kRejected)]->Value(), 0);
  EXPECT_GT(aggregator.wire_bytes_received->Value(), 0);
  EXPECT_GT(aggregator.wire_bytes_sent->Value(), aggregator.wire_bytes_received->Value())
      << "the global weights go out to both clients in every round";
  EXPECT_EQ(aggregator.compute_seconds->Collect().histogram.sample_count, 2u);
}

TEST_F(FederatedClientTest, StartRejectsBadInputs) {
  options_.aggregator = "tcp://127.0.0.1:1";
  FederatedClientOptions bad_id = options_;
  bad_id.client_id = "has space";
  EXPECT_FALSE(FederatedClient::Start(context_, bad_id, spec_, initial_, data_).ok());
  federated::Weights short_weights(initial_.begin(), initial_.end() - 1);
  EXPECT_FALSE(FederatedClient::Start(context_, options_, spec_, short_weights, data_).ok());
  split::LabeledImages bad_labels = data_;
  bad_labels.labels = torch::full({64}, 10, torch::kLong);
  EXPECT_FALSE(FederatedClient::Start(context_, options_, spec_, initial_, bad_labels).ok());
  EXPECT_FALSE(
      FederatedClient::Start(context_, options_, spec_, initial_, split::LabeledImages{}).ok());
}

}  // namespace
}  // namespace cleave::edge
