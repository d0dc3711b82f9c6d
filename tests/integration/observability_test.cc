// Integration: the admin HTTP port of real daemons. cleave-cloud answers /healthz at once but
// /readyz only once its bundle has loaded and run; requests through a real cleave-edge show
// up in both daemons' /metrics with matching wire bytes; the aggregator exports its round
// series; a bad admin address stops a daemon at start-up; and a real Prometheus server (the
// Debian package) scrapes a running daemon.
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "common/file_util.h"
#include "common/inference_wire.h"
#include "common/tensor_codec.h"
#include "common/transport.h"
#include "edge/edge_client.h"
#include "testing/bin_dir.h"
#include "testing/log_wait.h"
#include "testing/tiny_bundle.h"
#include "tools/daemon_launcher.h"

namespace cleave::edge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using tools::LaunchDaemon;
using tools::LaunchedDaemon;

const char kPrometheus[] = "/usr/bin/prometheus";
constexpr int kWaitMs = 60000;  // generous: the machine is shared

// "http://127.0.0.1:45123" -> 45123 (0 when there is no port).
int PortOfUrl(const std::string& url) {
  const size_t colon = url.rfind(':');
  return colon == std::string::npos ? 0 : std::atoi(url.c_str() + colon + 1);
}

struct HttpReply {
  int status = 0;  // 0: no answer
  std::string body;
};

HttpReply Get(int port, const std::string& path) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5);
  client.set_read_timeout(10);
  auto res = client.Get(path.c_str());
  return res ? HttpReply{res->status, res->body} : HttpReply{};
}

// Prometheus text -> {"name{labels}" -> value}; comments and blank lines skipped.
std::map<std::string, double> ParseMetrics(const std::string& text) {
  std::map<std::string, double> series;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == std::string::npos) continue;
    series[line.substr(0, space)] = std::strtod(line.c_str() + space + 1, nullptr);
  }
  return series;
}

// Scrapes /metrics until `done` holds for the parsed series (or the deadline passes); returns
// the last scrape. Replies travel before some counters are bumped, hence a wait, not a read.
std::map<std::string, double> ScrapeUntil(
    int port, const std::function<bool(const std::map<std::string, double>&)>& done) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(kWaitMs);
  std::map<std::string, double> series;
  while (true) {
    const HttpReply reply = Get(port, "/metrics");
    series = ParseMetrics(reply.body);
    if ((reply.status == 200 && done(series)) || std::chrono::steady_clock::now() >= until) {
      return series;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

double Value(const std::map<std::string, double>& series, const std::string& name) {
  auto it = series.find(name);
  return it == series.end() ? -1 : it->second;
}

// A loopback port nobody listens on right now (for servers that cannot pick their own).
int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

class ObservabilityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = cleave::testing::TempPath("obs_it");
    fs::create_directories(dir_);
    bundle_ = dir_ / "bundle";
    ASSERT_TRUE(cleave::testing::WriteTinyBundle(bundle_).ok());
  }
  void TearDown() override {
    std::error_code ec;
    if (!HasFailure()) fs::remove_all(dir_, ec);
  }

  Result<LaunchedDaemon> StartCloud(const std::string& name, const std::string& admin,
                                    int timeout_ms = kWaitMs) {
    return LaunchDaemon(kBin / "cleave-cloud",
                        {"--cloud.bundle", bundle_.string(), "--cloud.listen", "tcp://127.0.0.1:0",
                         "--cloud.threads", "1", "--cloud.admin_listen", admin},
                        "cloud.ready_file", dir_, name, timeout_ms);
  }

  // One tail request straight at the cloud (features of the tiny bundle's shape).
  static std::string FeatureRequest(uint64_t id) {
    wire::InferRequest request;
    request.request_id = id;
    request.model = "fmnist";
    std::vector<float> values(2 * 7 * 7, 0.25f);
    request.features = *wire::EncodeTensor(values.data(), {1, 2, 7, 7}, wire::DType::kUInt4, 1);
    return wire::EncodeInferRequest(request);
  }

  static std::vector<edge_api::ClassifyRequest> Requests(size_t n, float threshold,
                                                         uint64_t first_id) {
    std::vector<edge_api::ClassifyRequest> requests(n);
    for (size_t i = 0; i < n; ++i) {
      requests[i].request_id = first_id + i;
      requests[i].exit_threshold = threshold;
      requests[i].width = requests[i].height = 28;
      requests[i].pixels.assign(28 * 28, static_cast<char>(17 * i));
    }
    return requests;
  }

  fs::path dir_, bundle_;
};

TEST_F(ObservabilityTest, CloudIsLiveButNotReadyUntilItsBundleHasLoaded) {
  // A copy of the bundle whose manifest is a FIFO: loading blocks until the test writes it,
  // so "before the model is loaded" is a state the test holds, not a race it hopes to win.
  const fs::path slow = dir_ / "slow-bundle";
  fs::create_directories(slow);
  for (const auto& entry : fs::directory_iterator(bundle_)) {
    if (entry.path().filename() != "manifest.json") fs::copy(entry.path(), slow);
  }
  ASSERT_EQ(::mkfifo((slow / "manifest.json").c_str(), 0600), 0);
  const fs::path log = dir_ / "slow-cloud.log", ready = dir_ / "slow-cloud.ready";
  auto cloud =
      ChildProcess::Spawn({(kBin / "cleave-cloud").string(), "--cloud.bundle", slow.string(),
                           "--cloud.listen", "tcp://127.0.0.1:0", "--cloud.admin_listen",
                           "127.0.0.1:0", "--cloud.ready_file", ready.string()},
                          log.string());
  ASSERT_TRUE(cloud.ok()) << cloud.status().ToString();
  const auto line = cleave::testing::WaitForLogLine(log, "admin HTTP on http://", kWaitMs);
  ASSERT_TRUE(line.has_value()) << "no admin URL logged; see " << log;
  const size_t at = line->find("http://");
  const int port = PortOfUrl(line->substr(at, line->find(' ', at) - at));
  ASSERT_GT(port, 0) << *line;

  EXPECT_EQ(Get(port, "/healthz").status, 200) << "live while loading";
  const HttpReply loading = Get(port, "/readyz");
  EXPECT_EQ(loading.status, 503);
  EXPECT_NE(loading.body.find("loading"), std::string::npos) << loading.body;
  const HttpReply early = Get(port, "/metrics");
  EXPECT_EQ(early.status, 200);
  EXPECT_EQ(
      Value(ParseMetrics(early.body), "cleave_requests_total{component=\"cloud\",outcome=\"ok\"}"),
      0)
      << "the series exist (at 0) while the model loads\n"
      << early.body;
  EXPECT_FALSE(fs::exists(ready)) << "ready file before the bundle loaded";
  EXPECT_TRUE((*cloud)->Running());

  // Let it load: the manifest's bytes go through the FIFO (open blocks until the daemon reads).
  auto manifest = ReadFileToString(bundle_ / "manifest.json");
  ASSERT_TRUE(manifest.ok());
  {
    std::ofstream fifo(slow / "manifest.json", std::ios::binary);
    fifo << *manifest;
    ASSERT_TRUE(fifo.good());
  }
  auto contents = WaitForFile(ready.string(), kWaitMs, cloud->get());
  ASSERT_TRUE(contents.ok()) << contents.status().ToString();
  const json ready_json = json::parse(*contents);
  EXPECT_EQ(PortOfUrl(ready_json.value("admin", "")), port) << *contents;
  // The ready file is written after /readyz turned ready.
  const HttpReply ok = Get(port, "/readyz");
  EXPECT_EQ(ok.status, 200) << ok.body;
  const std::string text = ReadFileToString(log).value_or("");
  EXPECT_LT(text.find("admin HTTP on"), text.find("loaded bundle")) << text;

  // Shutting down: SIGTERM ends it cleanly.
  auto code = (*cloud)->Stop(10000);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
}

TEST_F(ObservabilityTest, RequestsShowUpInBothDaemonsMetrics) {
  auto cloud = StartCloud("cloud", "127.0.0.1:0");
  ASSERT_TRUE(cloud.ok()) << cloud.status().ToString();
  ASSERT_FALSE(cloud->admin_url.empty()) << "the ready file names the admin URL";
  auto edge = LaunchDaemon(kBin / "cleave-edge",
                           {"serve", "--edge.bundle", bundle_.string(), "--edge.listen",
                            "tcp://127.0.0.1:0", "--edge.cloud", cloud->endpoint,
                            "--edge.deadline_ms", "5000", "--edge.admin_listen", "127.0.0.1:0"},
                           "edge.ready_file", dir_, "edge");
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  const int cloud_port = PortOfUrl(cloud->admin_url), edge_port = PortOfUrl(edge->admin_url);
  ASSERT_GT(cloud_port, 0);
  ASSERT_GT(edge_port, 0);
  EXPECT_EQ(Get(cloud_port, "/readyz").status, 200);
  EXPECT_EQ(Get(edge_port, "/readyz").status, 200);

  TransportContext context;
  auto client = EdgeClient::Connect(context, edge->endpoint);
  ASSERT_TRUE(client.ok());
  std::vector<edge_api::ClassifyRequest> requests = Requests(20, 0.0f, 1);  // exits
  for (auto& r : Requests(20, 1.0f, 101)) requests.push_back(r);            // offloads
  auto bad = Requests(1, 0.0f, 999);
  bad[0].width = 14;  // 28x28 pixels claimed as 14 wide: rejected
  requests.push_back(bad[0]);
  auto outcomes = (*client)->Run(requests, 8, 10000);
  ASSERT_TRUE(outcomes.ok()) << outcomes.status().ToString();
  for (const ClassifyOutcome& o : *outcomes) ASSERT_TRUE(o.answered);

  const std::string e = "{component=\"edge\",", c = "{component=\"cloud\",";
  const auto edge_series = ScrapeUntil(edge_port, [&](const auto& s) {
    return Value(s, "cleave_requests_total" + e + "outcome=\"rejected\"}") == 1;
  });
  EXPECT_EQ(Value(edge_series, "cleave_requests_total" + e + "outcome=\"exit\"}"), 20);
  EXPECT_EQ(Value(edge_series, "cleave_requests_total" + e + "outcome=\"offload\"}"), 20);
  EXPECT_EQ(Value(edge_series, "cleave_requests_total" + e + "outcome=\"degraded\"}"), 0);
  EXPECT_EQ(Value(edge_series, "cleave_requests_total" + e + "outcome=\"error\"}"), 0);
  EXPECT_EQ(Value(edge_series, "cleave_batch_size_sum{component=\"edge\"}"), 40);
  EXPECT_GT(Value(edge_series, "cleave_compute_seconds_count{component=\"edge\"}"), 0);
  EXPECT_EQ(Value(edge_series, "cleave_queue_seconds_count{component=\"edge\"}"), 40);
  EXPECT_EQ(Value(edge_series, "cleave_pending_requests{component=\"edge\"}"), 0);
  const double edge_sent =
      Value(edge_series, "cleave_wire_bytes_total" + e + "direction=\"sent\"}");
  const double edge_received =
      Value(edge_series, "cleave_wire_bytes_total" + e + "direction=\"received\"}");
  EXPECT_GT(edge_sent, 20 * 10);
  EXPECT_GT(edge_received, 20 * 40);  // ten float scores per reply

  // The cloud counted the same bytes from the other end of the link.
  const auto cloud_series = ScrapeUntil(cloud_port, [&](const auto& s) {
    return Value(s, "cleave_wire_bytes_total" + c + "direction=\"sent\"}") == edge_received;
  });
  EXPECT_EQ(Value(cloud_series, "cleave_requests_total" + c + "outcome=\"ok\"}"), 20);
  EXPECT_EQ(Value(cloud_series, "cleave_requests_total" + c + "outcome=\"rejected\"}"), 0);
  EXPECT_EQ(Value(cloud_series, "cleave_wire_bytes_total" + c + "direction=\"received\"}"),
            edge_sent);
  EXPECT_EQ(Value(cloud_series, "cleave_wire_bytes_total" + c + "direction=\"sent\"}"),
            edge_received);
  EXPECT_EQ(Value(cloud_series, "cleave_queue_seconds_count{component=\"cloud\"}"), 20);
  EXPECT_EQ(Value(cloud_series, "cleave_batch_size_sum{component=\"cloud\"}"), 20);
  EXPECT_GT(Value(cloud_series, "cleave_compute_seconds_sum{component=\"cloud\"}"), 0);
  EXPECT_EQ(Value(cloud_series, "cleave_curve_refused_total{component=\"cloud\"}"), 0);
  // The edge's DEALER is one peer, seen within the last minute (swept about once a second).
  const auto peers = ScrapeUntil(
      cloud_port, [](const auto& s) { return Value(s, "cleave_connected_edges") == 1; });
  EXPECT_EQ(Value(peers, "cleave_connected_edges"), 1);
}

TEST_F(ObservabilityTest, AggregatorExportsRoundSeries) {
  auto aggregator =
      LaunchDaemon(kBin / "cleave-aggregator",
                   {"--aggregator.model", "tiny_split", "--aggregator.listen", "tcp://127.0.0.1:0",
                    "--aggregator.rounds", "1", "--round.min_clients", "1",
                    "--aggregator.admin_listen", "127.0.0.1:0"},
                   "aggregator.ready_file", dir_, "aggregator");
  ASSERT_TRUE(aggregator.ok()) << aggregator.status().ToString();
  const int port = PortOfUrl(aggregator->admin_url);
  ASSERT_GT(port, 0);
  // No edge registers: the aggregator waits, ready, with its series at zero.
  TransportContext context;
  auto dealer = DealerClient::Connect(context, aggregator->endpoint);
  ASSERT_TRUE(dealer.ok());
  ASSERT_TRUE((*dealer)->Send("not a federated message", 5000).ok());
  const auto series = ScrapeUntil(port, [](const auto& s) {
    return Value(s, "cleave_requests_total{component=\"aggregator\",outcome=\"rejected\"}") == 1;
  });
  EXPECT_EQ(Value(series, "cleave_requests_total{component=\"aggregator\",outcome=\"rejected\"}"),
            1);
  EXPECT_EQ(Value(series, "cleave_federated_round"), 0);
  EXPECT_EQ(Value(series, "cleave_connected_edges"), 0);
  for (const char* status : {"accepted", "rejected", "late", "failed"}) {
    EXPECT_EQ(
        Value(series, std::string("cleave_federated_updates_total{status=\"") + status + "\"}"), 0)
        << status;
  }
  EXPECT_EQ(Value(series, "cleave_federated_round_duration_seconds_count"), 0);
  EXPECT_EQ(Get(port, "/readyz").status, 200);
  auto code = aggregator->process->Stop(10000);
  ASSERT_TRUE(code.ok());
}

TEST_F(ObservabilityTest, AdminAddressThatCannotBeServedIsAStartUpError) {
  auto malformed = StartCloud("cloud-malformed", "127.0.0.1");
  ASSERT_FALSE(malformed.ok());
  EXPECT_NE(malformed.status().message().find("cloud.admin_listen"), std::string::npos)
      << malformed.status().ToString();
  EXPECT_NE(malformed.status().message().find("host:port"), std::string::npos);

  auto first = StartCloud("cloud-first", "127.0.0.1:0");
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  const std::string taken = "127.0.0.1:" + std::to_string(PortOfUrl(first->admin_url));
  auto second = StartCloud("cloud-second", taken);
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("cannot listen for admin HTTP on " + taken),
            std::string::npos)
      << second.status().ToString();
  EXPECT_TRUE(first->process->Running());

  auto edge = LaunchDaemon(kBin / "cleave-edge",
                           {"serve", "--edge.bundle", bundle_.string(), "--edge.listen",
                            "tcp://127.0.0.1:0", "--edge.cloud", "", "--edge.admin_listen", taken},
                           "edge.ready_file", dir_, "edge-taken");
  ASSERT_FALSE(edge.ok());
  EXPECT_NE(edge.status().message().find("edge.admin_listen"), std::string::npos)
      << edge.status().ToString();
  auto aggregator = LaunchDaemon(kBin / "cleave-aggregator",
                                 {"--aggregator.model", "tiny_split", "--aggregator.listen",
                                  "tcp://127.0.0.1:0", "--aggregator.admin_listen", "nowhere:port"},
                                 "aggregator.ready_file", dir_, "aggregator-malformed");
  ASSERT_FALSE(aggregator.ok());
  EXPECT_NE(aggregator.status().message().find("aggregator.admin_listen"), std::string::npos)
      << aggregator.status().ToString();
}

TEST_F(ObservabilityTest, PrometheusScrapesARunningDaemon) {
  if (!fs::exists(kPrometheus)) {
    GTEST_SKIP() << kPrometheus
                 << " is not installed: install the Debian package `prometheus` "
                    "(scripts/packages.txt) to run this test against a real Prometheus server";
  }
  auto cloud = StartCloud("cloud", "127.0.0.1:0");
  ASSERT_TRUE(cloud.ok()) << cloud.status().ToString();
  const int cloud_port = PortOfUrl(cloud->admin_url);
  TransportContext context;
  auto dealer = DealerClient::Connect(context, cloud->endpoint);
  ASSERT_TRUE(dealer.ok());
  for (uint64_t id = 1; id <= 5; ++id) {
    ASSERT_TRUE((*dealer)->Send(FeatureRequest(id), 5000).ok());
    auto reply = (*dealer)->Receive(10000);
    ASSERT_TRUE(reply.ok() && reply->has_value()) << "no reply from the cloud";
  }

  const fs::path config = dir_ / "prometheus.yml";
  ASSERT_TRUE(WriteFileAtomic(config,
                              "global:\n"
                              "  scrape_interval: 1s\n"
                              "  evaluation_interval: 1s\n"
                              "scrape_configs:\n"
                              "  - job_name: cleave-cloud\n"
                              "    static_configs:\n"
                              "      - targets: ['127.0.0.1:" +
                                  std::to_string(cloud_port) + "']\n")
                  .ok());
  // Prometheus cannot pick its own port: take a free one, and another if it was grabbed
  // between the probe and Prometheus' bind.
  std::unique_ptr<ChildProcess> prometheus;
  int web_port = 0;
  for (int attempt = 0; attempt < 3 && !prometheus; ++attempt) {
    web_port = FreePort();
    ASSERT_GT(web_port, 0);
    const fs::path log = dir_ / ("prometheus-" + std::to_string(attempt) + ".log");
    auto spawned = ChildProcess::Spawn(
        {kPrometheus, "--config.file=" + config.string(),
         "--storage.tsdb.path=" + (dir_ / ("tsdb-" + std::to_string(attempt))).string(),
         "--web.listen-address=127.0.0.1:" + std::to_string(web_port), "--log.level=warn"},
        log.string());
    ASSERT_TRUE(spawned.ok()) << spawned.status().ToString();
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(kWaitMs);
    while ((*spawned)->Running() && Get(web_port, "/-/ready").status != 200 &&
           std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if ((*spawned)->Running() && Get(web_port, "/-/ready").status == 200) {
      prometheus = std::move(spawned).value();
    }
  }
  ASSERT_TRUE(prometheus) << "prometheus did not start; see " << dir_ << "/prometheus-*.log";

  // Query its HTTP API until the scraped series are there.
  auto query = [&](const std::string& promql) -> json {
    const HttpReply reply =
        Get(web_port, httplib::append_query_params("/api/v1/query", {{"query", promql}}));
    const json parsed = json::parse(reply.body, nullptr, false);
    return parsed.is_object() && parsed.value("status", "") == "success" ? parsed["data"]["result"]
                                                                         : json::array();
  };
  json ok_series = json::array();
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(kWaitMs);
  while (std::chrono::steady_clock::now() < until) {
    ok_series = query("cleave_requests_total{component=\"cloud\",outcome=\"ok\"}");
    if (!ok_series.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  ASSERT_EQ(ok_series.size(), 1u) << "Prometheus never scraped cleave_requests_total";
  EXPECT_EQ(ok_series[0]["metric"].value("job", ""), "cleave-cloud");
  EXPECT_EQ(ok_series[0]["value"][1].get<std::string>(), "5");
  // Every outcome series, the bytes, the histograms and the target's health.
  EXPECT_EQ(query("cleave_requests_total{component=\"cloud\"}").size(), 7u);
  EXPECT_EQ(query("cleave_wire_bytes_total{component=\"cloud\"} > 0").size(), 2u);
  EXPECT_FALSE(query("cleave_compute_seconds_bucket{component=\"cloud\"}").empty());
  EXPECT_FALSE(query("cleave_queue_seconds_count{component=\"cloud\"}").empty());
  EXPECT_FALSE(query("cleave_batch_size_sum{component=\"cloud\"}").empty());
  const json up = query("up{job=\"cleave-cloud\"}");
  ASSERT_EQ(up.size(), 1u);
  EXPECT_EQ(up[0]["value"][1].get<std::string>(), "1");
  auto stopped = prometheus->Stop(10000);
  ASSERT_TRUE(stopped.ok());
}

}  // namespace
}  // namespace cleave::edge
