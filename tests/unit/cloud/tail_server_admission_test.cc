// TailServer admission with a held worker: a full queue answers `overloaded`, so does a
// request whose estimated queueing time is over the bound, requests past their deadline are
// not computed, and requests accepted before a model swap finish on the old version. Every
// request gets exactly one answer.
#include "cloud/tail_server.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "common/clock.h"
#include "common/inference_wire.h"
#include "common/metrics.h"
#include "split/bundle.h"
#include "split/vision_bundle.h"
#include "testing/tiny_bundle.h"

namespace cleave::cloud {
namespace {
// Holds the worker inside its first batch until released; later batches pass (until Rearm).
struct WorkerGate {
  std::mutex mu;
  std::condition_variable cv;
  bool entered = false;
  bool released = false;

  void Hold() {
    std::unique_lock<std::mutex> lock(mu);
    if (entered) return;  // only the first batch is held
    entered = true;
    cv.notify_all();
    cv.wait(lock, [&] { return released; });
  }
  void WaitEntered() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return entered; });
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu);
    released = true;
    cv.notify_all();
  }
  // Holds the next batch again. Call only while no batch is held.
  void Rearm() {
    std::lock_guard<std::mutex> lock(mu);
    entered = false;
    released = false;
  }
};

// A server with its own options (one worker, no batching delay) and a held worker.
class HeldServerTest : public ::testing::Test {
 protected:
  void Start(size_t max_queue, const Clock* clock, int64_t max_queue_wait_us = 0) {
    dir_ = testing::TempPath("tail_server_held");
    ASSERT_TRUE(testing::WriteTinyBundle(dir_).ok());
    auto bundle = Bundle::Open(dir_);
    ASSERT_TRUE(bundle.ok());
    auto model = split::CloudModel::Load(*bundle);
    ASSERT_TRUE(model.ok());
    TailServerOptions options;
    options.listen = "tcp://127.0.0.1:0";
    options.max_batch = 1;
    options.max_queue_delay_us = 0;
    options.max_queue = max_queue;
    options.max_queue_wait_us = max_queue_wait_us;
    options.workers = 1;
    options.metrics = metrics_;
    options.clock = clock;
    options.before_compute = [this](int) { gate_.Hold(); };
    auto server = TailServer::Create(context_, options, std::move(model).value());
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    thread_ = std::thread([this] { (void)server_->Run([this] { return stop_.load(); }); });
    auto client = DealerClient::Connect(context_, server_->endpoint());
    ASSERT_TRUE(client.ok());
    client_ = std::move(client).value();
  }
  void TearDown() override {
    gate_.Release();
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    std::filesystem::remove_all(dir_);
  }

  std::string Request(uint64_t id, uint32_t deadline_ms = 0) {
    torch::manual_seed(id);
    torch::Tensor f = torch::randn({1, 2, 7, 7});
    wire::InferRequest r;
    r.request_id = id;
    r.model = "fmnist";
    r.deadline_ms = deadline_ms;
    r.features = *wire::EncodeTensor(f.data_ptr<float>(), {1, 2, 7, 7}, wire::DType::kFloat32);
    return wire::EncodeInferRequest(r);
  }
  wire::InferReply Receive() {
    auto msg = client_->Receive(10000);
    EXPECT_TRUE(msg.ok() && msg->has_value()) << "no reply";
    if (!msg.ok() || !msg->has_value()) return {};
    auto reply = wire::DecodeInferReply(**msg);
    EXPECT_TRUE(reply.ok());
    return reply.ok() ? *reply : wire::InferReply{};
  }
  // Waits (no timing assertion) until the server has queued `n` requests.
  void WaitQueued(size_t n) {
    while (server_->queued_requests() != n) std::this_thread::yield();
  }

  std::filesystem::path dir_;
  TransportContext context_;
  std::shared_ptr<Metrics> metrics_ = std::make_shared<Metrics>();
  FakeClock clock_{1'000'000};  // outlives server_
  WorkerGate gate_;
  std::unique_ptr<TailServer> server_;
  std::unique_ptr<DealerClient> client_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
};

TEST_F(HeldServerTest, FullQueueAnswersOverloadedAndEveryRequestIsAnswered) {
  Start(/*max_queue=*/2, /*clock=*/nullptr);
  ASSERT_TRUE(client_->Send(Request(1), 1000).ok());
  gate_.WaitEntered();  // request 1 is being computed (held); the queue is empty
  for (uint64_t id = 2; id <= 10; ++id) ASSERT_TRUE(client_->Send(Request(id), 1000).ok());
  // 2 and 3 fill the queue; 4..10 are refused at once, while the worker is still held.
  std::set<uint64_t> overloaded;
  for (int i = 0; i < 7; ++i) {
    wire::InferReply reply = Receive();
    EXPECT_EQ(reply.status, wire::ReplyStatus::kOverloaded) << reply.request_id;
    EXPECT_FALSE(reply.error.empty());
    overloaded.insert(reply.request_id);
  }
  EXPECT_EQ(overloaded, (std::set<uint64_t>{4, 5, 6, 7, 8, 9, 10}));
  gate_.Release();
  std::set<uint64_t> served;
  for (int i = 0; i < 3; ++i) {
    wire::InferReply reply = Receive();
    EXPECT_EQ(reply.status, wire::ReplyStatus::kOk) << reply.error;
    served.insert(reply.request_id);
  }
  EXPECT_EQ(served, (std::set<uint64_t>{1, 2, 3}));
  stop_ = true;
  thread_.join();
  const ServiceMetrics& m = metrics_->Service("cloud");
  EXPECT_EQ(m.requests[static_cast<size_t>(Outcome::kOverloaded)]->Value(), 7);
  EXPECT_EQ(m.requests[static_cast<size_t>(Outcome::kOk)]->Value(), 3);
  EXPECT_EQ(server_->stats().replied_overloaded, 7u);
  EXPECT_EQ(m.pending_requests->Value(), 0);
}

// cloud.max_queue_wait_us: the first batch takes 1 ms on the fake clock, so the server learns
// 1 ms per request; with one request computing and one queued, a third would wait ~2 ms > 1.5
// ms and is answered `overloaded` at once although the queue has room.
TEST_F(HeldServerTest, EstimatedQueueWaitOverTheBoundAnswersOverloaded) {
  Start(/*max_queue=*/16, &clock_, /*max_queue_wait_us=*/1500);
  ASSERT_TRUE(client_->Send(Request(1), 1000).ok());
  gate_.WaitEntered();
  clock_.Advance(1000);
  gate_.Release();
  EXPECT_EQ(Receive().status, wire::ReplyStatus::kOk);
  gate_.Rearm();
  ASSERT_TRUE(client_->Send(Request(2), 1000).ok());
  gate_.WaitEntered();                                // 2 computing: 1 ms ahead of 3
  ASSERT_TRUE(client_->Send(Request(3), 1000).ok());  // admitted, queued: 2 ms ahead of 4
  ASSERT_TRUE(client_->Send(Request(4), 1000).ok());
  wire::InferReply refused = Receive();  // the worker is still held
  EXPECT_EQ(refused.request_id, 4u);
  EXPECT_EQ(refused.status, wire::ReplyStatus::kOverloaded);
  EXPECT_NE(refused.error.find("cloud.max_queue_wait_us"), std::string::npos) << refused.error;
  gate_.Release();
  std::set<uint64_t> served;
  for (int i = 0; i < 2; ++i) {
    wire::InferReply reply = Receive();
    EXPECT_EQ(reply.status, wire::ReplyStatus::kOk) << reply.error;
    served.insert(reply.request_id);
  }
  EXPECT_EQ(served, (std::set<uint64_t>{2, 3}));
  stop_ = true;
  thread_.join();
  EXPECT_EQ(server_->stats().replied_overloaded, 1u);
  EXPECT_EQ(server_->stats().replied_ok, 3u);
}

TEST_F(HeldServerTest, RequestsPastTheirDeadlineAreNotComputed) {
  Start(/*max_queue=*/8, &clock_);
  ASSERT_TRUE(client_->Send(Request(1), 1000).ok());
  gate_.WaitEntered();
  ASSERT_TRUE(client_->Send(Request(2, /*deadline_ms=*/5), 1000).ok());
  ASSERT_TRUE(client_->Send(Request(3, /*deadline_ms=*/50), 1000).ok());
  WaitQueued(2);
  clock_.Advance(10'000);  // 10 ms: request 2 is past its deadline, request 3 is not
  gate_.Release();
  std::map<uint64_t, wire::ReplyStatus> status;
  for (int i = 0; i < 3; ++i) {
    wire::InferReply reply = Receive();
    status[reply.request_id] = reply.status;
  }
  EXPECT_EQ(status[1], wire::ReplyStatus::kOk);
  EXPECT_EQ(status[2], wire::ReplyStatus::kDeadlineExceeded);
  EXPECT_EQ(status[3], wire::ReplyStatus::kOk);
  stop_ = true;
  thread_.join();
  // Two batches of one computed; the expired request never reached the model.
  const ServiceMetrics& m = metrics_->Service("cloud");
  EXPECT_EQ(m.batch_size->Collect().histogram.sample_count, 2u);
  EXPECT_EQ(server_->stats().replied_deadline, 1u);
  EXPECT_EQ(server_->stats().batches, 2u);
}

// Requests accepted before a swap (one computing, two queued) finish on the old version; a
// request accepted after it is computed by the new one.
TEST_F(HeldServerTest, RequestsAcceptedBeforeASwapFinishOnTheOldVersion) {
  Start(/*max_queue=*/8, nullptr);
  const std::filesystem::path v2_dir = testing::TempPath("tail_server_v2");
  ASSERT_TRUE(testing::WriteShiftedBundle(dir_, v2_dir).ok());
  auto v1_bundle = Bundle::Open(dir_);
  auto v2_bundle = Bundle::Open(v2_dir);
  ASSERT_TRUE(v1_bundle.ok() && v2_bundle.ok());
  auto v1 = split::CloudModel::Load(*v1_bundle);
  auto v2 = split::CloudModel::Load(*v2_bundle);
  ASSERT_TRUE(v1.ok() && v2.ok());

  ASSERT_TRUE(client_->Send(Request(1), 1000).ok());
  gate_.WaitEntered();  // request 1 is computing on version 0
  ASSERT_TRUE(client_->Send(Request(2), 1000).ok());
  ASSERT_TRUE(client_->Send(Request(3), 1000).ok());
  WaitQueued(2);
  auto fresh = LoadWarmCloudModels(v2_dir, 1);
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  ASSERT_TRUE(server_->SwapModels(2, std::move(fresh).value()).ok());
  ASSERT_TRUE(client_->Send(Request(4), 1000).ok());
  WaitQueued(3);  // request 4 was accepted (after the swap)
  gate_.Release();

  std::map<uint64_t, wire::InferReply> replies;
  for (int i = 0; i < 4; ++i) {
    wire::InferReply reply = Receive();
    replies[reply.request_id] = reply;
  }
  for (uint64_t id = 1; id <= 4; ++id) {
    ASSERT_EQ(replies[id].status, wire::ReplyStatus::kOk) << id << ": " << replies[id].error;
    torch::manual_seed(id);  // the features Request(id) sent
    const torch::Tensor input = torch::randn({1, 2, 7, 7});
    split::CloudModel& expected_model = id < 4 ? **v1 : **v2;
    split::CloudModel& other_model = id < 4 ? **v2 : **v1;
    auto expected = expected_model.RunTail(input);
    auto other = other_model.RunTail(input);
    ASSERT_TRUE(expected.ok() && other.ok());
    ASSERT_GT(((*expected) - (*other)).abs().max().item<float>(), 1e-3);
    for (int k = 0; k < 10; ++k) {
      EXPECT_NEAR(replies[id].scores[k], (*expected)[0][k].item<float>(), 1e-4)
          << "request " << id << " class " << k;
    }
  }
  EXPECT_EQ(server_->served_version(), 2u);
  std::filesystem::remove_all(v2_dir);
}

}  // namespace
}  // namespace cleave::cloud
