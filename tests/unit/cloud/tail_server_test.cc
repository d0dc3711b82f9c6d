// TailServer in process: replies match the tail model, every malformed request gets an
// error reply while the server keeps serving, concurrent clients are all answered, models
// swap under traffic, and the server's metrics count what happened. Admission with a held
// worker (overloaded, deadlines): tail_server_admission_test.cc.
#include "cloud/tail_server.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <set>
#include <thread>

#include "cloud/model_repository.h"
#include "common/clock.h"
#include "common/feature_coding.h"
#include "common/inference_wire.h"
#include "common/metrics.h"
#include "common/png_image.h"
#include "split/bundle.h"
#include "split/vision_bundle.h"
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
    // Two workers, each with its own copy of the model.
    std::vector<std::unique_ptr<split::CloudModel>> models;
    for (int w = 0; w < 2; ++w) {
      auto model = split::CloudModel::Load(*bundle);
      ASSERT_TRUE(model.ok()) << model.status().ToString();
      models.push_back(std::move(model).value());
    }
    auto reference = split::CloudModel::Load(*bundle);
    ASSERT_TRUE(reference.ok());
    reference_ = std::move(reference).value();
    TailServerOptions options;
    options.listen = "tcp://127.0.0.1:0";
    options.max_batch = 8;
    options.workers = 2;
    options.metrics = metrics_;
    auto server = TailServer::Create(context_, options, std::move(models));
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

  const std::string whole = wire::EncodeInferRequest(FeatureRequest(8, &values));
  for (size_t cut : {size_t{0}, size_t{1}, size_t{7}, whole.size() / 2, whole.size() - 1}) {
    wire::InferReply truncated = RoundTrip(whole.substr(0, cut));
    EXPECT_EQ(truncated.status, wire::ReplyStatus::kError) << cut;
  }

  // Still serving.
  wire::InferReply ok = RoundTrip(wire::EncodeInferRequest(FeatureRequest(7, &values)));
  EXPECT_EQ(ok.status, wire::ReplyStatus::kOk);
  EXPECT_GE(server_->stats().replied_error, 4u);
}

// Version 2 requests: the features coded with the bundle's layout of split point 0 are
// answered like the same features in version 1; a layout tag of another bundle, a split point
// the bundle does not have and bytes that do not decode are refused, and serving goes on.
TEST_F(TailServerTest, CompactRequestsAreCheckedByLayoutAndAnswered) {
  const wire::FeatureLayout layout = reference_->layout(0);
  torch::manual_seed(31);
  const torch::Tensor f = torch::randn({1, 2, 7, 7});
  Result<std::string> coded = wire::CodeFeatures(layout, f.data_ptr<float>());
  ASSERT_TRUE(coded.ok()) << coded.status().ToString();
  wire::InferRequest r;
  r.protocol_version = wire::kCompactProtocolVersion;
  r.request_id = 77;
  r.input = wire::InputKind::kCodedFeatures;
  r.layout_tag = reference_->layout_tag(0);
  r.coded = *coded;
  wire::InferReply reply = RoundTrip(wire::EncodeInferRequest(r));
  ASSERT_EQ(reply.status, wire::ReplyStatus::kOk) << reply.error;
  EXPECT_EQ(reply.request_id, 77u);
  Result<std::vector<float>> dequantized = wire::DecodeFeatures(layout, *coded);
  ASSERT_TRUE(dequantized.ok());
  auto expected = reference_->RunTail(torch::from_blob(dequantized->data(), {1, 2, 7, 7}).clone());
  ASSERT_TRUE(expected.ok());
  for (int c = 0; c < 10; ++c) EXPECT_NEAR(reply.scores[c], (*expected)[0][c].item<float>(), 1e-5);

  wire::InferRequest packed = r;  // the packed variant decodes the same way
  packed.input = wire::InputKind::kPackedFeatures;
  packed.request_id = 78;
  wire::InferReply packed_reply = RoundTrip(wire::EncodeInferRequest(packed));
  ASSERT_EQ(packed_reply.status, wire::ReplyStatus::kOk) << packed_reply.error;
  EXPECT_EQ(packed_reply.scores, reply.scores);

  wire::InferRequest other = r;
  other.layout_tag = static_cast<uint16_t>(r.layout_tag + 1);
  wire::InferReply other_reply = RoundTrip(wire::EncodeInferRequest(other));
  EXPECT_EQ(other_reply.status, wire::ReplyStatus::kError);
  EXPECT_EQ(other_reply.request_id, 77u);
  EXPECT_NE(other_reply.error.find("another bundle"), std::string::npos) << other_reply.error;

  wire::InferRequest split = r;
  split.split = 3;
  wire::InferReply split_reply = RoundTrip(wire::EncodeInferRequest(split));
  EXPECT_EQ(split_reply.status, wire::ReplyStatus::kError);
  EXPECT_NE(split_reply.error.find("split point 3 is not served"), std::string::npos)
      << split_reply.error;

  wire::InferRequest short_bytes = r;
  short_bytes.coded.pop_back();
  wire::InferReply short_reply = RoundTrip(wire::EncodeInferRequest(short_bytes));
  EXPECT_EQ(short_reply.status, wire::ReplyStatus::kError);
  EXPECT_NE(short_reply.error.find("bytes"), std::string::npos) << short_reply.error;

  wire::InferReply again = RoundTrip(wire::EncodeInferRequest(r));
  EXPECT_EQ(again.status, wire::ReplyStatus::kOk);
}

// A bundle with a further split point: the server computes each request with the tail of the
// split point it names.
TEST(TailServerSplitsTest, EachRequestIsFinishedByTheTailOfItsSplitPoint) {
  const std::filesystem::path dir = testing::TempPath("tail_server_splits");
  ASSERT_TRUE(testing::WriteTinyBundle(dir).ok());
  {
    auto tiny = Bundle::Open(dir);
    ASSERT_TRUE(tiny.ok());
    split::VisionBundleParts parts;
    parts.head_int8 = true;
    auto model = split::ReadVisionBundle(*tiny, parts);
    ASSERT_TRUE(model.ok());
    auto point = split::SplitPoint::Plain(model->spec, 3, wire::DType::kFloat32);
    ASSERT_TRUE(point.ok());
    model->splits.push_back(*point);
    ASSERT_TRUE(split::WriteVisionBundle(dir, *model).ok());
  }
  auto bundle = Bundle::Open(dir);
  ASSERT_TRUE(bundle.ok());
  auto served = split::CloudModel::Load(*bundle);
  auto reference = split::CloudModel::Load(*bundle);
  ASSERT_TRUE(served.ok() && reference.ok());
  ASSERT_EQ((*served)->num_splits(), 2);
  TransportContext context;
  TailServerOptions options;
  options.listen = "tcp://127.0.0.1:0";
  auto server = TailServer::Create(context, options, std::move(served).value());
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->WarmUp().ok());
  std::atomic<bool> stop{false};
  std::thread thread([&] { (void)(*server)->Run([&] { return stop.load(); }); });
  auto client = DealerClient::Connect(context, (*server)->endpoint());
  ASSERT_TRUE(client.ok());
  torch::manual_seed(5);
  const torch::Tensor f = torch::randn({1, 8, 7, 7});
  wire::InferRequest r;
  r.protocol_version = wire::kCompactProtocolVersion;
  r.request_id = 1;
  r.split = 1;
  r.input = wire::InputKind::kCodedFeatures;
  r.layout_tag = (*reference)->layout_tag(1);
  r.coded = *wire::CodeFeatures((*reference)->layout(1), f.data_ptr<float>());
  ASSERT_TRUE((*client)->Send(wire::EncodeInferRequest(r), 1000).ok());
  auto msg = (*client)->Receive(5000);
  ASSERT_TRUE(msg.ok() && msg->has_value());
  auto reply = wire::DecodeInferReply(**msg);
  ASSERT_TRUE(reply.ok());
  ASSERT_EQ(reply->status, wire::ReplyStatus::kOk) << reply->error;
  auto expected = (*reference)->RunTail(f, 1);
  ASSERT_TRUE(expected.ok());
  for (int c = 0; c < 10; ++c) EXPECT_NEAR(reply->scores[c], (*expected)[0][c].item<float>(), 1e-4);
  stop = true;
  thread.join();
  std::filesystem::remove_all(dir);
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

// The socket thread admits by the header alone; the workers decode. A burst mixing good
// requests of both versions with requests whose header is fine but whose payload is not
// (decoded on a worker, in the middle of a batch) gets one reply per request: the good ones
// their scores, the bad ones an error naming the problem, and serving goes on.
TEST_F(TailServerTest, PayloadsRefusedByTheWorkersGetErrorsAndTheirBatchIsServed) {
  const wire::FeatureLayout layout = reference_->layout(0);
  torch::manual_seed(41);
  const torch::Tensor f = torch::randn({1, 2, 7, 7});
  Result<std::string> coded = wire::CodeFeatures(layout, f.data_ptr<float>());
  ASSERT_TRUE(coded.ok()) << coded.status().ToString();
  wire::InferRequest compact;
  compact.protocol_version = wire::kCompactProtocolVersion;
  compact.input = wire::InputKind::kCodedFeatures;
  compact.layout_tag = reference_->layout_tag(0);
  compact.coded = *coded;

  std::map<uint64_t, std::string> expected_error;  // id -> fragment; absent: ok
  std::vector<std::string> burst;
  std::vector<float> values;
  for (uint64_t id = 1; id <= 60; ++id) {
    wire::InferRequest r = compact;
    r.request_id = id;
    switch (id % 6) {
      case 1:  // features that do not decode in the layout
        r.input = wire::InputKind::kPackedFeatures;
        r.coded.pop_back();
        expected_error[id] = "bytes";
        break;
      case 2:  // an empty payload: the decoder refuses it
        r.coded.clear();
        expected_error[id] = "features is empty";
        break;
      case 3: {  // version 1 naming another model
        r = FeatureRequest(id, &values);
        r.model = "imagenet";
        expected_error[id] = "not served";
        break;
      }
      case 4:  // version 1, good
        r = FeatureRequest(id, &values);
        break;
      case 5: {  // version 1 with a tensor the decoder refuses
        r = FeatureRequest(id, &values);
        r.features.data.pop_back();
        expected_error[id] = "features";
        break;
      }
      default: break;  // version 2, good
    }
    burst.push_back(wire::EncodeInferRequest(r));
  }
  for (const std::string& bytes : burst) ASSERT_TRUE(client_->Send(bytes, 1000).ok());
  std::set<uint64_t> answered;
  for (size_t i = 0; i < burst.size(); ++i) {
    auto msg = client_->Receive(10000);
    ASSERT_TRUE(msg.ok() && msg->has_value()) << "replies: " << answered.size();
    auto reply = wire::DecodeInferReply(**msg);
    ASSERT_TRUE(reply.ok()) << reply.status().ToString();
    EXPECT_TRUE(answered.insert(reply->request_id).second) << "answered twice";
    auto fragment = expected_error.find(reply->request_id);
    if (fragment == expected_error.end()) {
      EXPECT_EQ(reply->status, wire::ReplyStatus::kOk) << reply->request_id << reply->error;
      EXPECT_EQ(reply->scores.size(), 10u);
    } else {
      EXPECT_EQ(reply->status, wire::ReplyStatus::kError) << reply->request_id;
      EXPECT_NE(reply->error.find(fragment->second), std::string::npos)
          << reply->request_id << ": " << reply->error;
    }
  }
  EXPECT_EQ(answered.size(), burst.size());
  wire::InferRequest after = compact;
  after.request_id = 99;
  EXPECT_EQ(RoundTrip(wire::EncodeInferRequest(after)).status, wire::ReplyStatus::kOk);
  EXPECT_EQ(server_->queued_requests(), 0u);
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

// Each client on its own thread (a DealerClient belongs to one thread) sends a burst; every
// request is answered exactly once, with its own id, by several workers.
TEST_F(TailServerTest, ConcurrentClientsAreAllAnswered) {
  constexpr int kClients = 4, kPerClient = 20;
  std::vector<std::unique_ptr<DealerClient>> clients;
  for (int c = 0; c < kClients; ++c) {
    auto client = DealerClient::Connect(context_, server_->endpoint());
    ASSERT_TRUE(client.ok());
    clients.push_back(std::move(client).value());
  }
  std::vector<std::set<uint64_t>> answered(kClients);
  std::vector<int> not_ok(kClients, 0);
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      std::vector<float> values;
      for (int i = 0; i < kPerClient; ++i) {
        const uint64_t id = 1000 * (c + 1) + i;
        if (!clients[c]->Send(wire::EncodeInferRequest(FeatureRequest(id, &values)), 1000).ok()) {
          ++not_ok[c];
        }
      }
      for (int i = 0; i < kPerClient; ++i) {
        auto msg = clients[c]->Receive(10000);
        if (!msg.ok() || !msg->has_value()) break;
        auto reply = wire::DecodeInferReply(**msg);
        if (!reply.ok() || reply->status != wire::ReplyStatus::kOk) ++not_ok[c];
        if (reply.ok()) answered[c].insert(reply->request_id);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int c = 0; c < kClients; ++c) {
    EXPECT_EQ(answered[c].size(), size_t{kPerClient}) << c;
    EXPECT_EQ(not_ok[c], 0) << c;
    for (uint64_t id : answered[c]) EXPECT_EQ(id / 1000, uint64_t(c + 1));
  }
}

// Polls `done` (no timing assertion: the limit only keeps a broken build from hanging).
template <typename Pred>
bool WaitFor(Pred done) {
  const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!done()) {
    if (std::chrono::steady_clock::now() > limit) return false;
    std::this_thread::yield();
  }
  return true;
}

TEST_F(TailServerTest, SwapModelsRefusesAnEmptySetAndKeepsServing) {
  EXPECT_EQ(server_->SwapModels(9, {}).code(), StatusCode::kInvalidArgument);
  std::vector<std::unique_ptr<split::CloudModel>> with_null;
  with_null.push_back(nullptr);
  EXPECT_EQ(server_->SwapModels(9, std::move(with_null)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(server_->served_version(), 0u);
  std::vector<float> values;
  EXPECT_EQ(RoundTrip(wire::EncodeInferRequest(FeatureRequest(8, &values))).status,
            wire::ReplyStatus::kOk);
}

// N clients send continuously while a new version is published in a model repository and the
// poller swaps it in: every request gets exactly one `ok` reply, and afterwards replies are
// the new version's scores.
TEST_F(TailServerTest, HotReloadUnderTrafficLosesNoRequest) {
  const std::filesystem::path root = testing::TempPath("tail_server_repo");
  std::filesystem::create_directories(root);
  ModelRepository repository(root, 2);
  auto poller = std::make_unique<RepositoryPoller>(
      repository, 5, [this](std::unique_ptr<ServableVersion> next) {
        EXPECT_TRUE(server_->SwapModels(next->version, std::move(next->models)).ok());
      });

  constexpr int kClients = 4;
  std::atomic<bool> stop_traffic{false};
  std::vector<std::atomic<int>> ok(kClients), sent(kClients);
  std::vector<int> failures(kClients, 0);
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    ok[c] = 0;
    sent[c] = 0;
    threads.emplace_back([&, c] {
      auto client = DealerClient::Connect(context_, server_->endpoint());
      if (!client.ok()) {
        ++failures[c];
        return;
      }
      std::vector<float> values;
      for (uint64_t i = 0; !stop_traffic; ++i) {
        const uint64_t id = 100000 * (c + 1) + i;
        if (!(*client)->Send(wire::EncodeInferRequest(FeatureRequest(id, &values)), 5000).ok()) {
          ++failures[c];
          return;
        }
        ++sent[c];
        auto msg = (*client)->Receive(10000);
        if (!msg.ok() || !msg->has_value()) {
          ++failures[c];  // a lost request
          return;
        }
        auto reply = wire::DecodeInferReply(**msg);
        if (!reply.ok() || reply->status != wire::ReplyStatus::kOk || reply->request_id != id) {
          ++failures[c];
          continue;
        }
        ++ok[c];
      }
    });
  }
  // Stops and joins the clients on every exit from this test, early ASSERTs included.
  struct JoinClients {
    std::atomic<bool>& stop;
    std::vector<std::thread>& threads;
    ~JoinClients() {
      stop = true;
      for (std::thread& t : threads) {
        if (t.joinable()) t.join();
      }
    }
  } join_clients{stop_traffic, threads};
  auto all_reached = [&](int n) {
    for (int c = 0; c < kClients; ++c) {
      if (ok[c] < n && failures[c] == 0) return false;
    }
    return true;
  };
  ASSERT_TRUE(WaitFor([&] { return all_reached(5); }));

  // Publish version 2: written under a temporary name, renamed into place.
  ASSERT_TRUE(testing::WriteShiftedBundle(dir_, root / ".tmp-2").ok());
  std::filesystem::rename(root / ".tmp-2", root / "2");
  EXPECT_TRUE(WaitFor([&] { return server_->served_version() == 2; }));
  std::vector<int> at_swap(kClients);
  for (int c = 0; c < kClients; ++c) at_swap[c] = ok[c];
  EXPECT_TRUE(WaitFor([&] {
    for (int c = 0; c < kClients; ++c) {
      if (ok[c] < at_swap[c] + 5 && failures[c] == 0) return false;
    }
    return true;
  }));
  stop_traffic = true;
  for (std::thread& t : threads) t.join();
  for (int c = 0; c < kClients; ++c) {
    EXPECT_EQ(failures[c], 0) << "client " << c;
    EXPECT_EQ(ok[c].load(), sent[c].load()) << "client " << c;
  }

  // Replies now come from version 2.
  std::vector<float> values;
  wire::InferReply reply = RoundTrip(wire::EncodeInferRequest(FeatureRequest(77, &values)));
  ASSERT_EQ(reply.status, wire::ReplyStatus::kOk) << reply.error;
  const torch::Tensor input = torch::from_blob(values.data(), {1, 2, 7, 7}).clone();
  auto v2_bundle = Bundle::Open(root / "2");
  ASSERT_TRUE(v2_bundle.ok());
  auto v2 = split::CloudModel::Load(*v2_bundle);
  ASSERT_TRUE(v2.ok());
  auto expected = (*v2)->RunTail(input);
  auto old = reference_->RunTail(input);
  ASSERT_TRUE(expected.ok() && old.ok());
  ASSERT_GT(((*expected) - (*old)).abs().max().item<float>(), 1e-3) << "versions look alike";
  for (int k = 0; k < 10; ++k) {
    EXPECT_NEAR(reply.scores[k], (*expected)[0][k].item<float>(), 1e-4) << k;
  }

  stop_ = true;
  thread_.join();
  EXPECT_EQ(server_->stats().model_version, 2u);
  EXPECT_EQ(server_->stats().model_swaps, 1u);
  EXPECT_EQ(server_->stats().replied_error, 0u);
  poller.reset();
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace cleave::cloud
