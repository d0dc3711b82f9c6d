// A user's TorchScript model, imported with the real `cleave import` on an RGB image-folder
// dataset, then served by real cleave-cloud and cleave-edge processes on loopback: RGB, PNG
// and JPEG requests of another size than the model's are converted by the edge, answered at
// the edge exit or by the cloud tail, and named with the dataset's class folders.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "common/child_process.h"
#include "common/file_util.h"
#include "common/jpeg_image.h"
#include "common/png_image.h"
#include "common/transport.h"
#include "edge/edge_client.h"
#include "split/bundle.h"
#include "testing/bin_dir.h"
#include "testing/tiny_torchscript.h"
#include "tools/daemon_launcher.h"

namespace cleave {
namespace {

namespace fs = std::filesystem;
using edge::EdgeClient;
using tools::LaunchDaemon;
using tools::LaunchedDaemon;

constexpr int kServeSide = 12;  // the dataset's images; the model takes 8x8

// An RGB image bright on the left half (class "west", label 1 in sorted folder order, the
// tiny model's class 1) or on the right half ("east", label 0).
PixelImage SideImage(bool left, int side, int variant) {
  PixelImage image;
  image.width = image.height = static_cast<uint32_t>(side);
  image.channels = 3;
  for (int y = 0; y < side; ++y) {
    for (int x = 0; x < side; ++x) {
      const bool bright = (x < side / 2) == left;
      for (int c = 0; c < 3; ++c) {
        image.pixels.push_back(
            static_cast<uint8_t>((bright ? 170 : 40) + (x * 7 + y * 3 + c * 5 + variant) % 40));
      }
    }
  }
  return image;
}

class ImportServeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cleave_test_import_serve_" + UniqueSuffix());
    for (const char* split : {"train", "test"}) {
      for (const char* cls : {"east", "west"}) {
        const fs::path folder = dir_ / "data" / split / cls;
        fs::create_directories(folder);
        const int count = std::string(split) == "train" ? 150 : 20;
        for (int i = 0; i < count; ++i) {
          const PixelImage image = SideImage(std::string(cls) == "west", kServeSide, i);
          ASSERT_TRUE(
              WriteFileAtomic(folder / (std::to_string(i) + ".png"), *EncodePngPixels(image)).ok());
        }
      }
    }
    cleave::testing::TinyChainModel(3, /*designed=*/true).save((dir_ / "model.pt").string());
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Runs `cleave import` as a process; returns its exit code (the log is in dir_).
  int Import(const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {(kBin / "cleave").string(),
                                     "import",
                                     "--torchscript",
                                     (dir_ / "model.pt").string(),
                                     "--data",
                                     "folder:" + (dir_ / "data").string(),
                                     "--image-size",
                                     "8",
                                     "--quick",
                                     "--train-limit",
                                     "0",
                                     "--held-out",
                                     "60",
                                     "--test-limit",
                                     "0",
                                     "--batch-size",
                                     "32",
                                     "--exit-hidden",
                                     "8",
                                     "--epochs-distill",
                                     "3",
                                     "--epochs-finetune",
                                     "3",
                                     "--epochs-exit",
                                     "3",
                                     "--threads",
                                     "1",
                                     "--quiet"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto child = ChildProcess::Spawn(argv, (dir_ / "import.log").string());
    EXPECT_TRUE(child.ok());
    if (!child.ok()) return -1;
    Result<int> code = (*child)->Wait(300000);
    return code.ok() ? *code : -1;
  }
  std::string ImportLog() { return ReadFileToString(dir_ / "import.log").value_or(""); }

  fs::path dir_;
};

TEST_F(ImportServeTest, ImportedRgbModelIsServedByRealDaemons) {
  ASSERT_EQ(Import({"--split-after", "relu2", "--out", (dir_ / "bundle").string()}), 0)
      << ImportLog();
  const std::string bundle = (dir_ / "bundle").string();
  auto cloud = LaunchDaemon(
      kBin / "cleave-cloud",
      {"--cloud.bundle", bundle, "--cloud.listen", "tcp://127.0.0.1:0", "--cloud.threads", "1"},
      "cloud.ready_file", dir_, "cloud");
  ASSERT_TRUE(cloud.ok()) << cloud.status().ToString();
  auto edge = LaunchDaemon(kBin / "cleave-edge",
                           {"serve", "--edge.bundle", bundle, "--edge.listen", "tcp://127.0.0.1:0",
                            "--edge.cloud", cloud->endpoint, "--edge.deadline_ms", "5000"},
                           "edge.ready_file", dir_, "edge");
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  TransportContext context;
  auto client = EdgeClient::Connect(context, edge->endpoint);
  ASSERT_TRUE(client.ok());

  // 12x12 RGB raw, PNG and JPEG, each left and right; calibrated threshold, and 1.0 to force
  // the cloud tail.
  std::vector<edge_api::ClassifyRequest> requests;
  std::vector<std::string> expected;
  uint64_t id = 1;
  for (float threshold : {-1.0f, 1.0f}) {
    for (int kind = 0; kind < 3; ++kind) {
      for (bool left : {true, false}) {
        const PixelImage image = SideImage(left, kServeSide, 3);
        edge_api::ClassifyRequest r;
        r.request_id = id++;
        r.exit_threshold = threshold;
        if (kind == 0) {
          r.kind = edge_api::ImageKind::kRgb8;
          r.width = r.height = kServeSide;
          r.pixels.assign(image.pixels.begin(), image.pixels.end());
        } else if (kind == 1) {
          r.kind = edge_api::ImageKind::kPng;
          r.png = *EncodePngPixels(image);
        } else {
          r.kind = edge_api::ImageKind::kJpeg;
          r.jpeg = *EncodeJpegPixels(image, 95);
        }
        requests.push_back(r);
        expected.push_back(left ? "west" : "east");
      }
    }
  }
  auto outcomes = (*client)->Run(requests, 4, 10000);
  ASSERT_TRUE(outcomes.ok()) << outcomes.status().ToString();
  std::set<edge_api::AnswerSource> sources;
  for (size_t i = 0; i < outcomes->size(); ++i) {
    const auto& o = (*outcomes)[i];
    ASSERT_TRUE(o.answered) << i;
    EXPECT_NE(o.reply.source, edge_api::AnswerSource::kError) << o.reply.error;
    EXPECT_NE(o.reply.source, edge_api::AnswerSource::kDegraded) << o.reply.error;
    EXPECT_EQ(o.reply.class_name, expected[i]) << "request " << i;
    sources.insert(o.reply.source);
    if (requests[i].exit_threshold == 1.0f) {
      EXPECT_EQ(o.reply.source, edge_api::AnswerSource::kCloud) << i;
      EXPECT_GT(o.reply.wire_bytes, 0u);
    }
  }
  EXPECT_TRUE(sources.count(edge_api::AnswerSource::kCloud));

  // An undecodable JPEG is refused with the reason; serving continues.
  edge_api::ClassifyRequest broken;
  broken.request_id = 100;
  broken.kind = edge_api::ImageKind::kJpeg;
  broken.jpeg = "\xff\xd8\xff broken";
  auto refused = (*client)->Run({broken, requests[0]}, 1, 10000);
  ASSERT_TRUE(refused.ok());
  EXPECT_EQ((*refused)[0].reply.source, edge_api::AnswerSource::kError);
  EXPECT_NE((*refused)[0].reply.error.find("JPEG"), std::string::npos);
  EXPECT_EQ((*refused)[1].reply.class_name, "west");
  (void)edge->process->Stop(3000);
  (void)cloud->process->Stop(3000);
}

// Two federated rounds of the imported model with a real aggregator and two real edges:
// both sides derive the same layout from the bundle (head, encoder, exit, decoder, tail),
// the edges train on their partitions of the bundle's own dataset, and the aggregator
// publishes imported bundles with a re-quantized int8 head.
TEST_F(ImportServeTest, ImportedModelTrainsInFederatedRoundsWithRealProcesses) {
  ASSERT_EQ(Import({"--split-after", "relu2", "--out", (dir_ / "bundle").string()}), 0)
      << ImportLog();
  const std::string bundle = (dir_ / "bundle").string();
  auto aggregator = LaunchDaemon(kBin / "cleave-aggregator",
                                 {"--aggregator.bundle",
                                  bundle,
                                  "--aggregator.listen",
                                  "tcp://127.0.0.1:0",
                                  "--aggregator.rounds",
                                  "2",
                                  "--aggregator.wait_for_clients",
                                  "2",
                                  "--aggregator.poll_interval_ms",
                                  "100",
                                  "--aggregator.summary_file",
                                  (dir_ / "summary.json").string(),
                                  "--aggregator.publish_dir",
                                  (dir_ / "published").string(),
                                  "--aggregator.eval_data",
                                  "folder:" + (dir_ / "data").string(),
                                  "--round.fraction",
                                  "1.0",
                                  "--round.min_clients",
                                  "2",
                                  "--round.quorum",
                                  "2",
                                  "--round.deadline_seconds",
                                  "120",
                                  "--round.trainable",
                                  "head_and_exits",
                                  "--fit.local_epochs",
                                  "1",
                                  "--fit.batch_size",
                                  "16",
                                  "--fit.lr",
                                  "0.01"},
                                 "aggregator.ready_file", dir_, "aggregator");
  ASSERT_TRUE(aggregator.ok()) << aggregator.status().ToString();
  std::vector<LaunchedDaemon> edges;
  for (int i = 0; i < 2; ++i) {
    auto edge = LaunchDaemon(
        kBin / "cleave-edge",
        {"serve", "--edge.bundle", bundle, "--edge.listen", "tcp://127.0.0.1:0", "--edge.cloud",
         "tcp://127.0.0.1:1", "--edge.aggregator", aggregator->endpoint, "--edge.client_id",
         "edge-" + std::to_string(i), "--edge.fl_partitions", "2", "--edge.fl_partition_index",
         std::to_string(i), "--edge.fl_partition", "iid"},
        "edge.ready_file", dir_, "edge" + std::to_string(i));
    ASSERT_TRUE(edge.ok()) << edge.status().ToString();
    edges.push_back(std::move(*edge));
  }
  auto code = aggregator->process->Wait(240000);
  ASSERT_TRUE(code.ok()) << "aggregator did not finish: " << code.status().ToString();
  EXPECT_EQ(*code, 0) << ReadFileToString(aggregator->log_path).value_or("");
  auto text = ReadFileToString(dir_ / "summary.json");
  ASSERT_TRUE(text.ok());
  const nlohmann::json summary = nlohmann::json::parse(*text);
  ASSERT_EQ(summary.at("rounds_completed").get<int>(), 2) << summary.dump();
  for (const nlohmann::json& round : summary.at("rounds")) {
    EXPECT_TRUE(round.at("applied").get<bool>()) << round.dump();
    EXPECT_EQ(round.at("succeeded").get<int>(), 2) << round.dump();
    // The designed model solves the task; federated rounds keep it solving it.
    EXPECT_GE(round.at("accuracy").get<double>(), 0.9) << round.dump();
  }
  // The published bundle is an imported bundle with the round's weights and an int8 head.
  auto published = Bundle::Open(dir_ / "published" / "round-2");
  ASSERT_TRUE(published.ok()) << published.status().ToString();
  EXPECT_EQ(published->kind(), "torchscript-split");
  EXPECT_TRUE(published->model().at("int8").is_object()) << published->model().dump();
  EXPECT_EQ(published->model().at("training").at("federated_round").get<int>(), 2);
  // The edges kept serving while they trained.
  for (auto& edge : edges) {
    EXPECT_TRUE(edge.process->Running());
    (void)edge.process->Stop(3000);
    // Both sides agree on which entries a head-and-exits round trains.
    const std::string log = ReadFileToString(edge.log_path).value_or("");
    EXPECT_EQ(log.find("trainable mask differs"), std::string::npos) << log;
    EXPECT_NE(log.find("federated learning with"), std::string::npos) << log;
  }
}

TEST_F(ImportServeTest, ImportRefusesAWrongCutWithTheValidNames) {
  EXPECT_NE(Import({"--split-after", "fc1", "--out", (dir_ / "bundle").string()}), 0);
  const std::string log = ImportLog();
  EXPECT_NE(log.find("cleave import:"), std::string::npos) << log;
  EXPECT_NE(log.find("relu2"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(dir_ / "bundle"));
}

}  // namespace
}  // namespace cleave
