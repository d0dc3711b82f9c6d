// Integration: on-gateway learning between real processes. A cleave-edge daemon with
// edge.adapt_enabled serves a shifted stream through a real cleave-cloud (tiny untrained
// model), learns from the cloud's answers, swaps an adapted head in while serving (no request
// is lost or fails), answers feedback (and its rejections) on the v2 local API, and keeps
// its rows across a restart.
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <string>
#include <vector>

#include "common/edge_api.h"
#include "common/file_util.h"
#include "common/transport.h"
#include "testing/bin_dir.h"
#include "testing/log_wait.h"
#include "testing/tiny_bundle.h"
#include "tools/daemon_launcher.h"

namespace cleave::edge {
namespace {

namespace fs = std::filesystem;
using tools::LaunchDaemon;
using tools::LaunchedDaemon;

class EdgeLearningTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = cleave::testing::TempPath("edge_learning_it");
    fs::create_directories(dir_);
    ASSERT_TRUE(cleave::testing::WriteTinyBundle(dir_ / "bundle", 0.9).ok());
  }
  void TearDown() override {
    std::error_code ec;
    if (!HasFailure()) fs::remove_all(dir_, ec);
  }
  Result<LaunchedDaemon> Edge(const std::string& cloud, const std::string& name) {
    return LaunchDaemon(kBin / "cleave-edge",
                        {"serve",
                         "--edge.bundle",
                         (dir_ / "bundle").string(),
                         "--edge.listen",
                         "tcp://127.0.0.1:0",
                         "--edge.cloud",
                         cloud,
                         "--edge.int8_engine",
                         "reference",
                         "--edge.deadline_ms",
                         "5000",
                         "--edge.adapt_enabled",
                         "true",
                         "--edge.adapt_min_new",
                         "48",
                         "--edge.adapt_window",
                         "256",
                         "--edge.adapt_cpu_share",
                         "1",
                         "--edge.adapt_buffer_size",
                         "64",
                         "--edge.adapt_buffer_file",
                         (dir_ / "rows.bin").string()},
                        "edge.ready_file", dir_, name);
  }
  // Sends `n` gray images (ids from `first`) and returns the replies in order.
  std::vector<edge_api::ClassifyReply> Classify(DealerClient& app, int n, uint64_t first) {
    std::vector<edge_api::ClassifyReply> replies;
    for (int i = 0; i < n; ++i) {
      edge_api::ClassifyRequest r;
      r.request_id = first + i;
      r.width = r.height = 28;
      r.pixels.resize(28 * 28);
      for (size_t p = 0; p < r.pixels.size(); ++p) {
        r.pixels[p] = static_cast<char>((p * 37 + i * 101) % 256);  // a "shifted" input
      }
      EXPECT_TRUE(app.Send(edge_api::EncodeClassifyRequest(r), 2000).ok());
      auto msg = app.Receive(10000);
      EXPECT_TRUE(msg.ok() && msg->has_value()) << "request " << r.request_id << " lost";
      if (!msg.ok() || !msg->has_value()) break;
      auto reply = edge_api::DecodeClassifyReply(**msg);
      EXPECT_TRUE(reply.ok());
      if (reply.ok()) replies.push_back(*reply);
    }
    return replies;
  }
  edge_api::FeedbackReply Feedback(DealerClient& app, uint64_t id, int32_t cls) {
    EXPECT_TRUE(app.Send(edge_api::EncodeFeedbackRequest({id, cls}), 2000).ok());
    auto msg = app.Receive(10000);
    EXPECT_TRUE(msg.ok() && msg->has_value());
    if (!msg.ok() || !msg->has_value()) return {};
    auto reply = edge_api::DecodeLocalReply(**msg);
    EXPECT_TRUE(reply.ok()) << reply.status().ToString();
    if (!reply.ok()) return {};
    EXPECT_EQ(reply->kind, edge_api::LocalRequest::Kind::kFeedback);
    return reply->feedback;
  }

  fs::path dir_;
  TransportContext context_;
};

TEST_F(EdgeLearningTest, AdaptsFromTheCloudSwapsWithoutLosingRequestsAndKeepsItsRows) {
  auto cloud = LaunchDaemon(
      kBin / "cleave-cloud",
      {"--cloud.bundle", (dir_ / "bundle").string(), "--cloud.listen", "tcp://127.0.0.1:0"},
      "cloud.ready_file", dir_, "cloud");
  ASSERT_TRUE(cloud.ok()) << cloud.status().ToString();
  auto edge = Edge(cloud->endpoint, "edge");
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  auto app = DealerClient::Connect(context_, edge->endpoint);
  ASSERT_TRUE(app.ok());

  // Serve until an adapted head has been swapped in, then keep serving: every request gets
  // a proper answer, before, during and after the swap.
  std::vector<edge_api::ClassifyReply> replies = Classify(**app, 150, 1);
  ASSERT_TRUE(cleave::testing::WaitForLogLine(edge->log_path, "adapted head serves", 60000))
      << edge->log_path;
  ASSERT_TRUE(cleave::testing::WaitForLogLine(edge->log_path, "now serving model version", 10000))
      << edge->log_path;
  const std::vector<edge_api::ClassifyReply> after = Classify(**app, 100, 1000);
  replies.insert(replies.end(), after.begin(), after.end());
  ASSERT_EQ(replies.size(), 250u);
  int from_cloud = 0;
  for (const auto& r : replies) {
    EXPECT_TRUE(r.source == edge_api::AnswerSource::kCloud ||
                r.source == edge_api::AnswerSource::kEdgeExit)
        << "request " << r.request_id << ": " << edge_api::AnswerSourceName(r.source) << " "
        << r.error;
    from_cloud += r.source == edge_api::AnswerSource::kCloud;
  }
  EXPECT_GT(from_cloud, 48);  // the teacher answered enough to start a cycle

  // Feedback on the v2 API: accepted for a request of this connection, refused with the
  // reason for an unknown id or a class the model does not have.
  edge_api::FeedbackReply ok = Feedback(**app, 1000, 3);
  EXPECT_TRUE(ok.accepted) << ok.error;
  edge_api::FeedbackReply unknown = Feedback(**app, 777777, 3);
  EXPECT_FALSE(unknown.accepted);
  EXPECT_NE(unknown.error.find("unknown request id 777777"), std::string::npos) << unknown.error;
  edge_api::FeedbackReply range = Feedback(**app, 1001, 10);
  EXPECT_FALSE(range.accepted);
  EXPECT_NE(range.error.find("outside the model's classes 0..9"), std::string::npos) << range.error;
  // Another connection cannot label this one's requests.
  auto other = DealerClient::Connect(context_, edge->endpoint);
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(Feedback(**other, 1002, 1).accepted);
  // v1 classification still works after v2 traffic.
  EXPECT_EQ(Classify(**app, 1, 5000).size(), 1u);

  // A restart keeps the rows: the new daemon says how many it read back.
  ASSERT_TRUE(edge->process->Stop(10000).ok());
  ASSERT_TRUE(fs::exists(dir_ / "rows.bin"));
  ASSERT_TRUE(fs::exists(dir_ / "rows.bin.pending"));
  auto again = Edge(cloud->endpoint, "edge-restarted");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  auto line = cleave::testing::WaitForLogLine(again->log_path, "buffer rows and", 10000);
  ASSERT_TRUE(line.has_value()) << again->log_path;
  EXPECT_NE(line->find(": 64 buffer rows"), std::string::npos) << *line;
}

TEST_F(EdgeLearningTest, FeedbackIsRefusedWhenLearningIsOffAndACorruptBufferStopsTheStart) {
  auto edge =
      LaunchDaemon(kBin / "cleave-edge",
                   {"serve", "--edge.bundle", (dir_ / "bundle").string(), "--edge.listen",
                    "tcp://127.0.0.1:0", "--edge.cloud", "", "--edge.int8_engine", "reference"},
                   "edge.ready_file", dir_, "edge-off");
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  auto app = DealerClient::Connect(context_, edge->endpoint);
  ASSERT_TRUE(app.ok());
  ASSERT_EQ(Classify(**app, 1, 1).size(), 1u);
  edge_api::FeedbackReply off = Feedback(**app, 1, 0);
  EXPECT_FALSE(off.accepted);
  EXPECT_NE(off.error.find("edge.adapt_enabled"), std::string::npos) << off.error;
  // A corrupt buffer file is an error at start, never silently replaced.
  std::string garbage(200, 'x');
  ASSERT_TRUE(WriteFileAtomic(dir_ / "rows.bin", garbage, 0600).ok());
  auto broken = Edge("", "edge-broken");
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.status().message().find("edge.adapt_buffer_file"), std::string::npos)
      << broken.status().ToString();
}

}  // namespace
}  // namespace cleave::edge
