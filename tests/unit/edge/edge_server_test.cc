// EdgeServer in process: a fake cloud (a ROUTER in the test) that answers, refuses or stays
// silent, and a local application (a DEALER). Every request must get exactly one reply, and
// the server's metrics count each by outcome.
#include "edge/edge_server.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <set>
#include <thread>

#include "common/feature_coding.h"
#include "common/inference_wire.h"
#include "common/metrics.h"
#include "split/bundle.h"
#include "testing/tiny_bundle.h"

namespace cleave::edge {
namespace {

class EdgeServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempPath("edge_server");
    ASSERT_TRUE(testing::WriteTinyBundle(dir_).ok());
  }
  void TearDown() override {
    Stop();
    std::filesystem::remove_all(dir_);
  }

  // Starts the server; `with_cloud` binds a fake cloud the test drives by hand.
  void Start(bool with_cloud, uint32_t deadline_ms, size_t max_pending = 256,
             const std::function<void(EdgeServerOptions&)>& configure = {}) {
    if (with_cloud) {
      auto cloud = RouterServer::Bind(context_, "tcp://127.0.0.1:0");
      ASSERT_TRUE(cloud.ok());
      cloud_ = std::move(cloud).value();
    }
    auto bundle = Bundle::Open(dir_);
    ASSERT_TRUE(bundle.ok());
    split::EdgeModel::Options options;
    options.int8_engine = "reference";
    auto model = split::EdgeModel::Load(*bundle, options);
    ASSERT_TRUE(model.ok());
    EdgeServerOptions server_options;
    server_options.listen = "tcp://127.0.0.1:0";
    server_options.cloud = with_cloud ? cloud_->endpoint() : "";
    server_options.default_deadline_ms = deadline_ms;
    server_options.max_pending = max_pending;
    server_options.metrics = metrics_;
    if (configure) configure(server_options);
    auto server = EdgeServer::Create(context_, server_options,
                                     std::make_unique<EdgeEngine>(std::move(model).value()));
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    ASSERT_TRUE(server_->WarmUp().ok());
    if (with_cloud) {
      auto stray = cloud_->Receive(0);  // the warm-up sends nothing
      ASSERT_TRUE(stray.ok());
      EXPECT_FALSE(stray->has_value());
    }
    thread_ = std::thread([this] { run_status_ = server_->Run([this] { return stop_.load(); }); });
    auto app = DealerClient::Connect(context_, server_->endpoint());
    ASSERT_TRUE(app.ok());
    app_ = std::move(app).value();
  }

  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

  edge_api::ClassifyRequest Request(uint64_t id, float threshold) {
    edge_api::ClassifyRequest r;
    r.request_id = id;
    r.exit_threshold = threshold;
    r.width = r.height = 28;
    r.pixels.assign(28 * 28, static_cast<char>(id * 13));
    return r;
  }

  void Send(const edge_api::ClassifyRequest& r) {
    ASSERT_TRUE(app_->Send(edge_api::EncodeClassifyRequest(r), 1000).ok());
  }

  edge_api::ClassifyReply Receive(int timeout_ms = 5000) {
    auto msg = app_->Receive(timeout_ms);
    EXPECT_TRUE(msg.ok() && msg->has_value()) << "no reply from the edge server";
    if (!msg.ok() || !msg->has_value()) return {};
    auto reply = edge_api::DecodeClassifyReply(**msg);
    EXPECT_TRUE(reply.ok());
    return reply.ok() ? *reply : edge_api::ClassifyReply{};
  }

  // The fake cloud receives one offloaded request.
  Envelope CloudReceive() {
    auto msg = cloud_->Receive(5000);
    EXPECT_TRUE(msg.ok() && msg->has_value()) << "nothing reached the cloud";
    return msg.ok() && msg->has_value() ? **msg : Envelope{};
  }

  double Count(Outcome outcome) {
    return metrics_->Service("edge").requests[static_cast<size_t>(outcome)]->Value();
  }

  std::filesystem::path dir_;
  TransportContext context_;
  std::shared_ptr<Metrics> metrics_ = std::make_shared<Metrics>();
  std::unique_ptr<RouterServer> cloud_;
  std::unique_ptr<EdgeServer> server_;
  std::unique_ptr<DealerClient> app_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  Status run_status_;
};

TEST_F(EdgeServerTest, ConfidentInputIsAnsweredAtTheEdge) {
  Start(true, 500);
  Send(Request(1, 0.0f));
  edge_api::ClassifyReply reply = Receive();
  EXPECT_EQ(reply.request_id, 1u);
  EXPECT_EQ(reply.source, edge_api::AnswerSource::kEdgeExit);
  EXPECT_EQ(reply.wire_bytes, 0u);
  EXPECT_EQ(reply.exit_index, 0);
  EXPECT_EQ(reply.scores.size(), 10u);
}

TEST_F(EdgeServerTest, HardInputIsAnsweredByTheCloud) {
  Start(true, 2000);
  Send(Request(5, 1.0f));
  Envelope offloaded = CloudReceive();
  auto request = wire::DecodeInferRequest(offloaded.body);
  ASSERT_TRUE(request.ok()) << request.status().ToString();
  EXPECT_EQ(request->deadline_ms, 2000u);
  wire::InferReply answer;
  answer.request_id = request->request_id;
  answer.scores = {0, 0, 0, 9, 0, 0, 0, 0, 0, 0};
  answer.num_classes = 10;
  answer.batch_size = 1;
  ASSERT_TRUE(cloud_->Send(offloaded.peer, wire::EncodeInferReply(answer)).ok());
  edge_api::ClassifyReply reply = Receive();
  EXPECT_EQ(reply.request_id, 5u);
  EXPECT_EQ(reply.source, edge_api::AnswerSource::kCloud);
  EXPECT_EQ(reply.predicted_class, 3);
  EXPECT_EQ(reply.wire_bytes, WireBytes(offloaded.body.size()));
}

TEST_F(EdgeServerTest, SilentCloudDegradesAtTheDeadline) {
  Start(true, 150);
  Send(Request(9, 1.0f));
  Envelope offloaded = CloudReceive();  // received, never answered
  ASSERT_FALSE(offloaded.body.empty());
  edge_api::ClassifyReply reply = Receive(3000);
  EXPECT_EQ(reply.request_id, 9u);
  EXPECT_EQ(reply.source, edge_api::AnswerSource::kDegraded);
  EXPECT_GE(reply.total_micros, 150000u);
  EXPECT_GE(reply.predicted_class, 0);
  EXPECT_NE(reply.error.find("deadline"), std::string::npos) << reply.error;
  // A late answer for it is dropped, not delivered twice.
  auto request = wire::DecodeInferRequest(offloaded.body);
  ASSERT_TRUE(request.ok());
  wire::InferReply late;
  late.request_id = request->request_id;
  late.scores = std::vector<float>(10, 1.0f);
  late.num_classes = 10;
  ASSERT_TRUE(cloud_->Send(offloaded.peer, wire::EncodeInferReply(late)).ok());
  auto extra = app_->Receive(300);
  ASSERT_TRUE(extra.ok());
  EXPECT_FALSE(extra->has_value()) << "a request was answered twice";
}

TEST_F(EdgeServerTest, CloudErrorDegradesImmediately) {
  Start(true, 5000);
  Send(Request(3, 1.0f));
  Envelope offloaded = CloudReceive();
  auto request = wire::DecodeInferRequest(offloaded.body);
  ASSERT_TRUE(request.ok());
  wire::InferReply refusal;
  refusal.request_id = request->request_id;
  refusal.status = wire::ReplyStatus::kOverloaded;
  refusal.error = "queue full";
  ASSERT_TRUE(cloud_->Send(offloaded.peer, wire::EncodeInferReply(refusal)).ok());
  edge_api::ClassifyReply reply = Receive(1000);  // long before the 5 s deadline
  EXPECT_EQ(reply.source, edge_api::AnswerSource::kDegraded);
  EXPECT_NE(reply.error.find("overloaded"), std::string::npos) << reply.error;
}

TEST_F(EdgeServerTest, WithoutCloudHardInputsAreDegraded) {
  Start(false, 100);
  Send(Request(4, 1.0f));
  edge_api::ClassifyReply reply = Receive();
  EXPECT_EQ(reply.source, edge_api::AnswerSource::kDegraded);
  EXPECT_EQ(reply.wire_bytes, 0u);
}

TEST_F(EdgeServerTest, MalformedRequestsGetErrorsAndServingContinues) {
  Start(true, 500);
  ASSERT_TRUE(app_->Send("definitely not capnp", 1000).ok());
  edge_api::ClassifyReply garbage = Receive();
  EXPECT_EQ(garbage.source, edge_api::AnswerSource::kError);
  EXPECT_FALSE(garbage.error.empty());

  // Well-formed, but its PNG does not decode (another size would be resized, not refused).
  edge_api::ClassifyRequest wrong_size = Request(7, 0.0f);
  wrong_size.kind = edge_api::ImageKind::kPng;
  wrong_size.png = "\x89PNG broken";
  Send(wrong_size);
  edge_api::ClassifyReply size_reply = Receive();
  EXPECT_EQ(size_reply.request_id, 7u);
  EXPECT_EQ(size_reply.source, edge_api::AnswerSource::kError);

  Send(Request(8, 0.0f));
  EXPECT_EQ(Receive().source, edge_api::AnswerSource::kEdgeExit);
  EXPECT_EQ(server_->stats().rejected, 1u);
}

TEST_F(EdgeServerTest, ShutdownAnswersPendingRequests) {
  Start(true, 60000);
  Send(Request(11, 1.0f));
  ASSERT_FALSE(CloudReceive().body.empty());
  Stop();
  edge_api::ClassifyReply reply = Receive(2000);
  EXPECT_EQ(reply.request_id, 11u);
  EXPECT_EQ(reply.source, edge_api::AnswerSource::kDegraded);
  EXPECT_TRUE(run_status_.ok());
}

TEST_F(EdgeServerTest, ManyRequestsEachGetExactlyOneReply) {
  Start(true, 200);
  // The cloud answers every other offloaded request; the rest degrade.
  std::thread cloud([this] {
    int seen = 0;
    while (seen < 20) {
      auto msg = cloud_->Receive(2000);
      if (!msg.ok() || !msg->has_value()) break;
      auto request = wire::DecodeInferRequest((*msg)->body);
      if (request.ok() && seen++ % 2 == 0) {
        wire::InferReply answer;
        answer.request_id = request->request_id;
        answer.scores = std::vector<float>(10, 0.0f);
        answer.num_classes = 10;
        (void)cloud_->Send((*msg)->peer, wire::EncodeInferReply(answer));
      }
    }
  });
  for (uint64_t id = 1; id <= 40; ++id) Send(Request(id, id % 2 ? 0.0f : 1.0f));
  std::set<uint64_t> seen;
  for (int i = 0; i < 40; ++i) {
    edge_api::ClassifyReply reply = Receive(3000);
    EXPECT_TRUE(seen.insert(reply.request_id).second) << "duplicate reply " << reply.request_id;
    EXPECT_NE(reply.source, edge_api::AnswerSource::kError);
  }
  cloud.join();
  EXPECT_EQ(seen.size(), 40u);
  auto extra = app_->Receive(300);
  ASSERT_TRUE(extra.ok());
  EXPECT_FALSE(extra->has_value());
}

TEST_F(EdgeServerTest, MetricsCountEveryOutcomeAndTheCloudLink) {
  Start(true, 1000);
  Send(Request(1, 0.0f));  // exit
  EXPECT_EQ(Receive().source, edge_api::AnswerSource::kEdgeExit);
  Send(Request(2, 1.0f));  // offload, answered by the cloud
  Envelope offloaded = CloudReceive();
  auto request = wire::DecodeInferRequest(offloaded.body);
  ASSERT_TRUE(request.ok());
  wire::InferReply answer;
  answer.request_id = request->request_id;
  answer.scores = std::vector<float>(10, 0.5f);
  answer.num_classes = 10;
  const std::string answer_bytes = wire::EncodeInferReply(answer);
  ASSERT_TRUE(cloud_->Send(offloaded.peer, answer_bytes).ok());
  EXPECT_EQ(Receive().source, edge_api::AnswerSource::kCloud);
  Send(Request(3, 1.0f));  // offloaded, never answered: degraded at the deadline
  Envelope silent = CloudReceive();
  EXPECT_EQ(Receive(3000).source, edge_api::AnswerSource::kDegraded);
  ASSERT_TRUE(app_->Send("not a request", 1000).ok());  // rejected
  EXPECT_EQ(Receive().source, edge_api::AnswerSource::kError);
  edge_api::ClassifyRequest wrong_size = Request(4, 0.0f);  // rejected: does not decode
  wrong_size.kind = edge_api::ImageKind::kPng;
  wrong_size.png = "\x89PNG broken";
  Send(wrong_size);
  EXPECT_EQ(Receive().source, edge_api::AnswerSource::kError);
  Stop();

  EXPECT_EQ(Count(Outcome::kExit), 1);
  EXPECT_EQ(Count(Outcome::kOffload), 1);
  EXPECT_EQ(Count(Outcome::kDegraded), 1);
  EXPECT_EQ(Count(Outcome::kRejected), 2);
  EXPECT_EQ(Count(Outcome::kError), 0);
  EXPECT_EQ(Count(Outcome::kOk), 0);
  const ServiceMetrics& m = metrics_->Service("edge");
  // The cloud link: both offloaded requests went out, one answer came back.
  EXPECT_EQ(m.wire_bytes_sent->Value(),
            static_cast<double>(WireBytes(offloaded.body.size()) + WireBytes(silent.body.size())));
  EXPECT_EQ(m.wire_bytes_received->Value(), static_cast<double>(WireBytes(answer_bytes.size())));
  // Three usable images went through the head, one batch each.
  EXPECT_EQ(m.queue_seconds->Collect().histogram.sample_count, 3u);
  EXPECT_EQ(m.compute_seconds->Collect().histogram.sample_count, 3u);
  EXPECT_EQ(m.batch_size->Collect().histogram.sample_sum, 3.0);
  EXPECT_EQ(m.pending_requests->Value(), 0);
}

// edge.max_pending: with that many requests waiting for the cloud, the next input the policy
// would offload is answered at once, degraded, by its best exit (and counted); once one of
// them is answered there is room again.
TEST_F(EdgeServerTest, MaxPendingAnswersFurtherOffloadsDegradedAtOnce) {
  Start(true, 60000, /*max_pending=*/2);
  Send(Request(1, 1.0f));
  Send(Request(2, 1.0f));
  Envelope first = CloudReceive();
  Envelope second = CloudReceive();
  ASSERT_FALSE(first.body.empty());
  ASSERT_FALSE(second.body.empty());
  Send(Request(3, 1.0f));
  edge_api::ClassifyReply refused = Receive(2000);  // long before the 60 s deadline
  EXPECT_EQ(refused.request_id, 3u);
  EXPECT_EQ(refused.source, edge_api::AnswerSource::kDegraded);
  EXPECT_GE(refused.predicted_class, 0);
  EXPECT_EQ(refused.wire_bytes, 0u);
  EXPECT_NE(refused.error.find("too many requests waiting for the cloud"), std::string::npos)
      << refused.error;
  auto nothing = cloud_->Receive(200);
  ASSERT_TRUE(nothing.ok());
  EXPECT_FALSE(nothing->has_value()) << "a request past max_pending reached the cloud";
  // Confident inputs are not affected.
  Send(Request(4, 0.0f));
  EXPECT_EQ(Receive().source, edge_api::AnswerSource::kEdgeExit);

  auto request = wire::DecodeInferRequest(first.body);
  ASSERT_TRUE(request.ok());
  wire::InferReply answer;
  answer.request_id = request->request_id;
  answer.scores = std::vector<float>(10, 0.0f);
  answer.num_classes = 10;
  ASSERT_TRUE(cloud_->Send(first.peer, wire::EncodeInferReply(answer)).ok());
  EXPECT_EQ(Receive().source, edge_api::AnswerSource::kCloud);
  Send(Request(5, 1.0f));
  EXPECT_FALSE(CloudReceive().body.empty()) << "room again after an answer";
  EXPECT_EQ(server_->stats().pending_full, 1u);
  EXPECT_EQ(metrics_->EdgeNotOffloaded(NotOffloadedReason::kMaxPending).Value(), 1);
  EXPECT_EQ(Count(Outcome::kDegraded), 1);
}

TEST_F(EdgeServerTest, MaxPendingMustBePositive) {
  auto bundle = Bundle::Open(dir_);
  ASSERT_TRUE(bundle.ok());
  split::EdgeModel::Options options;
  options.int8_engine = "reference";
  auto model = split::EdgeModel::Load(*bundle, options);
  ASSERT_TRUE(model.ok());
  EdgeServerOptions server_options;
  server_options.listen = "tcp://127.0.0.1:0";
  server_options.cloud = "";
  server_options.max_pending = 0;
  auto server = EdgeServer::Create(context_, server_options,
                                   std::make_unique<EdgeEngine>(std::move(model).value()));
  EXPECT_EQ(server.status().code(), StatusCode::kInvalidArgument);
}

// Hot swap: a request taken after SwapEngine uses the new engine (here: the old bundle's exit
// threshold answers everything at the edge, the new one's sends everything to the cloud);
// the served version and its gauge follow; a null engine is refused and changes nothing.
TEST_F(EdgeServerTest, SwappedEngineServesTheNextRequests) {
  ASSERT_TRUE(testing::WriteTinyBundle(dir_, /*threshold=*/0.0).ok());
  Start(true, 2000);
  server_->set_initial_version(1);
  EXPECT_EQ(server_->served_version(), 1u);
  Send(Request(1, -1.0f));  // -1: the bundle's calibrated threshold
  EXPECT_EQ(Receive().source, edge_api::AnswerSource::kEdgeExit);

  EXPECT_EQ(server_->SwapEngine(7, nullptr).code(), StatusCode::kInvalidArgument);
  Send(Request(2, -1.0f));
  EXPECT_EQ(Receive().source, edge_api::AnswerSource::kEdgeExit);
  EXPECT_EQ(server_->served_version(), 1u);

  const std::filesystem::path other = testing::TempPath("edge_server_v2");
  ASSERT_TRUE(testing::WriteTinyBundle(other, /*threshold=*/1.0).ok());
  auto bundle = Bundle::Open(other);
  ASSERT_TRUE(bundle.ok());
  split::EdgeModel::Options options;
  options.int8_engine = "reference";
  auto model = split::EdgeModel::Load(*bundle, options);
  ASSERT_TRUE(model.ok());
  ASSERT_TRUE(server_->SwapEngine(2, std::make_unique<EdgeEngine>(std::move(model).value())).ok());
  // The swap takes effect at the loop's next turn; the request below starts one.
  Send(Request(3, -1.0f));
  Envelope offloaded = CloudReceive();
  auto request = wire::DecodeInferRequest(offloaded.body);
  ASSERT_TRUE(request.ok()) << request.status().ToString();
  wire::InferReply answer;
  answer.request_id = request->request_id;
  answer.scores = {0, 0, 0, 0, 0, 0, 0, 0, 9, 0};
  answer.num_classes = 10;
  answer.batch_size = 1;
  ASSERT_TRUE(cloud_->Send(offloaded.peer, wire::EncodeInferReply(answer)).ok());
  edge_api::ClassifyReply reply = Receive();
  EXPECT_EQ(reply.request_id, 3u);
  EXPECT_EQ(reply.source, edge_api::AnswerSource::kCloud);
  EXPECT_EQ(reply.predicted_class, 8);
  EXPECT_EQ(server_->served_version(), 2u);
  EXPECT_EQ(metrics_->Service("edge").model_version->Value(), 2.0);
  std::filesystem::remove_all(other);
}

// Offloaded features travel as version 2 requests: split 0, the bundle's layout tag, and bytes
// that decode with the bundle's layout; edge.wire_version = 1 still sends version 1.
TEST_F(EdgeServerTest, OffloadsTravelAsCompactRequestsWithTheBundlesLayoutTag) {
  Start(true, 2000);
  Send(Request(5, 1.0f));
  Envelope offloaded = CloudReceive();
  auto request = wire::DecodeInferRequest(offloaded.body);
  ASSERT_TRUE(request.ok()) << request.status().ToString();
  EXPECT_EQ(request->protocol_version, wire::kCompactProtocolVersion);
  EXPECT_EQ(request->split, 0);
  EXPECT_TRUE(request->model.empty());
  auto bundle = Bundle::Open(dir_);
  ASSERT_TRUE(bundle.ok());
  auto model = split::EdgeModel::Load(*bundle, split::EdgeModel::Options());
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(request->layout_tag, (*model)->layout_tag(0));
  const wire::FeatureLayout layout = (*model)->layout(0);
  auto values = request->input == wire::InputKind::kPackedFeatures
                    ? wire::DecodeFeatures(wire::PackedLayout(layout), request->coded)
                    : wire::DecodeFeatures(layout, request->coded);
  ASSERT_TRUE(values.ok()) << values.status().ToString();
  EXPECT_EQ(values->size(), 98u);
  Stop();

  stop_ = false;
  Start(true, 2000, 256, [](EdgeServerOptions& o) { o.wire_version = wire::kProtocolVersion; });
  Send(Request(6, 1.0f));
  auto v1 = wire::DecodeInferRequest(CloudReceive().body);
  ASSERT_TRUE(v1.ok());
  EXPECT_EQ(v1->protocol_version, wire::kProtocolVersion);
  EXPECT_EQ(v1->model, "fmnist");
  EXPECT_EQ(v1->input, wire::InputKind::kFeatures);
}

TEST_F(EdgeServerTest, BadOffloadSettingsAreRefused) {
  auto bundle = Bundle::Open(dir_);
  ASSERT_TRUE(bundle.ok());
  for (int bad = 0; bad < 3; ++bad) {
    auto model = split::EdgeModel::Load(*bundle, split::EdgeModel::Options());
    ASSERT_TRUE(model.ok());
    EdgeServerOptions o;
    o.listen = "tcp://127.0.0.1:0";
    o.cloud = "";
    if (bad == 0) o.wire_version = 3;
    if (bad == 1) o.slo_percentile = 1.0;
    if (bad == 2) o.policy = OffloadPolicyKind::kSlo;  // without slo_ms
    auto server =
        EdgeServer::Create(context_, o, std::make_unique<EdgeEngine>(std::move(model).value()));
    EXPECT_FALSE(server.ok()) << bad;
    EXPECT_EQ(server.status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

// Every reply names the option that served it: the split point the head ran to and the
// threshold its exits were held to (the application's, when it gave one).
TEST_F(EdgeServerTest, RepliesNameTheOptionThatServedThem) {
  Start(true, 2000);
  Send(Request(5, 1.0f));
  Envelope offloaded = CloudReceive();
  auto request = wire::DecodeInferRequest(offloaded.body);
  ASSERT_TRUE(request.ok()) << request.status().ToString();
  wire::InferReply answer;
  answer.request_id = request->request_id;
  answer.scores = {0, 0, 0, 9, 0, 0, 0, 0, 0, 0};
  answer.num_classes = 10;
  answer.batch_size = 1;
  ASSERT_TRUE(cloud_->Send(offloaded.peer, wire::EncodeInferReply(answer)).ok());
  edge_api::ClassifyReply reply = Receive();
  EXPECT_EQ(reply.source, edge_api::AnswerSource::kCloud);
  EXPECT_EQ(reply.split, 0);
  EXPECT_FLOAT_EQ(reply.exit_threshold, 1.0f);
  EXPECT_FALSE(reply.probe);
  Send(Request(6, 0.0f));  // every exit is confident enough
  reply = Receive();
  EXPECT_EQ(reply.source, edge_api::AnswerSource::kEdgeExit);
  EXPECT_EQ(reply.split, 0);
  EXPECT_FLOAT_EQ(reply.exit_threshold, 0.0f);
}

// edge.static_option pins the static policy to one option of the menu: one that is on it
// serves, one that is not (or another policy) is refused at start.
TEST_F(EdgeServerTest, AStaticOptionMustBeOnTheMenuAndIsForTheStaticPolicy) {
  auto bundle = Bundle::Open(dir_);
  ASSERT_TRUE(bundle.ok());
  const struct {
    const char* option;
    OffloadPolicyKind kind;
    StatusCode code;
  } cases[] = {{"0:0.5", OffloadPolicyKind::kStatic, StatusCode::kOk},
               {"0:0.50", OffloadPolicyKind::kStatic, StatusCode::kOk},
               {"0:0.7", OffloadPolicyKind::kStatic, StatusCode::kNotFound},
               {"local", OffloadPolicyKind::kStatic, StatusCode::kNotFound},
               {"zero", OffloadPolicyKind::kStatic, StatusCode::kNotFound},
               {"0:0.5", OffloadPolicyKind::kBytes, StatusCode::kInvalidArgument}};
  for (const auto& c : cases) {
    auto model = split::EdgeModel::Load(*bundle, split::EdgeModel::Options());
    ASSERT_TRUE(model.ok());
    EdgeServerOptions o;
    o.listen = "tcp://127.0.0.1:0";
    o.cloud = "";
    o.policy = c.kind;
    o.max_bytes_per_s = 1000;
    o.static_option = c.option;
    auto server =
        EdgeServer::Create(context_, o, std::make_unique<EdgeEngine>(std::move(model).value()));
    EXPECT_EQ(server.status().code(), c.code) << c.option << ": " << server.status().ToString();
    if (c.code == StatusCode::kNotFound) {
      EXPECT_NE(server.status().message().find("0:0.5"), std::string::npos)
          << "the error lists the menu: " << server.status().ToString();
    }
  }
}

// A cloud that stops answering: once a timeout says the cloud's leg takes the whole deadline,
// the next hard input is answered at the edge at once (degraded, saying why) instead of
// waiting out its deadline; the estimator has counted the exchange.
TEST_F(EdgeServerTest, TheDeadlineGuardAnswersAtOnceWhatCannotComeBackInTime) {
  Start(true, 150);
  Send(Request(1, 1.0f));
  CloudReceive();  // and never answered
  edge_api::ClassifyReply first = Receive();
  EXPECT_EQ(first.source, edge_api::AnswerSource::kDegraded);
  EXPECT_NE(first.error.find("within the deadline"), std::string::npos) << first.error;
  const auto sent = std::chrono::steady_clock::now();
  Send(Request(2, 1.0f));
  edge_api::ClassifyReply second = Receive();
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - sent).count();
  EXPECT_EQ(second.request_id, 2u);
  EXPECT_EQ(second.source, edge_api::AnswerSource::kDegraded);
  EXPECT_NE(second.error.find("not offloaded"), std::string::npos) << second.error;
  EXPECT_LT(ms, 120.0);  // not the 150 ms deadline
  Stop();
  EXPECT_EQ(server_->stats().not_offloaded_deadline, 1u);
  EXPECT_EQ(metrics_->EdgeNotOffloaded(NotOffloadedReason::kDeadline).Value(), 1.0);
  const LinkSnapshot link = server_->link();
  EXPECT_EQ(link.timeouts, 1u);
  EXPECT_GE(link.rtt_ms.p50, 100.0);
}

// Replies teach the estimator: the cloud's reported queue and compute times show up in the
// snapshot and in the edge's link gauges.
TEST_F(EdgeServerTest, CloudRepliesFeedTheLinkEstimatesAndGauges) {
  Start(true, 2000);
  for (uint64_t id = 1; id <= 3; ++id) {
    Send(Request(id, 1.0f));
    Envelope offloaded = CloudReceive();
    auto request = wire::DecodeInferRequest(offloaded.body);
    ASSERT_TRUE(request.ok());
    wire::InferReply answer;
    answer.request_id = request->request_id;
    answer.scores.assign(10, 0.0f);
    answer.num_classes = 10;
    answer.batch_size = 1;
    answer.queue_us = 2000;
    answer.compute_us = 3000;
    ASSERT_TRUE(cloud_->Send(offloaded.peer, wire::EncodeInferReply(answer)).ok());
    EXPECT_EQ(Receive().source, edge_api::AnswerSource::kCloud);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(80));  // a policy update turn
  Stop();
  const LinkSnapshot link = server_->link();
  EXPECT_EQ(link.replies, 3u);
  EXPECT_DOUBLE_EQ(link.queue_ms.p50, 2.0);
  EXPECT_DOUBLE_EQ(link.compute_ms.p50, 3.0);
  EXPECT_DOUBLE_EQ(metrics_->Offload().cloud_compute_p50_seconds->Value(), 0.003);
  EXPECT_EQ(metrics_->Offload().split->Value(), 0.0);
}

}  // namespace
}  // namespace cleave::edge
