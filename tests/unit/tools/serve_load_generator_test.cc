// The load generator's pre-encoded requests: writing an id into the bytes encoded once gives
// exactly the bytes of encoding the request with that id, for both wire versions and many
// ids, and the ids it hands out are distinct, increasing and free of zero bytes.
#include "tools/serve_load_generator.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

namespace cleave::tools {
namespace {

wire::InferRequest Compact() {
  wire::InferRequest r;
  r.protocol_version = wire::kCompactProtocolVersion;
  r.deadline_ms = 2000;
  r.layout_tag = 0x1200;  // a zero byte next to the id
  r.input = wire::InputKind::kCodedFeatures;
  r.coded = std::string("\x01\x00\x00\x7f coded", 10);
  return r;
}

wire::InferRequest Version1() {
  wire::InferRequest r;
  r.model = "fmnist";
  r.deadline_ms = 50;
  r.input = wire::InputKind::kFeatures;
  r.features.dtype = wire::DType::kUInt8;
  r.features.shape = {1, 2, 1, 1};
  r.features.channel_axis = 1;
  r.features.quant.scale = {0.5f, 0.25f};
  r.features.quant.zero_point = {0, 3};
  r.features.data = std::string("\x00\x09", 2);
  return r;
}

TEST(PreEncodedRequestTest, WritingAnIdGivesTheBytesOfEncodingWithIt) {
  for (const wire::InferRequest& request : {Compact(), Version1()}) {
    auto encoded = PreEncodedRequest::Make(request);
    ASSERT_TRUE(encoded.ok()) << encoded.status().ToString();
    const bool wide = request.protocol_version == wire::kProtocolVersion;
    EXPECT_EQ(encoded->wide_id(), wide);
    std::string bytes;
    for (uint64_t n : {0ull, 1ull, 254ull, 255ull, 256ull, 65'024ull, 65'025ull, 16'777'215ull,
                       4'228'250'624ull}) {
      const uint64_t id = PreEncodedRequest::IdOf(n, wide);
      encoded->WithId(id, &bytes);
      wire::InferRequest expected = request;
      expected.request_id = id;
      EXPECT_EQ(bytes, wire::EncodeInferRequest(expected)) << n;
      auto decoded = wire::DecodeInferRequest(bytes);
      ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
      EXPECT_EQ(decoded->request_id, id);
      EXPECT_EQ(decoded->deadline_ms, request.deadline_ms);
    }
  }
}

TEST(PreEncodedRequestTest, IdsAreIncreasingAndHaveNoZeroByte) {
  for (bool wide : {false, true}) {
    uint64_t previous = 0;
    for (uint64_t n = 0; n < 200'000; n += 7) {
      const uint64_t id = PreEncodedRequest::IdOf(n, wide);
      EXPECT_GT(id, previous) << n;
      previous = id;
      for (int b = 0; b < (wide ? 8 : 4); ++b) ASSERT_NE((id >> (8 * b)) & 0xff, 0u) << n;
      if (!wide) {
        EXPECT_LT(id, uint64_t{1} << 32);
      }
    }
  }
}

// A stand-in for cleave-cloud: answers every request it can read with one score, and every
// `refuse_every`th with `overloaded`, taking requests in bursts.
class EchoCloud {
 public:
  explicit EchoCloud(TransportContext& context, int refuse_every = 0)
      : refuse_every_(refuse_every) {
    auto server = RouterServer::Bind(context, "tcp://127.0.0.1:0");
    EXPECT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    thread_ = std::thread([this] { Serve(); });
  }
  ~EchoCloud() {
    stop_ = true;
    thread_.join();
  }
  const std::string& endpoint() const { return server_->endpoint(); }
  uint64_t answered() const { return answered_.load(); }

 private:
  void Serve() {
    std::vector<InboundMessage> burst;
    std::string bytes;
    while (!stop_) {
      zmq_pollitem_t item{server_->socket().handle(), 0, ZMQ_POLLIN, 0};
      if (zmq_poll(&item, 1, 20) <= 0) continue;
      burst.clear();
      if (!server_->ReceiveBurst(16, &burst).ok()) return;
      for (InboundMessage& message : burst) {
        auto header = wire::PeekInferRequest(message.bytes());
        wire::InferReply reply;
        reply.request_id = header.ok() ? header->request_id : 0;
        const uint64_t n = answered_.fetch_add(1);
        if (!header.ok()) {
          reply.status = wire::ReplyStatus::kError;
          reply.error = header.status().ToString();
        } else if (refuse_every_ > 0 && n % refuse_every_ == 0) {
          reply.status = wire::ReplyStatus::kOverloaded;
          reply.error = "retry later";
        } else {
          reply.status = wire::ReplyStatus::kOk;
          reply.scores = {1.0f};
          reply.num_classes = 1;
          reply.batch_size = static_cast<uint32_t>(burst.size());
        }
        wire::EncodeInferReply(reply, &bytes);
        EXPECT_TRUE(server_->Send(message.peer, bytes).ok());
      }
    }
  }

  const int refuse_every_;
  std::unique_ptr<RouterServer> server_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> answered_{0};
  std::thread thread_;
};

std::vector<wire::InferRequest> Pool() {
  std::vector<wire::InferRequest> pool = {Compact(), Compact(), Version1()};
  pool[1].coded = "other";
  return pool;
}

// Many sockets on one thread, each with one request in flight: every reply is matched to its
// request (none stray), refusals are counted and honoured, and nothing is left in flight.
TEST(LoadGeneratorTest, ClosedLoopMatchesEveryReplyToItsRequest) {
  TransportContext context;
  EchoCloud cloud(context, /*refuse_every=*/10);
  auto gen = LoadGenerator::Connect(context, cloud.endpoint(), 16, Pool());
  ASSERT_TRUE(gen.ok()) << gen.status().ToString();
  auto outcomes = (*gen)->ClosedLoop(16, 0.1, 0.5, 1000, 0.1);
  ASSERT_TRUE(outcomes.ok()) << outcomes.status().ToString();
  EXPECT_GT(outcomes->ok, 0u);
  EXPECT_GT(outcomes->overloaded, 0u);
  EXPECT_EQ(outcomes->error, 0u);
  EXPECT_EQ(outcomes->stray, 0u);
  EXPECT_EQ(outcomes->ok_latency_ms.size(), outcomes->ok);
  EXPECT_EQ((*gen)->in_flight(), 0u);
}

// Open loop: many requests in flight per socket; every one sent is answered and matched.
TEST(LoadGeneratorTest, OpenLoopAnswersEveryRequestSent) {
  TransportContext context;
  EchoCloud cloud(context);
  auto gen = LoadGenerator::Connect(context, cloud.endpoint(), 4, Pool());
  ASSERT_TRUE(gen.ok()) << gen.status().ToString();
  auto outcomes = (*gen)->OpenLoop(4000, 0.5, 1000, [] {});
  ASSERT_TRUE(outcomes.ok()) << outcomes.status().ToString();
  EXPECT_GT(outcomes->sent, 1000u);
  EXPECT_EQ(outcomes->send_failed, 0u);
  EXPECT_EQ(outcomes->answered(), outcomes->sent);
  EXPECT_EQ(outcomes->ok, outcomes->sent);
  EXPECT_EQ(outcomes->stray, 0u);
  EXPECT_EQ(cloud.answered(), outcomes->sent);
}

}  // namespace
}  // namespace cleave::tools
