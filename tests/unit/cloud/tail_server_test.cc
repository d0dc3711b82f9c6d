// TailServer in process: replies match the tail model, every malformed request gets an
// error reply while the server keeps serving, and the server's metrics count what happened.
#include "cloud/tail_server.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>

#include "common/metrics.h"
#include "common/png_image.h"
#include "common/wire.h"
#include "split/bundle.h"
#include "testing/tiny_bundle.h"

namespace cleave::cloud {
namespace {

class TailServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempPath("tail_server");
    ASSERT_TRUE(testing::WriteTinyBundle(dir_).ok());
    auto bundle = Bundle::Open(dir_);
    ASSERT_TRUE(bundle.ok());
    auto model = split::CloudModel::Load(*bundle);
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    auto reference = split::CloudModel::Load(*bundle);
    ASSERT_TRUE(reference.ok());
    reference_ = std::move(reference).value();
    TailServerOptions options;
    options.listen = "tcp://127.0.0.1:0";
    options.max_batch = 8;
    options.metrics = metrics_;
    auto server = TailServer::Create(context_, options, std::move(model).value());
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    ASSERT_TRUE(server_->WarmUp().ok());
    thread_ = std::thread([this] { (void)server_->Run([this] { return stop_.load(); }); });
    auto client = DealerClient::Connect(context_, server_->endpoint());
    ASSERT_TRUE(client.ok());
    client_ = std::move(client).value();
  }
  void TearDown() override {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    std::filesystem::remove_all(dir_);
  }

  wire::InferRequest FeatureRequest(uint64_t id, std::vector<float>* values) {
    torch::manual_seed(id);
    torch::Tensor f = torch::randn({1, 2, 7, 7});
    values->assign(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
    wire::InferRequest r;
    r.request_id = id;
    r.model = "fmnist";
    r.features = *wire::EncodeTensor(values->data(), {1, 2, 7, 7}, wire::DType::kFloat32, 1);
    return r;
  }

  wire::InferReply RoundTrip(const std::string& bytes) {
    EXPECT_TRUE(client_->Send(bytes, 1000).ok());
    auto msg = client_->Receive(5000);
    EXPECT_TRUE(msg.ok() && msg->has_value()) << "no reply";
    if (!msg.ok() || !msg->has_value()) return {};
    auto reply = wire::DecodeInferReply(**msg);
    EXPECT_TRUE(reply.ok()) << reply.status().ToString();
    return reply.ok() ? *reply : wire::InferReply{};
  }

  std::filesystem::path dir_;
  TransportContext context_;
  std::shared_ptr<Metrics> metrics_ = std::make_shared<Metrics>();
  std::unique_ptr<split::CloudModel> reference_;
  std::unique_ptr<TailServer> server_;
  std::unique_ptr<DealerClient> client_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
};

TEST_F(TailServerTest, FeaturesAreAnsweredWithTheTailsScores) {
  std::vector<float> values;
  wire::InferRequest request = FeatureRequest(21, &values);
  wire::InferReply reply = RoundTrip(wire::EncodeInferRequest(request));
  ASSERT_EQ(reply.status, wire::ReplyStatus::kOk) << reply.error;
  EXPECT_EQ(reply.request_id, 21u);
  ASSERT_EQ(reply.num_classes, 10u);
  auto expected = reference_->RunTail(torch::from_blob(values.data(), {1, 2, 7, 7}).clone());
  ASSERT_TRUE(expected.ok());
  for (int c = 0; c < 10; ++c) {
    EXPECT_NEAR(reply.scores[c], (*expected)[0][c].item<float>(), 1e-5) << c;
  }
}

TEST_F(TailServerTest, PngImagesRunTheWholeModel) {
  GrayImage image;
  image.width = image.height = 28;
  image.pixels.assign(28 * 28, 128);
  wire::InferRequest request;
  request.request_id = 3;
  request.model = "fmnist";
  request.input = wire::InputKind::kPng;
  request.png = *EncodePngGray8(image);
  wire::InferReply reply = RoundTrip(wire::EncodeInferRequest(request));
  ASSERT_EQ(reply.status, wire::ReplyStatus::kOk) << reply.error;
  EXPECT_EQ(reply.scores.size(), 10u);

  request.png = "broken";
  wire::InferReply broken = RoundTrip(wire::EncodeInferRequest(request));
  EXPECT_EQ(broken.status, wire::ReplyStatus::kError);
  EXPECT_EQ(broken.request_id, 3u);
}

TEST_F(TailServerTest, RejectionsNameTheProblemAndServingContinues) {
  wire::InferReply garbage = RoundTrip("\x10\x20\x30 not a message");
  EXPECT_EQ(garbage.status, wire::ReplyStatus::kError);
  EXPECT_FALSE(garbage.error.empty());

  std::vector<float> values;
  wire::InferRequest unknown = FeatureRequest(4, &values);
  unknown.model = "imagenet";
  wire::InferReply unknown_reply = RoundTrip(wire::EncodeInferRequest(unknown));
  EXPECT_EQ(unknown_reply.status, wire::ReplyStatus::kError);
  EXPECT_NE(unknown_reply.error.find("not served"), std::string::npos);

  wire::InferRequest wrong_shape = FeatureRequest(5, &values);
  wrong_shape.features = *wire::EncodeTensor(values.data(), {1, 1, 7, 14}, wire::DType::kFloat32);
  wire::InferReply shape_reply = RoundTrip(wire::EncodeInferRequest(wrong_shape));
  EXPECT_EQ(shape_reply.status, wire::ReplyStatus::kError);
  EXPECT_EQ(shape_reply.request_id, 5u);
  EXPECT_NE(shape_reply.error.find("expects [1,2,7,7]"), std::string::npos) << shape_reply.error;

  wire::InferRequest version = FeatureRequest(6, &values);
  version.protocol_version = 99;
  wire::InferReply version_reply = RoundTrip(wire::EncodeInferRequest(version));
  EXPECT_EQ(version_reply.status, wire::ReplyStatus::kError);
  EXPECT_EQ(version_reply.request_id, 6u);
  EXPECT_NE(version_reply.error.find("version"), std::string::npos);

  // Still serving.
  wire::InferReply ok = RoundTrip(wire::EncodeInferRequest(FeatureRequest(7, &values)));
  EXPECT_EQ(ok.status, wire::ReplyStatus::kOk);
  EXPECT_GE(server_->stats().replied_error, 4u);
}

TEST_F(TailServerTest, ConcurrentRequestsAreBatchedAndAllAnswered) {
  std::vector<float> values;
  for (uint64_t id = 100; id < 132; ++id) {
    ASSERT_TRUE(client_->Send(wire::EncodeInferRequest(FeatureRequest(id, &values)), 1000).ok());
  }
  std::set<uint64_t> ids;
  uint32_t largest_batch = 0;
  for (int i = 0; i < 32; ++i) {
    auto msg = client_->Receive(5000);
    ASSERT_TRUE(msg.ok() && msg->has_value());
    auto reply = wire::DecodeInferReply(**msg);
    ASSERT_TRUE(reply.ok());
    EXPECT_EQ(reply->status, wire::ReplyStatus::kOk);
    EXPECT_LE(reply->batch_size, 8u);  // max_batch
    largest_batch = std::max(largest_batch, reply->batch_size);
    ids.insert(reply->request_id);
  }
  EXPECT_EQ(ids.size(), 32u);
  EXPECT_GE(largest_batch, 1u);
}

TEST_F(TailServerTest, MetricsCountOutcomesWireBytesAndBatches) {
  // What the client put on and took off the wire, to compare with the server's counts.
  uint64_t bytes_to_server = 0, bytes_from_server = 0;
  auto exchange = [&](const std::string& bytes) {
    bytes_to_server += WireBytes(bytes.size());
    ASSERT_TRUE(client_->Send(bytes, 1000).ok());
    auto msg = client_->Receive(5000);
    ASSERT_TRUE(msg.ok() && msg->has_value()) << "no reply";
    bytes_from_server += WireBytes((*msg)->size());
  };
  std::vector<float> values;
  for (uint64_t id = 1; id <= 3; ++id) {
    exchange(wire::EncodeInferRequest(FeatureRequest(id, &values)));
  }
  exchange("garbage");
  wire::InferRequest unknown = FeatureRequest(9, &values);
  unknown.model = "imagenet";
  exchange(wire::EncodeInferRequest(unknown));
  // The one peer shows as a connected edge at the next sweep (about once a second).
  prometheus::Gauge& connected = metrics_->ConnectedEdges();
  for (int i = 0; i < 300 && connected.Value() != 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(connected.Value(), 1);
  stop_ = true;
  thread_.join();  // every count is final once the loop is gone

  const ServiceMetrics& m = metrics_->Service("cloud");
  auto count = [&](Outcome o) { return m.requests[static_cast<size_t>(o)]->Value(); };
  EXPECT_EQ(count(Outcome::kOk), 3);
  EXPECT_EQ(count(Outcome::kRejected), 2);  // undecodable, unknown model
  for (Outcome o : {Outcome::kError, Outcome::kOverloaded, Outcome::kExit, Outcome::kOffload,
                    Outcome::kDegraded}) {
    EXPECT_EQ(count(o), 0) << OutcomeName(o);
  }
  EXPECT_EQ(m.wire_bytes_received->Value(), static_cast<double>(bytes_to_server));
  EXPECT_EQ(m.wire_bytes_sent->Value(), static_cast<double>(bytes_from_server));
  // One request at a time: three batches of one, each queued and computed once.
  EXPECT_EQ(m.queue_seconds->Collect().histogram.sample_count, 3u);
  EXPECT_EQ(m.compute_seconds->Collect().histogram.sample_count, 3u);
  const prometheus::ClientMetric batches = m.batch_size->Collect();
  EXPECT_EQ(batches.histogram.sample_count, 3u);
  EXPECT_EQ(batches.histogram.sample_sum, 3.0);
  EXPECT_GT(m.compute_seconds->Collect().histogram.sample_sum, 0.0);
  EXPECT_EQ(m.pending_requests->Value(), 0);
}

}  // namespace
}  // namespace cleave::cloud
