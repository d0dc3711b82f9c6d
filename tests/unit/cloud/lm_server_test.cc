// LmServer in process (a tiny random language model, a real ROUTER and a DEALER in the
// test): every reply is counted by outcome, the wire bytes are the bytes that crossed the
// socket, and warm-up runs the model without touching sessions.
#include "cloud/lm_server.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "common/clock.h"
#include "common/metrics.h"

namespace cleave::cloud {
namespace {

TEST(LmServerTest, WarmUpAndMetricsCountOutcomesAndWireBytes) {
  torch::manual_seed(5);
  split::SplitLm lm(split::LmSpec::Tiny());
  const int width = lm->spec().bottleneck;
  auto service =
      std::make_unique<LmTailService>("lm", lm, LmContextOptions{}, SystemClock(), false);
  TransportContext context;
  LmServerOptions options;
  options.listen = "tcp://127.0.0.1:0";
  options.metrics = std::make_shared<Metrics>();
  auto server = LmServer::Create(context, options, std::move(service));
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->WarmUp().ok());
  EXPECT_EQ((*server)->service().context_stats().sessions, 0u) << "warm-up opened no session";
  std::atomic<bool> stop{false};
  std::thread loop([&] { (void)(*server)->Run([&] { return stop.load(); }); });
  auto client = DealerClient::Connect(context, (*server)->endpoint());
  ASSERT_TRUE(client.ok());

  uint64_t bytes_to_server = 0, bytes_from_server = 0;
  auto exchange = [&](const std::string& bytes) -> lm_wire::LmReply {
    bytes_to_server += WireBytes(bytes.size());
    EXPECT_TRUE((*client)->Send(bytes, 1000).ok());
    auto msg = (*client)->Receive(10000);
    EXPECT_TRUE(msg.ok() && msg->has_value()) << "no reply";
    if (!msg.ok() || !msg->has_value()) return {};
    bytes_from_server += WireBytes((*msg)->size());
    auto reply = lm_wire::DecodeLmReply(**msg);
    EXPECT_TRUE(reply.ok()) << reply.status().ToString();
    return reply.ok() ? *reply : lm_wire::LmReply{};
  };
  std::vector<float> values(2 * width, 0.5f);
  lm_wire::LmRequest r;
  r.request_id = 1;
  r.model = "lm";
  r.session = "s";
  r.states =
      *wire::EncodeTensor(values.data(), {2, static_cast<uint32_t>(width)}, wire::DType::kUInt8, 0);
  r.predict = true;
  EXPECT_EQ(exchange(lm_wire::EncodeLmRequest(r)).status, lm_wire::LmStatus::kResync);  // ok
  r.reset_session = true;
  EXPECT_EQ(exchange(lm_wire::EncodeLmRequest(r)).status, lm_wire::LmStatus::kOk);  // ok
  lm_wire::LmRequest other = r;
  other.model = "vision";
  EXPECT_EQ(exchange(lm_wire::EncodeLmRequest(other)).status, lm_wire::LmStatus::kError);
  EXPECT_EQ(exchange("garbage").status, lm_wire::LmStatus::kError);  // undecodable
  lm_wire::LmRequest tokens = r;  // this cloud holds no edge part: token requests are refused
  tokens.states = {};
  tokens.tokens = "ab";
  EXPECT_EQ(exchange(lm_wire::EncodeLmRequest(tokens)).status, lm_wire::LmStatus::kError);
  stop = true;
  loop.join();

  const ServiceMetrics& m = options.metrics->Service("cloud");
  auto count = [&](Outcome o) { return m.requests[static_cast<size_t>(o)]->Value(); };
  EXPECT_EQ(count(Outcome::kOk), 2);        // the resync and the prediction
  EXPECT_EQ(count(Outcome::kRejected), 3);  // other model, garbage, tokens
  EXPECT_EQ(count(Outcome::kError), 0);
  EXPECT_EQ(m.wire_bytes_received->Value(), static_cast<double>(bytes_to_server));
  EXPECT_EQ(m.wire_bytes_sent->Value(), static_cast<double>(bytes_from_server));
  EXPECT_EQ(m.compute_seconds->Collect().histogram.sample_count, 1u) << "only the prediction";
}

}  // namespace
}  // namespace cleave::cloud
