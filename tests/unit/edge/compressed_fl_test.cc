// Compressed updates over ZeroMQ, in process: the real AggregatorService asks for int8 or topk
// updates (RoundConfig.compression) and real FederatedClients send Update.compressed; a
// hand-driven client sends a corrupted payload, which is refused while the round goes on.
#include <gtest/gtest.h>

#include <atomic>
#include <optional>
#include <thread>
#include <variant>

#include "common/fl_wire.h"
#include "common/metrics.h"
#include "edge/fl_client.h"
#include "federated/aggregator_service.h"
#include "federated/update_compression.h"
#include "federated/wire_convert.h"
#include "testing/tiny_bundle.h"
#include "unit/edge/fl_test_harness.h"

namespace cleave::edge {
namespace {

namespace fl = wire::fl;
using nlohmann::json;

constexpr int kCompressedWaitMs = 30000;  // generous: the machine is shared

federated::CompressionConfig Compression(const std::string& kind, double topk_fraction = 0.05) {
  federated::CompressionConfig c;
  c.kind = kind;
  c.topk_fraction = topk_fraction;
  return c;
}

class CompressedFederatedTest : public InProcessFederationTest {};

TEST_F(CompressedFederatedTest, Int8AndTopKRoundsApplyWithFewerBytesUp) {
  federated::AggregatorOptions options = AggregatorOptions(2, 2);
  // Per round from the server side: int8 first, then topk.
  options.compression_for_round = [](int round) {
    return round == 1 ? Compression("int8") : Compression("topk", 0.05);
  };
  StartAggregator(options);
  StartClient("edge-0");
  StartClient("edge-1");
  ASSERT_TRUE(JoinAggregator(120000)) << run_status_.ToString() << service_->Summary().dump(2);
  const json summary = service_->Summary();
  ASSERT_EQ(summary["rounds"].size(), 2u);
  const char* kinds[] = {"int8", "topk"};
  for (size_t r = 0; r < 2; ++r) {
    const json& round = summary["rounds"][r];
    EXPECT_TRUE(round["applied"].get<bool>()) << round.dump(2);
    EXPECT_EQ(round["succeeded"], 2) << round.dump(2);
    EXPECT_EQ(round["rejected"], 0) << round.dump(2);
    const json& compression = round["compression"];
    EXPECT_EQ(compression["kind"], kinds[r]) << round.dump(2);
    const int64_t bytes_up = round["bytes_up"].get<int64_t>();
    const int64_t dense = compression["dense_bytes_up"].get<int64_t>();
    // Frames as received (packed Cap'n Proto: may be smaller than the payload itself).
    EXPECT_GT(bytes_up, 0) << round.dump(2);
    EXPECT_GT(compression["payload_bytes_up"].get<int64_t>(), 0) << round.dump(2);
    // int8 ~26% of float32 plus the message around it; topk 5% keeps ~10% of the bytes.
    EXPECT_LT(bytes_up, dense * (r == 0 ? 0.35 : 0.2)) << round.dump(2);
  }
  EXPECT_EQ(summary["counters"].value("update_compressed_undecodable", 0), 0);
  for (const auto& c : clients_) {
    ASSERT_TRUE(
        c->WaitFor([](const FederatedClientStats& s) { return s.finished; }, kCompressedWaitMs));
    const FederatedClientStats s = c->stats();
    EXPECT_EQ(s.compressed_updates, 2u) << s.ToJson().dump();
    EXPECT_EQ(s.updates_accepted, 2u) << s.ToJson().dump();
  }
}

// A client the test drives by hand: registers, waits for its RoundConfig and sends a compressed
// update whose payload is cut short.
TEST_F(CompressedFederatedTest, CorruptedCompressedUpdateIsRejectedAndTheRoundApplies) {
  federated::AggregatorOptions options = AggregatorOptions(1, 3);
  options.compression = Compression("int8");
  StartAggregator(options);
  auto dealer = DealerClient::Connect(context_, service_->endpoint());
  ASSERT_TRUE(dealer.ok()) << dealer.status().ToString();
  DealerClient& raw = **dealer;
  const auto send = [&](const fl::Message& m) {
    ASSERT_TRUE(raw.Send(fl::EncodeMessage(m), 1000).ok());
  };
  // Waits for a message of type T, answering nothing else.
  const auto await = [&](auto tag) -> std::optional<decltype(tag)> {
    using T = decltype(tag);
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(kCompressedWaitMs);
    while (std::chrono::steady_clock::now() < deadline) {
      Result<std::optional<std::string>> in = raw.Receive(50);
      if (!in.ok() || !in->has_value()) continue;
      Result<fl::Message> m = fl::DecodeMessage(**in);
      if (!m.ok()) continue;
      if (const T* body = std::get_if<T>(&m->body)) return *body;
      if (std::holds_alternative<fl::Wait>(m->body)) {
        fl::Heartbeat hb;
        hb.client_id = "edge-raw";
        send(fl::Message(hb));
      }
    }
    return std::nullopt;
  };
  fl::Register reg;
  reg.client_id = "edge-raw";
  reg.num_examples = 64;
  reg.model_name = "tiny";
  reg.layout_sha256 = federated::LayoutSha256(layout_);
  send(fl::Message(reg));
  const auto reply = await(fl::RegisterReply{});
  ASSERT_TRUE(reply && reply->accepted);
  StartClient("edge-0");
  StartClient("edge-1");
  fl::Heartbeat hb;
  hb.client_id = "edge-raw";
  send(fl::Message(hb));
  const auto config = await(fl::RoundConfig{});
  ASSERT_TRUE(config.has_value());
  EXPECT_EQ(config->compression.kind, fl::CompressionKind::kInt8);

  federated::Weights global;
  for (const auto& t : config->weights) global.push_back(*federated::FromWireTensor(t));
  federated::Weights trained;
  for (const auto& w : global) trained.push_back(w + 0.01);
  Result<std::string> encoded = federated::EncodeUpdate(Compression("int8"), global, trained,
                                                        config->trainable, config->round, 7);
  ASSERT_TRUE(encoded.ok()) << encoded.status().ToString();
  fl::Update update;
  update.round = config->round;
  update.client_id = "edge-raw";
  update.num_examples = 64;
  update.compressed = encoded->substr(0, encoded->size() - 1);  // one byte short
  send(fl::Message(update));
  const auto ack = await(fl::UpdateAck{});
  ASSERT_TRUE(ack.has_value());
  EXPECT_FALSE(ack->accepted);
  EXPECT_EQ(ack->reason, fl::AckReason::kMalformed);
  EXPECT_NE(ack->message.find("compressed update"), std::string::npos) << ack->message;

  ASSERT_TRUE(JoinAggregator(120000)) << run_status_.ToString() << service_->Summary().dump(2);
  const json summary = service_->Summary();
  ASSERT_EQ(summary["rounds"].size(), 1u);
  const json& round = summary["rounds"][0];
  EXPECT_TRUE(round["applied"].get<bool>()) << round.dump(2);
  EXPECT_EQ(round["succeeded"], 2) << round.dump(2);
  EXPECT_EQ(round["rejected"], 1) << round.dump(2);
  EXPECT_LT(round["bytes_up"].get<int64_t>(), round["compression"]["dense_bytes_up"].get<int64_t>())
      << round.dump(2);
  EXPECT_EQ(summary["counters"].value("update_compressed_undecodable", 0), 1);
}

// int8 is accepted with secure aggregation, but secure rounds stay uncompressed: the edges mask
// their dense update as without compression.
TEST_F(CompressedFederatedTest, SecureRoundsWithInt8ConfiguredStayUncompressed) {
  federated::AggregatorOptions options = AggregatorOptions(1, 3);
  options.compression = Compression("int8");
  options.engine.secure.enabled = true;
  options.engine.trainable = federated::TrainableSet::kHeadAndExits;
  StartAggregator(options);
  for (int i = 0; i < 3; ++i) StartClient("edge-" + std::to_string(i));
  ASSERT_TRUE(JoinAggregator(120000)) << run_status_.ToString() << service_->Summary().dump(2);
  const json summary = service_->Summary();
  ASSERT_EQ(summary["rounds"].size(), 1u);
  const json& round = summary["rounds"][0];
  EXPECT_TRUE(round["applied"].get<bool>()) << round.dump(2);
  EXPECT_EQ(round["secure_aggregation"]["contributors"], 3) << round.dump(2);
  EXPECT_EQ(round["compression"]["kind"], "none") << round.dump(2);
  EXPECT_GT(round["bytes_up"].get<int64_t>(), 0) << round.dump(2);
  for (const auto& c : clients_) {
    ASSERT_TRUE(
        c->WaitFor([](const FederatedClientStats& s) { return s.finished; }, kCompressedWaitMs));
    const FederatedClientStats s = c->stats();
    EXPECT_EQ(s.masked_inputs_sent, 1u) << s.ToJson().dump();
    EXPECT_EQ(s.compressed_updates, 0u) << s.ToJson().dump();
  }
}

TEST_F(CompressedFederatedTest, CreateRefusesIncompatibleCompression) {
  federated::AggregatorModel model;
  model.spec = spec_;
  model.initial = initial_;
  federated::AggregatorOptions options = AggregatorOptions(1, 2);
  options.compression = Compression("topk");
  options.engine.secure.enabled = true;
  auto secure = federated::AggregatorService::Create(options, model, context_, SystemClock());
  ASSERT_FALSE(secure.ok());
  EXPECT_NE(secure.status().message().find("secure aggregation"), std::string::npos);
  options = AggregatorOptions(1, 2);
  options.compression = Compression("topk");
  options.strategy.name = "fedmedian";
  EXPECT_FALSE(federated::AggregatorService::Create(options, model, context_, SystemClock()).ok());
  options = AggregatorOptions(1, 2);
  options.compression = Compression("gzip");
  auto unknown = federated::AggregatorService::Create(options, model, context_, SystemClock());
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("compression.kind"), std::string::npos)
      << unknown.status().ToString();
}

}  // namespace
}  // namespace cleave::edge
