// Integration: a stream of PNG frames PUSHed into a real cleave-edge (edge.source zmq-pull)
// whose cloud is a real cleave-cloud that is killed and restarted meanwhile. No frame's
// answer is lost beyond the documented drop policy: every frame received gets exactly one JSON
// line - answered (exit, cloud or degraded) or dropped as replaced by latest-frame-wins - and
// the daemon's metrics agree (received == answered + dropped); answers come from the cloud
// again once it is back. The tiny bundle is enough: this is about accounting, not accuracy.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "common/file_util.h"
#include "common/png_image.h"
#include "testing/bin_dir.h"
#include "testing/tiny_bundle.h"
#include "tools/daemon_launcher.h"

namespace cleave::edge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using tools::LaunchDaemon;
using tools::LaunchedDaemon;

constexpr int kStreamWaitMs = 60000;  // generous: the machine is shared

// What the results file says so far: complete lines only (the daemon may be mid-line).
struct StreamResults {
  std::vector<json> lines;
  // Answers by source for frames with seq > after.
  size_t Answered(const std::string& by, uint64_t after = 0) const {
    size_t n = 0;
    for (const json& line : lines) {
      if (!line.is_object() || !line.contains("seq")) continue;
      n += line.value("answered_by", "") == by && line["seq"].get<uint64_t>() > after;
    }
    return n;
  }
};

StreamResults ReadStreamResults(const fs::path& path) {
  StreamResults results;
  std::string text = ReadFileToString(path).value_or("");
  text.erase(text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1);
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    results.lines.push_back(json::parse(line, nullptr, /*allow_exceptions=*/false));
  }
  return results;
}

// Polls the results file until `done` holds (or the wait runs out); returns the last read.
StreamResults WaitForStreamResults(const fs::path& path,
                                   const std::function<bool(const StreamResults&)>& done) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(kStreamWaitMs);
  while (true) {
    StreamResults results = ReadStreamResults(path);
    if (done(results) || std::chrono::steady_clock::now() >= until) return results;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// Prometheus text -> {"name{labels}" -> value}.
std::map<std::string, double> ScrapeStreamMetrics(const std::string& admin_url) {
  const size_t colon = admin_url.rfind(':');
  httplib::Client client("127.0.0.1", std::atoi(admin_url.c_str() + colon + 1));
  client.set_read_timeout(10);
  auto res = client.Get("/metrics");
  std::map<std::string, double> series;
  if (!res || res->status != 200) return series;
  std::istringstream in(res->body);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space != std::string::npos) {
      series[line.substr(0, space)] = std::strtod(line.c_str() + space + 1, nullptr);
    }
  }
  return series;
}

// A producer: PUSHes [stream, PNG] frames at a steady pace from its own thread (it owns the
// socket) until stopped; counts what it handed to ZeroMQ.
class FramePusher {
 public:
  FramePusher(zmq::context_t& context, const std::string& stream, std::vector<std::string> pngs)
      : socket_(context, zmq::socket_type::push), stream_(stream), pngs_(std::move(pngs)) {
    socket_.set(zmq::sockopt::linger, 5000);  // frames queued at stop still go out
    socket_.set(zmq::sockopt::sndtimeo, 100);
    socket_.bind("tcp://127.0.0.1:0");
    endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
  }
  ~FramePusher() { Stop(); }

  const std::string& endpoint() const { return endpoint_; }
  void Start(std::chrono::microseconds interval) {
    thread_ = std::thread([this, interval] {
      size_t i = 0;
      while (!stop_.load()) {
        const std::string& png = pngs_[i++ % pngs_.size()];
        // Blocks (up to sndtimeo) until the edge's PULL is connected: nothing is dropped here.
        // Once the first part is taken, the message's other part is too.
        if (socket_.send(zmq::buffer(stream_), zmq::send_flags::sndmore) &&
            socket_.send(zmq::buffer(png), zmq::send_flags::none)) {
          sent_.fetch_add(1);
        }
        std::this_thread::sleep_for(interval);
      }
      socket_.close();
    });
  }
  // Stops producing and returns how many frames were sent.
  uint64_t Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    return sent_.load();
  }
  uint64_t sent() const { return sent_.load(); }

 private:
  zmq::socket_t socket_;
  std::string endpoint_;
  std::string stream_;
  std::vector<std::string> pngs_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> sent_{0};
};

class StreamSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = cleave::testing::TempPath("stream_it");
    fs::create_directories(dir_);
    bundle_ = dir_ / "bundle";
    ASSERT_TRUE(cleave::testing::WriteTinyBundle(bundle_).ok());
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  Result<LaunchedDaemon> StartCloud(const std::string& listen, const std::string& name) {
    return LaunchDaemon(
        kBin / "cleave-cloud",
        {"--cloud.bundle", bundle_.string(), "--cloud.listen", listen, "--cloud.threads", "1"},
        "cloud.ready_file", dir_, name);
  }

  // 28x28 gray PNGs of different brightness.
  static std::vector<std::string> Pngs() {
    std::vector<std::string> pngs;
    for (int v = 0; v < 8; ++v) {
      GrayImage image;
      image.width = image.height = 28;
      image.pixels.resize(28 * 28);
      for (size_t p = 0; p < image.pixels.size(); ++p) {
        image.pixels[p] = static_cast<uint8_t>((p * (v + 1) * 7) & 0xff);
      }
      pngs.push_back(EncodePngGray8(image).value());
    }
    return pngs;
  }

  fs::path dir_;
  fs::path bundle_;
};

TEST_F(StreamSourceTest, KilledAndRestartedCloudLosesNoFrameBeyondTheDropPolicy) {
  auto cloud = StartCloud("tcp://127.0.0.1:0", "cloud");
  ASSERT_TRUE(cloud.ok()) << cloud.status().ToString();
  const std::string cloud_endpoint = cloud->endpoint;  // the restarted cloud binds it again

  zmq::context_t context;
  FramePusher pusher(context, "cam1", Pngs());
  const fs::path results = dir_ / "results.jsonl";
  auto edge = LaunchDaemon(
      kBin / "cleave-edge",
      {"serve", "--edge.bundle", bundle_.string(), "--edge.listen", "tcp://127.0.0.1:0",
       "--edge.cloud", cloud_endpoint, "--edge.deadline_ms", "300", "--edge.admin_listen",
       "127.0.0.1:0", "--edge.source", "zmq-pull://>" + pusher.endpoint(), "--edge.stream_window",
       "2", "--edge.stream_exit_threshold", "1.0", "--edge.stream_results", results.string()},
      "edge.ready_file", dir_, "edge");
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  auto ready = json::parse(ReadFileToString(dir_ / "edge.ready").value_or("{}"), nullptr, false);
  EXPECT_NE(ready.value("stream_source", "").find("zmq-pull " + pusher.endpoint()),
            std::string::npos)
      << ready.dump();

  // ~500 frames/s: faster than a busy 2-core machine answers with window 2, so
  // latest-frame-wins has work to do.
  pusher.Start(std::chrono::microseconds(2000));
  StreamResults before = WaitForStreamResults(
      results, [](const StreamResults& r) { return r.Answered("cloud") >= 20; });
  ASSERT_GE(before.Answered("cloud"), 20u) << "the cloud never answered a stream frame";

  // Cloud gone: frames keep being answered, degraded by the best local exit.
  ASSERT_TRUE(cloud->process->Signal(SIGKILL).ok());
  ASSERT_TRUE(cloud->process->Wait(10000).ok());
  const uint64_t killed_after = pusher.sent();
  StreamResults during = WaitForStreamResults(
      results, [&](const StreamResults& r) { return r.Answered("degraded", killed_after) >= 20; });
  ASSERT_GE(during.Answered("degraded", killed_after), 20u)
      << "frames sent while the cloud was down were not answered degraded";

  // Back at the same endpoint: answers come from the cloud again.
  auto restarted = StartCloud(cloud_endpoint, "cloud-restarted");
  ASSERT_TRUE(restarted.ok()) << restarted.status().ToString();
  const uint64_t restarted_after = pusher.sent();
  StreamResults after = WaitForStreamResults(
      results, [&](const StreamResults& r) { return r.Answered("cloud", restarted_after) >= 20; });
  EXPECT_GE(after.Answered("cloud", restarted_after), 20u)
      << "no cloud answers after the cloud came back";

  // Every frame sent gets its line: answered or dropped, once.
  const uint64_t sent = pusher.Stop();
  StreamResults all =
      WaitForStreamResults(results, [&](const StreamResults& r) { return r.lines.size() >= sent; });
  ASSERT_EQ(all.lines.size(), sent);
  std::vector<int> seen(sent + 1, 0);
  size_t answered = 0, dropped = 0;
  for (const json& line : all.lines) {
    ASSERT_TRUE(line.is_object()) << "a line is not JSON";
    EXPECT_EQ(line["stream"], "cam1");
    const uint64_t seq = line["seq"].get<uint64_t>();
    ASSERT_GE(seq, 1u);
    ASSERT_LE(seq, sent);
    EXPECT_EQ(++seen[seq], 1) << "frame " << seq << " has two lines";
    if (line.contains("dropped")) {
      ++dropped;
      // The only drops the policy allows: a newer frame took this one's place.
      EXPECT_EQ(line["dropped"], "replaced") << line.dump();
    } else {
      ++answered;
      const std::string by = line["answered_by"];
      EXPECT_TRUE(by == "exit" || by == "cloud" || by == "degraded") << line.dump();
      EXPECT_GE(line["class"].get<int>(), 0) << line.dump();
    }
  }
  EXPECT_EQ(answered + dropped, sent);
  std::cout << "stream: " << sent << " frames; answered " << all.Answered("cloud") << " cloud, "
            << all.Answered("degraded") << " degraded, " << all.Answered("exit")
            << " exit; dropped " << dropped << " (replaced)\n";

  // The daemon's own count says the same.
  auto series = ScrapeStreamMetrics(edge->admin_url);
  const auto value = [&](const std::string& name) {
    auto it = series.find(name);
    return it == series.end() ? -1.0 : it->second;
  };
  EXPECT_EQ(value("cleave_edge_stream_frames_total{stream=\"cam1\"}"), static_cast<double>(sent));
  double metric_answered = 0, metric_dropped = 0;
  for (const char* by : {"exit", "cloud", "degraded"}) {
    metric_answered += value(std::string("cleave_edge_stream_answered_total{source=\"") + by +
                             "\",stream=\"cam1\"}");
  }
  for (const auto& [name, v] : series) {
    if (name.rfind("cleave_edge_stream_dropped_total{", 0) == 0 &&
        name.find("stream=\"cam1\"") != std::string::npos) {
      metric_dropped += v;
    }
  }
  EXPECT_EQ(metric_answered, static_cast<double>(answered));
  EXPECT_EQ(metric_dropped, static_cast<double>(dropped));
  EXPECT_EQ(value("cleave_edge_stream_dropped_total{reason=\"replaced\",stream=\"cam1\"}"),
            static_cast<double>(dropped));
  EXPECT_GT(value("cleave_edge_stream_staleness_seconds_count{stream=\"cam1\"}"), 0);

  // A clean stop: nothing was waiting, so no line is added.
  ASSERT_TRUE(edge->process->Signal(SIGTERM).ok());
  auto code = edge->process->Wait(30000);
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  EXPECT_EQ(*code, 0);
  EXPECT_EQ(ReadStreamResults(results).lines.size(), sent);
}

}  // namespace
}  // namespace cleave::edge
