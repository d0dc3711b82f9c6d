// StreamFeeder against a fake daemon (a ROUTER the test answers by hand) and a real PULL
// source over inproc: the per-stream window, latest-frame-wins, and the accounting rule that
// every frame received is answered or dropped exactly once, in the JSON lines and the metrics.
#include "edge/stream_feeder.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/edge_api.h"
#include "testing/tiny_bundle.h"

namespace cleave::edge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class StreamFeederTest : public ::testing::Test {
 protected:
  void SetUp() override {
    results_ = testing::TempPath("stream_results");
    auto daemon = RouterServer::Bind(context_, "inproc://fake-daemon");
    ASSERT_TRUE(daemon.ok());
    daemon_ = std::move(daemon).value();
    push_ = zmq::socket_t(context_.raw(), zmq::socket_type::push);
    push_.set(zmq::sockopt::linger, 0);
  }
  void TearDown() override {
    feeder_.reset();
    push_.close();
    daemon_.reset();
    fs::remove(results_);
  }

  // Frames are raw gray8 2x2 whose first pixel is the frame's number (so a request shows
  // which frame it carries).
  void Start(int window, DropPolicy policy = DropPolicy::kLatestFrameWins, size_t max_streams = 64,
             int reply_timeout_ms = 10000, const std::string& publish = "") {
    FrameSourceOptions source_options;
    source_options.format = *ParseFrameFormat("gray8:2x2");
    auto spec = ParseSourceSpec("zmq-pull://inproc://feeder-frames");
    ASSERT_TRUE(spec.ok());
    auto source = OpenZmqFrameSource(context_, *spec, source_options);
    ASSERT_TRUE(source.ok()) << source.status().ToString();
    push_.connect("inproc://feeder-frames");
    StreamFeederOptions options;
    options.daemon = daemon_->endpoint();
    options.window = window;
    options.policy = policy;
    options.max_streams = max_streams;
    options.reply_timeout_ms = reply_timeout_ms;
    options.results = results_.string();
    options.publish = publish;
    options.metrics = metrics_;
    auto feeder = StreamFeeder::Start(context_, options, std::move(source).value());
    ASSERT_TRUE(feeder.ok()) << feeder.status().ToString();
    feeder_ = std::move(feeder).value();
  }

  void Push(const std::string& stream, uint8_t frame, size_t bytes = 4) {
    std::string pixels(bytes, '\0');
    if (!pixels.empty()) pixels[0] = static_cast<char>(frame);
    push_.send(zmq::buffer(stream), zmq::send_flags::sndmore);
    push_.send(zmq::buffer(pixels));
  }

  // The next request the fake daemon gets (nullopt after `timeout_ms`).
  struct Got {
    std::string peer;
    edge_api::ClassifyRequest request;
    uint8_t frame() const { return static_cast<uint8_t>(request.pixels[0]); }
  };
  std::optional<Got> NextRequest(int timeout_ms = 3000) {
    auto msg = daemon_->Receive(timeout_ms);
    if (!msg.ok() || !msg->has_value()) return std::nullopt;
    auto request = edge_api::DecodeClassifyRequest((*msg)->body);
    EXPECT_TRUE(request.ok()) << request.status().ToString();
    if (!request.ok()) return std::nullopt;
    return Got{(*msg)->peer, *request};
  }
  void Answer(const Got& got, edge_api::AnswerSource source = edge_api::AnswerSource::kEdgeExit,
              const std::string& error = "") {
    edge_api::ClassifyReply reply;
    reply.request_id = got.request.request_id;
    reply.source = source;
    reply.error = error;
    reply.predicted_class = source == edge_api::AnswerSource::kError ? -1 : got.frame() % 10;
    reply.confidence = 0.5f;
    reply.class_name = "class" + std::to_string(got.frame() % 10);
    ASSERT_TRUE(daemon_->Send(got.peer, edge_api::EncodeClassifyReply(reply)).ok());
  }

  // Waits (condition, not time) until the feeder has received `n` frames / finished `n`.
  bool WaitFor(const std::function<bool(const StreamFeederStats&)>& done, int timeout_ms = 5000) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < until) {
      if (done(feeder_->stats())) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return done(feeder_->stats());
  }

  // The JSON lines written so far, by (stream, seq).
  std::map<std::pair<std::string, uint64_t>, json> Lines() {
    std::map<std::pair<std::string, uint64_t>, json> lines;
    std::ifstream in(results_);
    for (std::string text; std::getline(in, text);) {
      json line = json::parse(text);
      auto key = std::make_pair(line["stream"].get<std::string>(), line["seq"].get<uint64_t>());
      EXPECT_TRUE(lines.emplace(key, line).second) << "two lines for one frame: " << text;
    }
    return lines;
  }

  double Dropped(const std::string& stream, FrameDrop reason) {
    return metrics_->Stream(stream).dropped[static_cast<size_t>(reason)]->Value();
  }

  TransportContext context_;
  std::shared_ptr<Metrics> metrics_ = std::make_shared<Metrics>();
  std::unique_ptr<RouterServer> daemon_;
  zmq::socket_t push_;
  fs::path results_;
  std::unique_ptr<StreamFeeder> feeder_;
};

TEST_F(StreamFeederTest, LatestFrameWinsWhileTheWindowIsFull) {
  Start(/*window=*/2);
  for (uint8_t i = 1; i <= 10; ++i) Push("cam", i);
  ASSERT_TRUE(WaitFor([](const StreamFeederStats& s) { return s.received == 10; }));
  auto first = NextRequest();
  auto second = NextRequest();
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->frame(), 1);
  EXPECT_EQ(second->frame(), 2);
  EXPECT_FALSE(NextRequest(200).has_value()) << "more than the window in flight";
  // An answer frees a slot: the newest frame goes, the ones between were replaced.
  Answer(*first);
  auto latest = NextRequest();
  ASSERT_TRUE(latest);
  EXPECT_EQ(latest->frame(), 10);
  Answer(*second, edge_api::AnswerSource::kCloud);
  Answer(*latest, edge_api::AnswerSource::kDegraded, "cloud did not answer within the deadline");
  ASSERT_TRUE(WaitFor([](const StreamFeederStats& s) { return s.answered == 3; }));

  const StreamFeederStats stats = feeder_->stats();
  EXPECT_EQ(stats.received, 10u);
  EXPECT_EQ(stats.dropped, 7u);
  EXPECT_EQ(stats.received, stats.answered + stats.dropped);
  const StreamMetrics& m = metrics_->Stream("cam");
  EXPECT_EQ(m.frames->Value(), 10);
  EXPECT_EQ(m.answered_exit->Value(), 1);
  EXPECT_EQ(m.answered_cloud->Value(), 1);
  EXPECT_EQ(m.answered_degraded->Value(), 1);
  EXPECT_EQ(Dropped("cam", FrameDrop::kReplaced), 7);
  EXPECT_EQ(m.staleness_seconds->Collect().histogram.sample_count, 3u);

  auto lines = Lines();
  ASSERT_EQ(lines.size(), 10u);
  for (uint64_t seq = 1; seq <= 10; ++seq) {
    const json& line = lines.at({"cam", seq});
    if (seq == 1 || seq == 2 || seq == 10) {
      EXPECT_FALSE(line.contains("dropped")) << line;
      EXPECT_EQ(line["class"], static_cast<int>(seq % 10)) << line;
      EXPECT_EQ(line["class_name"], "class" + std::to_string(seq % 10));
      EXPECT_GE(line["staleness_ms"].get<double>(), line["latency_ms"].get<double>());
    } else {
      EXPECT_EQ(line["dropped"], "replaced") << line;
    }
  }
  EXPECT_EQ(lines.at({"cam", 1})["answered_by"], "exit");
  EXPECT_EQ(lines.at({"cam", 2})["answered_by"], "cloud");
  EXPECT_EQ(lines.at({"cam", 10})["answered_by"], "degraded");
  EXPECT_EQ(lines.at({"cam", 10})["error"], "cloud did not answer within the deadline");
}

TEST_F(StreamFeederTest, EachStreamHasItsOwnWindow) {
  Start(/*window=*/1);
  Push("a", 1);
  Push("b", 2);
  Push("a", 3);
  Push("a", 4);
  ASSERT_TRUE(WaitFor([](const StreamFeederStats& s) { return s.received == 4; }));
  auto one = NextRequest();
  auto two = NextRequest();
  ASSERT_TRUE(one && two);
  EXPECT_EQ(one->frame() + two->frame(), 3) << "a's first frame and b's";
  EXPECT_FALSE(NextRequest(200).has_value());
  Answer(one->frame() == 1 ? *one : *two);
  auto next = NextRequest();
  ASSERT_TRUE(next);
  EXPECT_EQ(next->frame(), 4);
  EXPECT_EQ(Dropped("a", FrameDrop::kReplaced), 1);
  EXPECT_EQ(Dropped("b", FrameDrop::kReplaced), 0);
}

TEST_F(StreamFeederTest, BadInputAndErrorAnswersAreDropsNotAnswers) {
  Start(/*window=*/4, DropPolicy::kLatestFrameWins, /*max_streams=*/2);
  Push("cam", 1, /*bytes=*/3);  // not 2x2 gray
  Push("cam", 2);
  Push("bad stream!", 3);  // a stream id that is not allowed
  Push("other", 4);        // "default" and "cam" already fill edge.stream_max_streams
  auto request = NextRequest();
  ASSERT_TRUE(request);
  Answer(*request, edge_api::AnswerSource::kError, "image does not decode");
  ASSERT_TRUE(WaitFor([](const StreamFeederStats& s) { return s.dropped == 4; }));
  EXPECT_EQ(feeder_->stats().received, 4u);
  EXPECT_EQ(feeder_->stats().answered, 0u);
  EXPECT_EQ(Dropped("cam", FrameDrop::kBadInput), 1);
  EXPECT_EQ(Dropped("cam", FrameDrop::kError), 1);
  EXPECT_EQ(Dropped(kOtherStream, FrameDrop::kBadInput), 1);
  EXPECT_EQ(Dropped(kOtherStream, FrameDrop::kTooManyStreams), 1);
  EXPECT_EQ(metrics_->Stream(kOtherStream).frames->Value(), 2);
  auto lines = Lines();
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_NE(lines.at({"cam", 1})["error"].get<std::string>().find("raw frame of 3 bytes"),
            std::string::npos);
  EXPECT_EQ(lines.at({"cam", 2})["dropped"], "error");
  EXPECT_EQ(lines.at({"cam", 2})["error"], "image does not decode");
  EXPECT_EQ(lines.at({kOtherStream, 2})["dropped"], "too_many_streams");
}

TEST_F(StreamFeederTest, UnansweredRequestsFreeTheWindowAfterTheReplyTimeout) {
  Start(/*window=*/1, DropPolicy::kLatestFrameWins, 64, /*reply_timeout_ms=*/300);
  Push("cam", 1);
  auto silent = NextRequest();
  ASSERT_TRUE(silent);
  Push("cam", 2);
  auto next = NextRequest(5000);  // sent once frame 1 timed out
  ASSERT_TRUE(next);
  EXPECT_EQ(next->frame(), 2);
  EXPECT_EQ(Dropped("cam", FrameDrop::kNoReply), 1);
  Answer(*silent);  // too late: not counted twice
  Answer(*next);
  ASSERT_TRUE(WaitFor([](const StreamFeederStats& s) { return s.answered == 1; }));
  ASSERT_TRUE(WaitFor([](const StreamFeederStats& s) { return s.stray_replies == 1; }));
  EXPECT_EQ(feeder_->stats().received, 2u);
  EXPECT_EQ(feeder_->stats().dropped, 1u);
}

TEST_F(StreamFeederTest, StopDropsWaitingFramesAndWaitsForThoseInFlight) {
  Start(/*window=*/1);
  Push("cam", 1);
  Push("cam", 2);
  ASSERT_TRUE(WaitFor([](const StreamFeederStats& s) { return s.received == 2; }));
  auto in_flight = NextRequest();
  ASSERT_TRUE(in_flight);
  feeder_->RequestStop();
  ASSERT_TRUE(WaitFor([](const StreamFeederStats& s) { return s.dropped == 1; }));
  EXPECT_EQ(Dropped("cam", FrameDrop::kShutdown), 1);
  EXPECT_FALSE(feeder_->done()) << "finished with a request in flight";
  Answer(*in_flight);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!feeder_->done() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(feeder_->done());
  EXPECT_TRUE(feeder_->status().ok());
  EXPECT_EQ(feeder_->stats().answered, 1u);
  EXPECT_FALSE(NextRequest(100).has_value());
}

TEST_F(StreamFeederTest, WaitPolicyHoldsTheSourceAndDropsNothing) {
  Start(/*window=*/1, DropPolicy::kWait);
  for (uint8_t i = 1; i <= 6; ++i) Push("cam", i);
  for (uint8_t i = 1; i <= 6; ++i) {
    auto request = NextRequest();
    ASSERT_TRUE(request) << "frame " << int{i};
    EXPECT_EQ(request->frame(), i);
    EXPECT_FALSE(NextRequest(50).has_value()) << "more than the window in flight";
    Answer(*request);
  }
  ASSERT_TRUE(WaitFor([](const StreamFeederStats& s) { return s.answered == 6; }));
  EXPECT_EQ(feeder_->stats().dropped, 0u);
}

TEST_F(StreamFeederTest, ResultsArePublished) {
  Start(/*window=*/4, DropPolicy::kLatestFrameWins, 64, 10000, "inproc://stream-results");
  EXPECT_EQ(feeder_->publish_endpoint(), "inproc://stream-results");
  zmq::socket_t sub(context_.raw(), zmq::socket_type::sub);
  sub.set(zmq::sockopt::linger, 0);
  sub.set(zmq::sockopt::subscribe, "cam");
  sub.connect("inproc://stream-results");
  // A subscription takes effect asynchronously: frames until one line arrives.
  std::optional<json> line;
  for (uint8_t i = 1; i <= 100 && !line; ++i) {
    Push("cam", i);
    auto request = NextRequest();
    ASSERT_TRUE(request);
    Answer(*request);
    zmq::pollitem_t item{sub.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, std::chrono::milliseconds(50)) > 0) {
      zmq::message_t topic, body;
      ASSERT_TRUE(sub.recv(topic));
      ASSERT_TRUE(topic.more());
      ASSERT_TRUE(sub.recv(body));
      EXPECT_EQ(topic.to_string(), "cam");
      line = json::parse(body.to_string());
    }
  }
  ASSERT_TRUE(line.has_value());
  EXPECT_EQ((*line)["stream"], "cam");
  EXPECT_EQ((*line)["answered_by"], "exit");
  sub.close();
}

TEST_F(StreamFeederTest, BadOptionsAreRefused) {
  FrameSourceOptions source_options;
  int attempt = 0;
  const auto start = [&](const std::function<void(StreamFeederOptions&)>& change) {
    // A fresh endpoint each time: a closed inproc socket's name is released asynchronously.
    auto spec = ParseSourceSpec("zmq-pull://inproc://feeder-refused-" + std::to_string(++attempt));
    EXPECT_TRUE(spec.ok());
    auto source = OpenZmqFrameSource(context_, *spec, source_options);
    EXPECT_TRUE(source.ok()) << source.status().ToString();
    StreamFeederOptions options;
    options.daemon = daemon_->endpoint();
    options.results = "none";
    change(options);
    return StreamFeeder::Start(context_, options, std::move(source).value()).status();
  };
  EXPECT_NE(start([](auto& o) { o.window = 0; }).message().find("edge.stream_window"),
            std::string::npos);
  EXPECT_FALSE(start([](auto& o) { o.default_stream = "no spaces"; }).ok());
  EXPECT_FALSE(start([](auto& o) { o.exit_threshold = 1.5f; }).ok());
  EXPECT_EQ(start([](auto& o) { o.results = "/nonexistent-dir/results.jsonl"; }).code(),
            StatusCode::kIoError);
  EXPECT_EQ(ParseDropPolicy("newest").status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cleave::edge
