// Integration: real cleave-cloud and cleave-edge processes on ephemeral loopback ports,
// a bundle trained by the real `cleave train --quick` (once per build, shared by the
// tests: testing/trained_bundles.h), requests from a local application.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "common/datasets.h"
#include "common/file_util.h"
#include "common/inference_wire.h"
#include "common/transport.h"
#include "edge/edge_client.h"
#include "split/tail_plan.h"
#include "testing/bin_dir.h"
#include "testing/trained_bundles.h"
#include "tools/daemon_launcher.h"

namespace cleave::edge {
namespace {

namespace fs = std::filesystem;
using tools::LaunchDaemon;
using tools::LaunchedDaemon;

class SplitInferenceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    work_ = fs::temp_directory_path() / ("cleave-it-" + std::to_string(::getpid()));
    fs::create_directories(work_);
    // Trained once into the build tree (ctest's fixture TrainedBundles.VisionQuick) and
    // shared by every test process; see testing/trained_bundles.h.
    auto bundle = testing::EnsureTrainedBundle(testing::VisionQuickBundle());
    ASSERT_TRUE(bundle.ok()) << bundle.status().ToString();
    bundle_ = *bundle;
    auto test = LoadFashionMnist(DatasetSplit::kTest);
    ASSERT_TRUE(test.ok()) << test.status().ToString();
    test_ = new ImageDataset(std::move(test).value());
  }
  static void TearDownTestSuite() {
    delete test_;
    test_ = nullptr;
    std::error_code ec;
    fs::remove_all(work_, ec);
  }

  void SetUp() override {
    ASSERT_TRUE(test_ != nullptr) << "suite set-up failed";
    dir_ = work_ / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::create_directories(dir_);
  }

  Result<LaunchedDaemon> StartCloud(const std::string& precision = "auto") {
    return LaunchDaemon(kBin / "cleave-cloud",
                        {"--cloud.bundle", bundle_.string(), "--cloud.listen", "tcp://127.0.0.1:0",
                         "--cloud.threads", "1", "--cloud.precision", precision},
                        "cloud.ready_file", dir_, "cloud-" + precision);
  }
  // Runs cleave-cloud with `precision`, expects it to refuse to start; returns its log.
  std::string CloudStartupFailure(const std::string& precision) {
    const fs::path log = dir_ / (precision + ".log");
    auto proc =
        ChildProcess::Spawn({(kBin / "cleave-cloud").string(), "--cloud.bundle", bundle_.string(),
                             "--cloud.listen", "tcp://127.0.0.1:0", "--cloud.precision", precision},
                            log.string());
    EXPECT_TRUE(proc.ok());
    if (!proc.ok()) return "";
    auto code = (*proc)->Wait(60000);
    EXPECT_TRUE(code.ok());
    if (code.ok()) {
      EXPECT_NE(*code, 0) << "cleave-cloud started with precision " << precision;
    }
    return ReadFileToString(log.string()).value_or("");
  }
  Result<LaunchedDaemon> StartEdge(const std::string& cloud_endpoint, int deadline_ms) {
    return LaunchDaemon(
        kBin / "cleave-edge",
        {"serve", "--edge.bundle", bundle_.string(), "--edge.listen", "tcp://127.0.0.1:0",
         "--edge.cloud", cloud_endpoint, "--edge.deadline_ms", std::to_string(deadline_ms)},
        "edge.ready_file", dir_, "edge");
  }

  // Requests for test images [0, n); threshold -1 (calibrated), 0 (always exit) or 2 is not
  // allowed on the API, so forced offload uses 1.0 (max softmax is < 1 for these models).
  static std::vector<edge_api::ClassifyRequest> Requests(size_t n, float threshold,
                                                         uint64_t first_id = 1) {
    std::vector<edge_api::ClassifyRequest> requests(n);
    const size_t area = size_t{test_->rows} * test_->cols;
    for (size_t i = 0; i < n; ++i) {
      auto& r = requests[i];
      r.request_id = first_id + i;
      r.exit_threshold = threshold;
      r.width = test_->cols;
      r.height = test_->rows;
      r.pixels.assign(reinterpret_cast<const char*>(test_->images.data() + i * area), area);
    }
    return requests;
  }

  static fs::path work_;
  static fs::path bundle_;
  static ImageDataset* test_;
  fs::path dir_;
};

fs::path SplitInferenceTest::work_;
fs::path SplitInferenceTest::bundle_;
ImageDataset* SplitInferenceTest::test_ = nullptr;

TEST_F(SplitInferenceTest, EveryRequestAnsweredByExitOrCloud) {
  auto cloud = StartCloud();
  ASSERT_TRUE(cloud.ok()) << cloud.status().ToString();
  auto edge = StartEdge(cloud->endpoint, 2000);
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  TransportContext context;
  auto client = EdgeClient::Connect(context, edge->endpoint);
  ASSERT_TRUE(client.ok());

  // 100 forced exits, 100 forced offloads, 100 with the calibrated threshold.
  std::vector<edge_api::ClassifyRequest> requests = Requests(100, 0.0f, 1);
  for (auto& r : Requests(100, 1.0f, 1001)) requests.push_back(r);
  for (auto& r : Requests(100, -1.0f, 2001)) requests.push_back(r);
  auto outcomes = (*client)->Run(requests, 16, 10000);
  ASSERT_TRUE(outcomes.ok()) << outcomes.status().ToString();
  ASSERT_EQ(outcomes->size(), 300u);
  size_t correct = 0;
  for (size_t i = 0; i < outcomes->size(); ++i) {
    const ClassifyOutcome& o = (*outcomes)[i];
    ASSERT_TRUE(o.answered) << "request " << requests[i].request_id << " got no answer";
    EXPECT_EQ(o.reply.request_id, requests[i].request_id);
    EXPECT_TRUE(o.reply.error.empty()) << o.reply.error;
    EXPECT_GE(o.reply.predicted_class, 0);
    EXPECT_LT(o.reply.predicted_class, 10);
    EXPECT_EQ(o.reply.scores.size(), 10u);
    if (i < 100) {
      EXPECT_EQ(o.reply.source, edge_api::AnswerSource::kEdgeExit);
      EXPECT_EQ(o.reply.wire_bytes, 0u);
    } else if (i < 200) {
      EXPECT_EQ(o.reply.source, edge_api::AnswerSource::kCloud);
      EXPECT_GT(o.reply.wire_bytes, 0u);
      EXPECT_LT(o.reply.wire_bytes, 200u) << "bottleneck features should be a few dozen bytes";
    } else {
      EXPECT_TRUE(o.reply.source == edge_api::AnswerSource::kEdgeExit ||
                  o.reply.source == edge_api::AnswerSource::kCloud);
    }
    correct += o.reply.predicted_class == test_->labels[i % 100];
  }
  // Even the --quick model is far better than chance (10%).
  EXPECT_GT(correct, 300u * 4 / 10);
  EXPECT_EQ((*client)->stray_replies(), 0u);
}

// The tail's arithmetic (cloud.precision): fp32 and bf16 daemons answer the same offloaded
// requests with the same classes on nearly every image; an unknown precision is a start-up
// error naming the key, and bf16 is refused where the CPU cannot run it.
TEST_F(SplitInferenceTest, TailPrecisionFp32AndBf16AgreeAndUnknownIsRefused) {
  const bool bf16_here = split::CpuCanRunBf16();
  std::vector<std::vector<int32_t>> classes;
  for (const std::string precision : {"fp32", "bf16"}) {
    if (precision == "bf16" && !bf16_here) {
      const std::string log = CloudStartupFailure("bf16");
      EXPECT_NE(log.find("AVX-512"), std::string::npos) << log;
      GTEST_SKIP() << "this CPU has no AVX-512 BW/VL/DQ, so it cannot run bf16 tails (refused "
                      "as it should be); fp32 checked";
    }
    auto cloud = StartCloud(precision);
    ASSERT_TRUE(cloud.ok()) << precision << ": " << cloud.status().ToString();
    auto edge = StartEdge(cloud->endpoint, 5000);
    ASSERT_TRUE(edge.ok()) << edge.status().ToString();
    TransportContext context;
    auto client = EdgeClient::Connect(context, edge->endpoint);
    ASSERT_TRUE(client.ok());
    const std::vector<edge_api::ClassifyRequest> requests = Requests(200, 1.0f, 1);
    auto outcomes = (*client)->Run(requests, 16, 20000);
    ASSERT_TRUE(outcomes.ok()) << outcomes.status().ToString();
    ASSERT_EQ(outcomes->size(), requests.size());
    std::vector<int32_t> got;
    for (const ClassifyOutcome& o : *outcomes) {
      ASSERT_TRUE(o.answered);
      ASSERT_EQ(o.reply.source, edge_api::AnswerSource::kCloud) << o.reply.error;
      got.push_back(o.reply.predicted_class);
    }
    classes.push_back(got);
  }
  size_t same = 0;
  for (size_t i = 0; i < classes[0].size(); ++i) same += classes[0][i] == classes[1][i];
  // bf16 rounds the tail's activations to 8-bit mantissas; a class flips only where two
  // scores are within that rounding of each other.
  EXPECT_GE(same, classes[0].size() * 97 / 100) << same << " of " << classes[0].size();

  const std::string log = CloudStartupFailure("fp16");
  EXPECT_NE(log.find("cloud.precision"), std::string::npos) << log;
  EXPECT_NE(log.find("fp32, bf16 or auto"), std::string::npos) << log;
}

TEST_F(SplitInferenceTest, KilledCloudDegradesWithinDeadline) {
  auto cloud = StartCloud();
  ASSERT_TRUE(cloud.ok()) << cloud.status().ToString();
  const int deadline_ms = 300;
  auto edge = StartEdge(cloud->endpoint, deadline_ms);
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  TransportContext context;
  auto client = EdgeClient::Connect(context, edge->endpoint);
  ASSERT_TRUE(client.ok());

  // Every request wants the cloud; the cloud is killed after 100 answers.
  std::vector<edge_api::ClassifyRequest> requests = Requests(300, 1.0f);
  bool killed = false;
  size_t done_at_kill = 0;
  auto outcomes = (*client)->Run(requests, 4, 5000, [&](size_t done) {
    if (!killed && done >= 100) {
      ASSERT_TRUE(cloud->process->Signal(SIGKILL).ok());
      ASSERT_TRUE(cloud->process->Wait(5000).ok());
      killed = true;
      done_at_kill = done;
    }
  });
  ASSERT_TRUE(outcomes.ok()) << outcomes.status().ToString();
  ASSERT_TRUE(killed);
  size_t cloud_answers = 0, degraded = 0;
  for (size_t i = 0; i < outcomes->size(); ++i) {
    const ClassifyOutcome& o = (*outcomes)[i];
    ASSERT_TRUE(o.answered) << "request " << i << " got no answer";
    EXPECT_GE(o.reply.predicted_class, 0);
    if (o.reply.source == edge_api::AnswerSource::kCloud) ++cloud_answers;
    if (o.reply.source == edge_api::AnswerSource::kDegraded) {
      ++degraded;
      // Answered within the deadline (plus scheduling slack on a busy 2-core machine).
      EXPECT_LE(o.reply.total_micros, static_cast<uint64_t>(deadline_ms + 150) * 1000);
      EXPECT_LE(o.latency_ms, deadline_ms + 250.0);
    }
  }
  EXPECT_GE(cloud_answers, done_at_kill - 4);  // all before the kill (but those in flight)
  EXPECT_GE(degraded, outcomes->size() - done_at_kill - 4);
  // Everything sent after the kill is degraded.
  for (size_t i = done_at_kill + 4; i < outcomes->size(); ++i) {
    EXPECT_EQ((*outcomes)[i].reply.source, edge_api::AnswerSource::kDegraded) << i;
  }
}

TEST_F(SplitInferenceTest, MalformedInputGetsErrorRepliesAndServiceContinues) {
  auto cloud = StartCloud();
  ASSERT_TRUE(cloud.ok()) << cloud.status().ToString();
  TransportContext context;
  // Straight at the cloud: garbage, wrong version, wrong shape, unknown model.
  auto dealer = DealerClient::Connect(context, cloud->endpoint);
  ASSERT_TRUE(dealer.ok());
  auto roundtrip = [&](const std::string& bytes) -> wire::InferReply {
    EXPECT_TRUE((*dealer)->Send(bytes, 2000).ok());
    auto msg = (*dealer)->Receive(5000);
    EXPECT_TRUE(msg.ok() && msg->has_value()) << "the cloud did not answer";
    if (!msg.ok() || !msg->has_value()) return {};
    auto reply = wire::DecodeInferReply(**msg);
    EXPECT_TRUE(reply.ok()) << reply.status().ToString();
    return reply.ok() ? *reply : wire::InferReply{};
  };
  EXPECT_EQ(roundtrip("\x01\x02garbage").status, wire::ReplyStatus::kError);

  wire::InferRequest request;
  request.request_id = 7;
  request.model = "no-such-model";
  float values[2 * 7 * 7] = {};
  request.features = *wire::EncodeTensor(values, {1, 2, 7, 7}, wire::DType::kUInt4, 1);
  wire::InferReply unknown = roundtrip(wire::EncodeInferRequest(request));
  EXPECT_EQ(unknown.status, wire::ReplyStatus::kError);
  EXPECT_EQ(unknown.request_id, 7u);
  EXPECT_NE(unknown.error.find("not served"), std::string::npos) << unknown.error;

  request.protocol_version = wire::kProtocolVersion + 1;
  request.request_id = 8;
  wire::InferReply version = roundtrip(wire::EncodeInferRequest(request));
  EXPECT_EQ(version.status, wire::ReplyStatus::kError);
  EXPECT_EQ(version.request_id, 8u);

  // The service keeps serving well-formed requests afterwards; the edge rejects bad images.
  auto edge = StartEdge(cloud->endpoint, 2000);
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  auto client = EdgeClient::Connect(context, edge->endpoint);
  ASSERT_TRUE(client.ok());
  auto bad = Requests(1, -1.0f, 99);
  bad[0].width = 27;  // pixel count no longer matches: rejected by the decoder
  // A well-formed request whose JPEG does not decode: refused by the edge with the reason.
  // (A raw image of another size is no longer an error: it is resized to the bundle's input.)
  auto wrong_size = Requests(1, -1.0f, 100);
  wrong_size[0].kind = edge_api::ImageKind::kJpeg;
  wrong_size[0].jpeg = "\xff\xd8\xff truncated";
  auto good = Requests(5, 1.0f, 101);
  std::vector<edge_api::ClassifyRequest> all = {bad[0], wrong_size[0]};
  all.insert(all.end(), good.begin(), good.end());
  auto outcomes = (*client)->Run(all, 1, 5000);
  ASSERT_TRUE(outcomes.ok());
  ASSERT_TRUE((*outcomes)[0].answered);
  EXPECT_EQ((*outcomes)[0].reply.source, edge_api::AnswerSource::kError);
  ASSERT_TRUE((*outcomes)[1].answered);
  EXPECT_EQ((*outcomes)[1].reply.source, edge_api::AnswerSource::kError);
  EXPECT_NE((*outcomes)[1].reply.error.find("JPEG"), std::string::npos)
      << (*outcomes)[1].reply.error;
  for (size_t i = 2; i < outcomes->size(); ++i) {
    ASSERT_TRUE((*outcomes)[i].answered);
    EXPECT_EQ((*outcomes)[i].reply.source, edge_api::AnswerSource::kCloud);
  }
  EXPECT_TRUE(cloud->process->Running());
  EXPECT_TRUE(edge->process->Running());
}

TEST_F(SplitInferenceTest, OneShotClassifyOverIdx) {
  const fs::path out = dir_ / "classify.out";
  auto proc = ChildProcess::Spawn({(kBin / "cleave-edge").string(), "classify", "--edge.bundle",
                                   bundle_.string(), "--edge.cloud", "", "--limit", "20", "--json",
                                   "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"},
                                  out.string());
  ASSERT_TRUE(proc.ok());
  auto code = (*proc)->Wait(120000);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
  std::ifstream in(out);
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) lines += line.rfind("{\"", 0) == 0;
  EXPECT_EQ(lines, 20);

  auto missing = ChildProcess::Spawn({(kBin / "cleave-edge").string(), "classify", "--edge.bundle",
                                      (dir_ / "nope").string(), "x.png"},
                                     (dir_ / "missing.out").string());
  ASSERT_TRUE(missing.ok());
  auto missing_code = (*missing)->Wait(60000);
  ASSERT_TRUE(missing_code.ok());
  EXPECT_NE(*missing_code, 0);
}

// `cleave bench split` reading its test split an image at a time (--memory-mb 0) measures
// the same accuracies and bytes as with the split in memory.
TEST_F(SplitInferenceTest, BenchSplitStreamsItsTestSplitWithTheSameFigures) {
  std::vector<nlohmann::json> reports;
  for (const char* memory_mb : {"4096", "0"}) {
    const fs::path out = dir_ / (std::string("split-") + memory_mb + ".json");
    auto bench = ChildProcess::Spawn(
        {(kBin / "cleave").string(), "bench", "split", "--bundle", bundle_.string(), "--json",
         out.string(), "--limit", "60", "--timing-iterations", "2", "--memory-mb", memory_mb},
        (dir_ / "split.log").string());
    ASSERT_TRUE(bench.ok()) << bench.status().ToString();
    auto code = (*bench)->Wait(300000);
    ASSERT_TRUE(code.ok()) << code.status().ToString();
    ASSERT_EQ(*code, 0) << ReadFileToString((dir_ / "split.log").string()).value_or("(no log)");
    auto text = ReadFileToString(out.string());
    ASSERT_TRUE(text.ok()) << text.status().ToString();
    reports.push_back(nlohmann::json::parse(*text));
  }
  const nlohmann::json& memory = reports[0]["configs"];
  const nlohmann::json& streamed = reports[1]["configs"];
  ASSERT_EQ(memory.size(), streamed.size());
  for (const auto& [name, config] : memory.items()) {
    EXPECT_EQ(config["accuracy"], streamed[name]["accuracy"]) << name;
    EXPECT_EQ(config["bytes_per_request_mean"], streamed[name]["bytes_per_request_mean"]) << name;
    EXPECT_EQ(config["requests"], streamed[name]["requests"]) << name;
  }
}

// `cleave bench serve` against a real cleave-cloud: short phases, a queue small enough that
// the 3x overload phase must refuse requests. Every request is answered (served or
// `overloaded`), the batcher forms batches, and bad arguments are refused with a message.
TEST_F(SplitInferenceTest, BenchServeAnswersEveryRequestUnderOverload) {
  const fs::path out = dir_ / "serve.json";
  auto bench = ChildProcess::Spawn({(kBin / "cleave").string(),
                                    "bench",
                                    "serve",
                                    "--bundle",
                                    bundle_.string(),
                                    "--json",
                                    out.string(),
                                    "--markdown",
                                    (dir_ / "serve.md").string(),
                                    "--clients",
                                    "1,8",
                                    "--seconds",
                                    "0.5",
                                    "--overload-seconds",
                                    "1",
                                    "--max-batch",
                                    "8",
                                    "--max-queue",
                                    "8",
                                    "--pool",
                                    "64"},
                                   (dir_ / "serve.log").string());
  ASSERT_TRUE(bench.ok()) << bench.status().ToString();
  auto code = (*bench)->Wait(300000);
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  ASSERT_EQ(*code, 0) << ReadFileToString((dir_ / "serve.log").string()).value_or("(no log)");
  auto text = ReadFileToString(out.string());
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  const nlohmann::json report = nlohmann::json::parse(*text);
  for (const char* key : {"batched_rps", "unbatched_rps", "compute_ceiling_rps", "unloaded_p99_ms",
                          "peak_rss_bytes"}) {
    ASSERT_TRUE(report.contains(key)) << key;
    EXPECT_GT(report[key].get<double>(), 0.0) << key;
  }
  EXPECT_TRUE(report["tail_precision"] == "fp32" || report["tail_precision"] == "bf16");
  EXPECT_GT(report["overload"]["server_p99_ms"].get<double>(), 0.0);
  ASSERT_EQ(report["batched"].size(), 2u);
  ASSERT_EQ(report["unbatched"].size(), 2u);
  EXPECT_DOUBLE_EQ(report["unbatched"][1]["mean_batch"].get<double>(), 1.0);
  // 8 closed-loop clients against max batch 8: requests are computed together.
  EXPECT_GT(report["batched"][1]["mean_batch"].get<double>(), 1.5);
  EXPECT_EQ(report["batched"][1]["error"].get<int>(), 0);
  const nlohmann::json& overload = report["overload"];
  EXPECT_GT(overload["sent"].get<int>(), 0);
  EXPECT_EQ(overload["unanswered"].get<int>(), 0);
  EXPECT_EQ(overload["send_failed"].get<int>(), 0);
  EXPECT_DOUBLE_EQ(overload["answered_fraction"].get<double>(), 1.0);
  EXPECT_GT(overload["overloaded"].get<int>(), 0) << "3x capacity into a queue of 8";
  EXPECT_GT(overload["ok"].get<int>(), 0);
  EXPECT_GT(overload["rejected_fraction"].get<double>(), 0.0);
  EXPECT_TRUE(report["targets"]["overload_every_request_answered"].get<bool>());
  EXPECT_TRUE(fs::exists(dir_ / "serve.md"));

  // Rejections: max batch 1 is the baseline the benchmark runs itself; a missing bundle.
  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{"--bundle", bundle_.string(), "--max-batch", "1"},
        std::vector<std::string>{"--bundle", bundle_.string(), "--clients", "0"},
        std::vector<std::string>{"--bundle", bundle_.string(), "--tail-precision", "fp16"},
        std::vector<std::string>{"--bundle", (dir_ / "nope").string()}}) {
    std::vector<std::string> args = {(kBin / "cleave").string(), "bench", "serve"};
    args.insert(args.end(), bad.begin(), bad.end());
    const fs::path log = dir_ / "bad.log";
    auto proc = ChildProcess::Spawn(args, log.string());
    ASSERT_TRUE(proc.ok());
    auto bad_code = (*proc)->Wait(120000);
    ASSERT_TRUE(bad_code.ok());
    EXPECT_NE(*bad_code, 0) << bad.back();
    EXPECT_NE(ReadFileToString(log.string())->find("cleave bench serve"), std::string::npos)
        << bad.back();
  }
}

}  // namespace
}  // namespace cleave::edge
