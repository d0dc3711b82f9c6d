// Integration: hard-token routing with real processes on loopback. `cleave train-lm`
// writes a tiny lm-split bundle (once per build, shared: testing/trained_bundles.h); cleave-cloud
// serves its cloud layers; `cleave-edge generate` routes hard tokens to it. Killing the cloud
// mid-generation leaves generation to finish on the edge, marked degraded.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "common/file_util.h"
#include "common/lm_wire.h"
#include "common/transport.h"
#include "testing/bin_dir.h"
#include "testing/tiny_bundle.h"
#include "testing/trained_bundles.h"
#include "tools/daemon_launcher.h"

namespace cleave::edge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using tools::LaunchDaemon;
using tools::LaunchedDaemon;

class LmRoutingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(cleave::testing::TempPath("lm_it"));
    fs::create_directories(*dir_);
    // Trained once into the build tree (ctest's fixture TrainedBundles.TinyLm) and shared
    // by every test process; see testing/trained_bundles.h.
    auto bundle = cleave::testing::EnsureTrainedBundle(cleave::testing::TinyLmBundle());
    ASSERT_TRUE(bundle.ok()) << bundle.status().ToString();
    lm_ = new fs::path(*bundle);
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*dir_, ec);
    delete dir_;
    delete lm_;
    lm_ = nullptr;
  }

  LaunchedDaemon StartCloud(const std::string& name, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"--cloud.bundle", lm_->string(), "--cloud.listen",
                                     "tcp://127.0.0.1:0"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto cloud = LaunchDaemon(kBin / "cleave-cloud", args, "cloud.ready_file", *dir_, name);
    EXPECT_TRUE(cloud.ok()) << cloud.status().ToString();
    return cloud.ok() ? std::move(*cloud) : LaunchedDaemon{};
  }

  // Runs generate to completion; returns (exit code, stdout text, JSON summary).
  struct Generated {
    int code = -1;
    std::string text;
    json summary;
  };
  Generated Generate(const std::string& cloud, int max_tokens, const std::string& name,
                     std::function<void()> meanwhile = nullptr,
                     const std::vector<std::string>& extra = {}) {
    const fs::path log = *dir_ / (name + ".log");
    std::vector<std::string> argv = {(kBin / "cleave-edge").string(),
                                     "generate",
                                     "--bundle",
                                     lm_->string(),
                                     "--prompt",
                                     "The cat ",
                                     "--max-tokens",
                                     std::to_string(max_tokens),
                                     "--threshold",
                                     "0.3",
                                     "--timeout-ms",
                                     "500",
                                     "--json"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    if (!cloud.empty()) {
      argv.push_back("--cloud");
      argv.push_back(cloud);
    }
    auto child = ChildProcess::Spawn(argv, log.string());
    Generated g;
    EXPECT_TRUE(child.ok()) << child.status().ToString();
    if (!child.ok()) return g;
    if (meanwhile) meanwhile();
    auto code = (*child)->Wait(120000);
    EXPECT_TRUE(code.ok()) << code.status().ToString();
    g.code = code.ok() ? *code : -1;
    auto text = ReadFileToString(log.string());
    if (text.ok()) {
      g.text = *text;
      // The summary is the last line that parses as JSON.
      std::istringstream lines(*text);
      for (std::string line; std::getline(lines, line);) {
        if (!line.empty() && line[0] == '{') {
          auto parsed = json::parse(line, nullptr, false);
          if (!parsed.is_discarded()) g.summary = parsed;
        }
      }
    }
    return g;
  }

  static fs::path* dir_;
  static fs::path* lm_;  // the trained lm-split bundle
};

fs::path* LmRoutingTest::dir_ = nullptr;
fs::path* LmRoutingTest::lm_ = nullptr;

TEST_F(LmRoutingTest, HardTokensGoToTheCloudProcess) {
  LaunchedDaemon cloud = StartCloud("cloud-a");
  ASSERT_NE(cloud.process, nullptr);
  const Generated g = Generate(cloud.endpoint, 60, "gen-a");
  ASSERT_EQ(g.code, 0) << g.text;
  ASSERT_TRUE(g.summary.is_object()) << g.text;
  EXPECT_EQ(g.summary["generated"], 60);
  EXPECT_GT(g.summary["routed"].get<int>(), 0) << g.text;
  EXPECT_EQ(g.summary["degraded"], 0) << g.text;
  EXPECT_GT(g.summary["bytes_sent"].get<int>(), 0);
  EXPECT_NE(g.text.find("The cat "), std::string::npos);
  ASSERT_TRUE(cloud.process->Stop(5000).ok());
  auto log = ReadFileToString(cloud.log_path.string());
  ASSERT_TRUE(log.ok());
  EXPECT_NE(log->find("predictions"), std::string::npos) << *log;
}

TEST_F(LmRoutingTest, KillingTheCloudMidGenerationFinishesDegraded) {
  LaunchedDaemon cloud = StartCloud("cloud-b");
  ASSERT_NE(cloud.process, nullptr);
  const fs::path log = *dir_ / "gen-b.log";
  const Generated g = Generate(cloud.endpoint, 4000, "gen-b", [&] {
    // Kill once generation is visibly under way (streamed bytes reach the log).
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    std::error_code ec;
    while (std::chrono::steady_clock::now() < give_up &&
           (!fs::exists(log, ec) || fs::file_size(log, ec) < 200)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(cloud.process->Signal(SIGKILL).ok());
  });
  ASSERT_EQ(g.code, 0) << g.text;
  ASSERT_TRUE(g.summary.is_object()) << g.text;
  EXPECT_EQ(g.summary["generated"], 4000);
  EXPECT_GT(g.summary["routed"].get<int>(), 0) << g.text;    // before the kill
  EXPECT_GT(g.summary["degraded"].get<int>(), 0) << g.text;  // after it
  EXPECT_NE(g.text.find("degraded"), std::string::npos);
}

// A flood of requests into a cloud whose queue holds 2: every request is answered, either
// computed (next-byte log-probabilities) or `overloaded` at once, and the cloud keeps serving.
TEST_F(LmRoutingTest, CloudAnswersEveryRequestOfAFloodWithAnswerOrOverloaded) {
  LaunchedDaemon cloud = StartCloud("cloud-flood", {"--cloud.max_queue", "2"});
  ASSERT_TRUE(cloud.process);
  TransportContext context;
  auto client = DealerClient::Connect(context, cloud.endpoint);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  auto request = [](uint64_t id) {
    lm_wire::LmRequest r;
    r.request_id = id;
    r.model = "lm";
    r.session = "flood-" + std::to_string(id);
    r.tokens = "The cat sat on the mat and looked at the door. ";
    r.predict = true;
    r.reset_session = true;
    return lm_wire::EncodeLmRequest(r);
  };
  constexpr uint64_t kRequests = 300;
  for (uint64_t id = 1; id <= kRequests; ++id) ASSERT_TRUE((*client)->Send(request(id), 1000).ok());
  std::map<uint64_t, lm_wire::LmStatus> status;
  size_t vocab = 0;
  while (status.size() < kRequests) {
    auto msg = (*client)->Receive(20000);
    ASSERT_TRUE(msg.ok() && msg->has_value())
        << status.size() << " of " << kRequests << " answered";
    auto reply = lm_wire::DecodeLmReply(**msg);
    ASSERT_TRUE(reply.ok()) << reply.status().ToString();
    EXPECT_TRUE(status.emplace(reply->request_id, reply->status).second) << "answered twice";
    if (reply->status == lm_wire::LmStatus::kOk) {
      EXPECT_GT(reply->log_probs.size(), 0u);
      vocab = reply->log_probs.size();
    } else {
      EXPECT_EQ(reply->status, lm_wire::LmStatus::kOverloaded) << reply->error;
      EXPECT_NE(reply->error.find("queue is full"), std::string::npos) << reply->error;
    }
  }
  size_t ok = 0, overloaded = 0;
  for (const auto& [id, st] : status) {
    ok += st == lm_wire::LmStatus::kOk;
    overloaded += st == lm_wire::LmStatus::kOverloaded;
  }
  EXPECT_EQ(ok + overloaded, kRequests);
  EXPECT_GE(ok, 1u);
  EXPECT_GE(overloaded, 1u) << "300 requests at once into a queue of 2";
  EXPECT_EQ(vocab, 256u);
  // After the flood it serves as before.
  ASSERT_TRUE((*client)->Send(request(kRequests + 1), 1000).ok());
  auto msg = (*client)->Receive(20000);
  ASSERT_TRUE(msg.ok() && msg->has_value());
  auto reply = lm_wire::DecodeLmReply(**msg);
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(reply->status, lm_wire::LmStatus::kOk) << reply->error;
}

TEST_F(LmRoutingTest, WithoutACloudGenerationIsEdgeOnlyAndSaysSo) {
  const Generated g = Generate("", 30, "gen-c");
  ASSERT_EQ(g.code, 0) << g.text;
  EXPECT_EQ(g.summary["routed"], 0);
  EXPECT_NE(g.text.find("edge alone"), std::string::npos) << g.text;
  // A missing bundle is a clear error and exit status 1.
  auto bad = ChildProcess::Spawn({(kBin / "cleave-edge").string(), "generate", "--bundle",
                                  (*dir_ / "nope").string(), "--prompt", "x"},
                                 (*dir_ / "gen-bad.log").string());
  ASSERT_TRUE(bad.ok());
  auto code = (*bad)->Wait(60000);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 1);
  auto text = ReadFileToString((*dir_ / "gen-bad.log").string());
  EXPECT_NE(text->find("cannot load"), std::string::npos) << *text;
}

TEST_F(LmRoutingTest, CloudOnlyGenerationSendsTokensForTheCloudToRunEveryLayer) {
  LaunchedDaemon cloud = StartCloud("cloud-d");
  ASSERT_NE(cloud.process, nullptr);
  const Generated g = Generate(cloud.endpoint, 40, "gen-d", nullptr, {"--mode", "cloud_only"});
  ASSERT_EQ(g.code, 0) << g.text;
  ASSERT_TRUE(g.summary.is_object()) << g.text;
  EXPECT_EQ(g.summary["routed"], 40) << g.text;  // every generated token from the cloud
  EXPECT_EQ(g.summary["tokens"], 48) << g.text;  // the prompt's 8 bytes and the 40
  EXPECT_EQ(g.summary["degraded"], 0) << g.text;
  EXPECT_GT(g.summary["bytes_sent"].get<int>(), 0);
  ASSERT_TRUE(cloud.process->Stop(5000).ok());
}

TEST_F(LmRoutingTest, BenchLmMeasuresEveryConfigurationOverTheWire) {
  const fs::path out = *dir_ / "bench-lm.json";
  auto bench = ChildProcess::Spawn(
      {(kBin / "cleave").string(), "bench", "lm", "--bundle", lm_->string(), "--bytes", "700",
       "--sweep", "0.5,1", "--json", out.string(), "--markdown", (*dir_ / "bench-lm.md").string()},
      (*dir_ / "bench-lm.log").string());
  ASSERT_TRUE(bench.ok()) << bench.status().ToString();
  auto code = (*bench)->Wait(300000);
  ASSERT_TRUE(code.ok() && *code == 0)
      << ReadFileToString((*dir_ / "bench-lm.log").string()).value_or("(no log)");
  auto text = ReadFileToString(out.string());
  ASSERT_TRUE(text.ok());
  const json report = json::parse(*text);
  EXPECT_EQ(report["naive_fp16_bytes_per_token"], 64);  // tiny: d_model 32, fp16
  const json& configs = report["configs"];
  for (const char* name : {"cloud_only", "edge_only", "routed"}) {
    for (const char* key : {"bits_per_char", "routed_fraction", "bytes_per_token_mean",
                            "cloud_flops_share", "tokens_per_second", "p50_ms", "p99_ms"}) {
      ASSERT_TRUE(configs[name].contains(key)) << name << "." << key;
    }
    EXPECT_EQ(configs[name]["degraded"], 0) << name;
    EXPECT_EQ(configs[name]["tokens"], 672) << name;  // 21 windows of 33 bytes, 32 scored
    EXPECT_GT(configs[name]["bits_per_char"].get<double>(), 0) << name;
    EXPECT_GT(configs[name]["tokens_per_second"].get<double>(), 0) << name;
  }
  EXPECT_EQ(configs["cloud_only"]["routed_fraction"], 1.0);
  EXPECT_EQ(configs["cloud_only"]["cloud_flops_share"], 1.0);
  EXPECT_GT(configs["cloud_only"]["bytes_per_token_mean"].get<double>(), 1.0);
  EXPECT_EQ(configs["edge_only"]["routed_fraction"], 0.0);
  EXPECT_EQ(configs["edge_only"]["bytes_per_token_mean"], 0.0);
  EXPECT_EQ(configs["edge_only"]["cloud_flops_share"], 0.0);
  // Threshold 1 routes every token through the split path: the cloud runs only its layers.
  ASSERT_EQ(report["sweep"].size(), 2u);
  const json& all = report["sweep"][1];
  EXPECT_EQ(all["routed_fraction"], 1.0);
  EXPECT_GT(all["cloud_flops_share"].get<double>(), 0.0);
  EXPECT_LT(all["cloud_flops_share"].get<double>(), 1.0);
  EXPECT_TRUE(report["targets"].contains("routed_bpc_le_1.03x_cloud_only"));
  EXPECT_TRUE(fs::exists(*dir_ / "bench-lm.png"));
  EXPECT_TRUE(fs::exists(*dir_ / "bench-lm.md"));

  // A bundle that is not there: exit status 1 and a message.
  auto bad = ChildProcess::Spawn(
      {(kBin / "cleave").string(), "bench", "lm", "--bundle", (*dir_ / "nope").string()},
      (*dir_ / "bench-bad.log").string());
  ASSERT_TRUE(bad.ok());
  auto bad_code = (*bad)->Wait(60000);
  ASSERT_TRUE(bad_code.ok());
  EXPECT_EQ(*bad_code, 1);
  EXPECT_NE(ReadFileToString((*dir_ / "bench-bad.log").string())->find("cleave bench lm"),
            std::string::npos);
}

}  // namespace
}  // namespace cleave::edge
