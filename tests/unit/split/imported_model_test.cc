// `cleave import` on a tiny TorchScript model built in C++ (no python needed) and a tiny IDX
// dataset written by the test: the pipeline, the bundle, and the runtime objects the
// daemons use.
#include "split/imported_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "split/import_pipeline.h"
#include "split/split_runtime.h"
#include "testing/idx_writer.h"
#include "testing/tiny_torchscript.h"

namespace cleave::split {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr int kImpSide = cleave::testing::kTinyChainSide;

// An IDX split: class 1 images are bright on the left half, class 0 on the right.
void WriteImpIdx(const fs::path& dir, const std::string& prefix, int count, uint32_t seed) {
  uint32_t state = seed;
  const auto pixel = [&state](int i, int p) {
    state = state * 1664525u + 1013904223u;
    const bool bright = (p % kImpSide < kImpSide / 2) == (i % 2 == 1);
    return static_cast<uint8_t>((bright ? 150 : 30) + (state >> 26));
  };
  ASSERT_TRUE(cleave::testing::WriteIdxPair(dir, prefix, count, kImpSide, pixel, [](int i) {
                return static_cast<uint8_t>(i % 2);
              }).ok());
}

class ImportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cleave_test_import_" + UniqueSuffix());
    fs::create_directories(dir_ / "data");
    WriteImpIdx(dir_ / "data", "train", 600, 1);
    WriteImpIdx(dir_ / "data", "t10k", 100, 2);
    cleave::testing::TinyChainModel(1).save((dir_ / "model.pt").string());
    options_ = ImportOptions::Quick();
    options_.torchscript = (dir_ / "model.pt").string();
    options_.split_after = "relu2";
    options_.data = "idx:" + (dir_ / "data").string();
    options_.train_limit = 0;
    options_.held_out = 100;
    options_.test_limit = 0;
    options_.exit_hidden = 8;
    options_.bottleneck_channels = 2;
    options_.batch_size = 32;
    options_.progress_out = nullptr;
    options_.threads = 1;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  fs::path dir_;
  ImportOptions options_;
};

TEST_F(ImportTest, WritesABundleTheRuntimeServes) {
  Result<ImportReport> report = ImportTorchScript(options_, dir_ / "bundle");
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->stages.size(), 3u);
  EXPECT_EQ(report->evaluation["test"]["rows"], 100);
  EXPECT_GT(report->import_seconds, 0.0);

  Result<Bundle> bundle = Bundle::Open(dir_ / "bundle");
  ASSERT_TRUE(bundle.ok()) << bundle.status().ToString();
  EXPECT_EQ(bundle->kind(), kTorchScriptSplitKind);
  Result<ImportedSplitModel> read = ReadImportedBundle(*bundle, ImportedBundleParts());
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(read->head_output_shape, (std::vector<int64_t>{4, 8, 8}));
  EXPECT_EQ(read->FeatureShape(), (std::vector<uint32_t>{2, 8, 8}));  // stride 1 below 16x16
  EXPECT_EQ(read->input.class_names, (std::vector<std::string>{"0", "1"}));
  EXPECT_EQ(read->source["cut"], "relu2");

  EdgeModel::Options fp32;
  fp32.int8 = false;
  auto edge = EdgeModel::Load(*bundle, fp32);
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  EXPECT_EQ((*edge)->engine(), "fp32");
  // The int8 head (the default): every op of this head has an int8 kernel.
  auto edge_int8 = EdgeModel::Load(*bundle, EdgeModel::Options());
  ASSERT_TRUE(edge_int8.ok()) << edge_int8.status().ToString();
  EXPECT_NE((*edge_int8)->engine(), "fp32");
  EXPECT_EQ(report->int8["int8_ops_fraction"].get<double>(), 1.0) << report->int8.dump();
  auto int8_out = (*edge_int8)->Run(torch::rand({2, 1, kImpSide, kImpSide}));
  ASSERT_TRUE(int8_out.ok()) << int8_out.status().ToString();
  EXPECT_EQ(int8_out->features.sizes(), (std::vector<int64_t>{2, 2, 8, 8}));
  EXPECT_EQ((*edge)->num_exits(), 1);
  EXPECT_EQ((*edge)->feature_shape(), (std::vector<uint32_t>{2, 8, 8}));
  auto cloud = CloudModel::Load(*bundle);
  ASSERT_TRUE(cloud.ok()) << cloud.status().ToString();
  auto local = LocalModel::Load(*bundle);
  ASSERT_TRUE(local.ok()) << local.status().ToString();

  // Head -> (unquantized) features -> tail equals the whole split model.
  const torch::Tensor images = torch::rand({3, 1, kImpSide, kImpSide});
  auto head = (*edge)->Run(images);
  ASSERT_TRUE(head.ok()) << head.status().ToString();
  ASSERT_EQ(head->exit_logits.size(), 1u);
  EXPECT_EQ(head->exit_logits[0].sizes(), (std::vector<int64_t>{3, 2}));
  auto tail = (*cloud)->RunTail(head->features);
  ASSERT_TRUE(tail.ok()) << tail.status().ToString();
  auto whole = (*local)->Run(images);
  ASSERT_TRUE(whole.ok());
  EXPECT_TRUE(torch::allclose(*tail, *whole, 1e-5, 1e-6));
  auto full = (*cloud)->RunFull(images);
  ASSERT_TRUE(full.ok());
  EXPECT_TRUE(torch::allclose(*full, *whole, 1e-5, 1e-6));

  // Inputs are checked before they reach the model.
  EXPECT_EQ((*edge)->Run(torch::rand({1, 3, kImpSide, kImpSide})).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ((*cloud)->RunTail(torch::rand({1, 3, 4, 4})).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadBundleInput(*bundle)->class_names.size(), 2u);
}

// A dataset read a batch at a time (--memory-mb 0) gives the same import as one held in
// memory: the same batches in the same order, so the same weights and figures.
TEST_F(ImportTest, StreamedDataImportsExactlyAsInMemoryData) {
  Result<ImportReport> memory = ImportTorchScript(options_, dir_ / "memory");
  ASSERT_TRUE(memory.ok()) << memory.status().ToString();
  ImportOptions streamed_options = options_;
  streamed_options.memory_mb = 0;
  Result<ImportReport> streamed = ImportTorchScript(streamed_options, dir_ / "streamed");
  ASSERT_TRUE(streamed.ok()) << streamed.status().ToString();
  EXPECT_EQ(streamed->evaluation.dump(), memory->evaluation.dump());
  ASSERT_EQ(streamed->stages.size(), memory->stages.size());
  for (size_t i = 0; i < memory->stages.size(); ++i) {
    EXPECT_EQ(streamed->stages[i].final_loss, memory->stages[i].final_loss) << i;
  }
  ImportOptions bad = options_;
  bad.memory_mb = -1;
  EXPECT_EQ(ImportTorchScript(bad, dir_ / "bad").status().code(), StatusCode::kInvalidArgument);
}

TEST_F(ImportTest, TheSplitPathKeepsAGoodModelsAccuracy) {
  cleave::testing::TinyChainModel(1, /*designed=*/true).save((dir_ / "good.pt").string());
  options_.torchscript = (dir_ / "good.pt").string();
  options_.epochs_distill = options_.epochs_finetune = options_.epochs_exit = 3;
  Result<ImportReport> report = ImportTorchScript(options_, dir_ / "bundle");
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  const nlohmann::json& test = report->evaluation["test"];
  EXPECT_GE(test["imported"].get<double>(), 0.99) << test.dump();
  // The bottleneck (2 channels, 4x4, u4) and the fine-tuned tail keep the answer.
  EXPECT_GE(test["split_no_exit"].get<double>(), 0.95) << report->ToJson().dump(2);
  EXPECT_GE(test["split_exit"].get<double>(), 0.95) << test.dump();
}

TEST_F(ImportTest, RefusesCutsWithoutAFeatureMapAndUnknownNames) {
  options_.split_after = "flat";
  Result<ImportReport> flat = ImportTorchScript(options_, dir_ / "bundle");
  ASSERT_FALSE(flat.ok());
  EXPECT_EQ(flat.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(flat.status().message(), HasSubstr("feature map"));
  options_.split_after = "nowhere";
  Result<ImportReport> unknown = ImportTorchScript(options_, dir_ / "bundle");
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.status().message(), HasSubstr("relu2"));  // lists the valid cuts
  EXPECT_FALSE(fs::exists(dir_ / "bundle"));
}

TEST_F(ImportTest, RefusesFilesThatAreNotTorchScriptAndBadOptions) {
  ASSERT_TRUE(WriteFileAtomic(dir_ / "junk.pt", "not a zip").ok());
  options_.torchscript = (dir_ / "junk.pt").string();
  EXPECT_EQ(ImportTorchScript(options_, dir_ / "bundle").status().code(),
            StatusCode::kInvalidArgument);
  ImportOptions bad = options_;
  bad.bottleneck_channels = 0;
  EXPECT_THAT(bad.Validate().message(), HasSubstr("--bottleneck-channels"));
  bad = options_;
  bad.split_after.clear();
  EXPECT_THAT(bad.Validate().message(), HasSubstr("--split-after"));
  bad = options_;
  bad.std = {0.0f};
  EXPECT_THAT(bad.Validate().message(), HasSubstr("--std"));
  bad = options_;
  bad.mean = {0.1f, 0.2f};  // two values for a one-channel dataset
  bad.torchscript = (dir_ / "model.pt").string();
  EXPECT_THAT(ImportTorchScript(bad, dir_ / "bundle").status().message(), HasSubstr("--mean"));
}

TEST_F(ImportTest, ReadRefusesAManifestThatDoesNotHoldTogether) {
  ASSERT_TRUE(ImportTorchScript(options_, dir_ / "bundle").ok());
  Result<Bundle> bundle = Bundle::Open(dir_ / "bundle");
  ASSERT_TRUE(bundle.ok());
  Result<ImportedSplitModel> model = ReadImportedBundle(*bundle, ImportedBundleParts());
  ASSERT_TRUE(model.ok());
  // Rewrite the bundle with a wire that does not fit the features, through the writer.
  ImportedSplitModel broken = *model;
  broken.wire_quant.scale.push_back(1.0f);
  EXPECT_EQ(WriteImportedBundle(dir_ / "broken", broken).code(), StatusCode::kInvalidArgument);
  // A vision-split reader refuses the kind, and this reader refuses a vision-split bundle's.
  auto vision = ReadVisionBundle(*bundle, VisionBundleParts());
  EXPECT_EQ(vision.status().code(), StatusCode::kInvalidArgument);
  ImportedBundleParts none;
  none.head = none.edge = none.tail = none.cloud = false;
  EXPECT_TRUE(ReadImportedBundle(*bundle, none).ok());
}

}  // namespace
}  // namespace cleave::split
