// LmServer in process (a tiny random language model, a real ROUTER and a DEALER in the
// test): every reply is counted by outcome, the wire bytes are the bytes that crossed the
// socket, and warm-up runs the model without touching sessions; the queue is bounded
// (`overloaded` at once), requests past their deadline are not computed, and stopping
// answers every accepted request.
#include "cloud/lm_server.h"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
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

lm_wire::LmRequest StatesRequest(uint64_t id, const std::string& session, int width,
                                 uint32_t deadline_ms) {
  std::vector<float> values(2 * width, 0.5f);
  lm_wire::LmRequest r;
  r.request_id = id;
  r.model = "lm";
  r.session = session;
  r.states =
      *wire::EncodeTensor(values.data(), {2, static_cast<uint32_t>(width)}, wire::DType::kUInt8, 0);
  r.predict = true;
  r.reset_session = true;
  r.deadline_ms = deadline_ms;
  return r;
}

TEST(LmServerTest, BoundedQueueDeadlinesAndDrainOnStop) {
  torch::manual_seed(6);
  split::SplitLm lm(split::LmSpec::Tiny());
  const int width = lm->spec().bottleneck;
  FakeClock clock(1'000'000);
  auto service = std::make_unique<LmTailService>("lm", lm, LmContextOptions{}, clock, false);
  TransportContext context;
  LmServerOptions options;
  options.listen = "tcp://127.0.0.1:0";
  options.metrics = std::make_shared<Metrics>();
  options.clock = &clock;
  options.max_queue = 2;
  std::mutex gate;  // held by the test: the compute thread waits in before_compute
  std::atomic<int> entered{0};
  options.before_compute = [&] {
    ++entered;
    std::lock_guard<std::mutex> pass(gate);
  };
  auto server = LmServer::Create(context, options, std::move(service));
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  std::atomic<bool> stop{false};
  std::thread loop([&] { (void)(*server)->Run([&] { return stop.load(); }); });
  auto client = DealerClient::Connect(context, (*server)->endpoint());
  ASSERT_TRUE(client.ok());
  auto send = [&](const lm_wire::LmRequest& r) {
    ASSERT_TRUE((*client)->Send(lm_wire::EncodeLmRequest(r), 1000).ok());
  };
  auto receive = [&]() -> lm_wire::LmReply {
    auto msg = (*client)->Receive(10000);
    EXPECT_TRUE(msg.ok() && msg->has_value()) << "no reply";
    if (!msg.ok() || !msg->has_value()) return {};
    auto reply = lm_wire::DecodeLmReply(**msg);
    EXPECT_TRUE(reply.ok()) << reply.status().ToString();
    return reply.ok() ? *reply : lm_wire::LmReply{};
  };
  auto wait_entered = [&](int n) {
    for (int i = 0; i < 1000 && entered.load() < n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ASSERT_EQ(entered.load(), n);
  };

  std::unique_lock<std::mutex> hold(gate);
  send(StatesRequest(1, "a", width, 0));  // computing, held
  wait_entered(1);
  send(StatesRequest(2, "b", width, 5));  // queued, 5 ms deadline
  send(StatesRequest(3, "c", width, 0));  // queued: the queue (2) is full
  send(StatesRequest(4, "d", width, 0));  // refused at once
  const lm_wire::LmReply refused = receive();
  EXPECT_EQ(refused.request_id, 4u);
  EXPECT_EQ(refused.status, lm_wire::LmStatus::kOverloaded);
  EXPECT_NE(refused.error.find("queue is full (2"), std::string::npos) << refused.error;
  clock.Advance(10'000);  // request 2 waited past its deadline
  hold.unlock();
  std::map<uint64_t, lm_wire::LmReply> replies;
  for (int i = 0; i < 3; ++i) {
    lm_wire::LmReply r = receive();
    replies[r.request_id] = r;
  }
  EXPECT_EQ(replies[1].status, lm_wire::LmStatus::kOk);
  EXPECT_EQ(replies[1].log_probs.size(), static_cast<size_t>(lm->spec().vocab));
  EXPECT_EQ(replies[2].status, lm_wire::LmStatus::kDeadlineExceeded);
  EXPECT_TRUE(replies[2].log_probs.empty());
  EXPECT_EQ(replies[3].status, lm_wire::LmStatus::kOk);
  EXPECT_EQ(entered.load(), 2) << "the expired request was not computed";

  // Stop while one request computes and one waits: both are still answered.
  hold.lock();
  send(StatesRequest(5, "e", width, 0));
  wait_entered(3);
  send(StatesRequest(6, "f", width, 0));
  for (int i = 0; i < 200 && (*server)->stats().received < 6; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  stop = true;
  hold.unlock();
  loop.join();
  std::map<uint64_t, lm_wire::LmReply> drained;
  for (int i = 0; i < 2; ++i) {
    lm_wire::LmReply r = receive();
    drained[r.request_id] = r;
  }
  EXPECT_EQ(drained[5].status, lm_wire::LmStatus::kOk);
  EXPECT_EQ(drained[6].status, lm_wire::LmStatus::kOk);

  EXPECT_EQ((*server)->stats().overloaded, 1u);
  EXPECT_EQ((*server)->stats().deadline_exceeded, 1u);
  const ServiceMetrics& m = options.metrics->Service("cloud");
  auto count = [&](Outcome o) { return m.requests[static_cast<size_t>(o)]->Value(); };
  EXPECT_EQ(count(Outcome::kOk), 4);
  EXPECT_EQ(count(Outcome::kOverloaded), 1);
  EXPECT_EQ(count(Outcome::kRejected), 1);  // past its deadline
  EXPECT_EQ(m.queue_seconds->Collect().histogram.sample_count, 4u) << "computed requests only";
  EXPECT_EQ(m.pending_requests->Value(), 0);
}

TEST(LmServerTest, CreateRejectsAnEmptyQueue) {
  split::SplitLm lm(split::LmSpec::Tiny());
  TransportContext context;
  LmServerOptions options;
  options.listen = "tcp://127.0.0.1:0";
  options.max_queue = 0;
  auto server = LmServer::Create(
      context, options,
      std::make_unique<LmTailService>("lm", lm, LmContextOptions{}, SystemClock(), false));
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kInvalidArgument);
  options.max_queue = 4;
  auto no_service = LmServer::Create(context, options, nullptr);
  ASSERT_FALSE(no_service.ok());
  EXPECT_EQ(no_service.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cleave::cloud
