// The quick training pipeline end to end on a synthetic dataset with the tiny model: the
// bundle it writes loads in EdgeModel / CloudModel / LocalModel, and edge -> wire -> cloud
// reproduces the local model.
#include "split/trainer.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "split/post_training.h"
#include "split/split_runtime.h"
#include "split/vision_bundle.h"
#include "split/wire_quant.h"
#include "testing/idx_writer.h"
#include "testing/trained_bundle.h"

namespace cleave::split {
namespace {

namespace fs = std::filesystem;
using testing::Synthetic;

class TrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::temp_directory_path() /
                        ("cleave_trainer_test_" + std::to_string(::getpid())));
    fs::remove_all(*dir_);
    auto report = testing::TrainTinySplitBundle(*dir_ / "bundle");
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    report_ = new nlohmann::json(report->ToJson());
  }
  static void TearDownTestSuite() {
    if (dir_ != nullptr) fs::remove_all(*dir_);
    delete dir_;
    delete report_;
  }
  static fs::path BundleDir() { return *dir_ / "bundle"; }

  static fs::path* dir_;
  static nlohmann::json* report_;
};

fs::path* TrainerTest::dir_ = nullptr;
nlohmann::json* TrainerTest::report_ = nullptr;

TEST_F(TrainerTest, ReportHasEveryFigureAndTheModelLearned) {
  ASSERT_NE(report_, nullptr);
  const auto& test = report_->at("test");
  for (const char* key :
       {"teacher", "local_fp32", "split_no_exit", "split_exit", "exit_fraction"}) {
    ASSERT_TRUE(test.contains(key)) << key;
  }
  // Chance is 0.1; a few epochs on the brightness classes get well above it.
  EXPECT_GT(test.at("teacher").get<double>(), 0.4);
  EXPECT_GT(test.at("local_fp32").get<double>(), 0.4);
  EXPECT_GE(test.at("exit_fraction").get<double>(), 0.0);
  EXPECT_LE(test.at("exit_fraction").get<double>(), 1.0);
  EXPECT_EQ(report_->at("stages").size(), 5u);  // teacher, 3 stages, post-training
}

TEST_F(TrainerTest, BundleManifestDescribesTheDeployment) {
  auto bundle = Bundle::Open(BundleDir());
  ASSERT_TRUE(bundle.ok()) << bundle.status().ToString();
  EXPECT_EQ(bundle->kind(), kVisionSplitKind);
  const auto& m = bundle->model();
  EXPECT_EQ(m.at("split_after"), VisionModelSpec::TinySplit().split_after);
  EXPECT_EQ(m.at("wire").at("dtype"), "u4");
  EXPECT_EQ(m.at("exit_policy").at("thresholds").size(), 1u);
  EXPECT_TRUE(m.at("int8").contains("engine_timings_ms"));
  for (const char* f : {kHeadFp32File, kExitsFp32File, kTailFp32File, kHeadInt8File}) {
    EXPECT_TRUE(bundle->HasFile(f)) << f;
  }
}

TEST_F(TrainerTest, EdgeWireCloudMatchesLocalModel) {
  auto bundle = Bundle::Open(BundleDir());
  ASSERT_TRUE(bundle.ok());
  auto local = LocalModel::Load(*bundle);
  auto cloud = CloudModel::Load(*bundle);
  auto edge32 = EdgeModel::Load(*bundle, {/*int8=*/false, "auto"});
  auto edge8 = EdgeModel::Load(*bundle, {/*int8=*/true, "reference"});
  ASSERT_TRUE(local.ok() && cloud.ok() && edge32.ok() && edge8.ok())
      << local.status().ToString() << cloud.status().ToString() << edge32.status().ToString()
      << edge8.status().ToString();
  EXPECT_EQ((*edge8)->feature_shape(), (std::vector<uint32_t>{2, 7, 7}));
  EXPECT_EQ((*cloud)->feature_shape(), (*edge8)->feature_shape());
  EXPECT_EQ((*edge8)->engine(), "reference");
  EXPECT_EQ((*edge32)->engine(), "fp32");

  const LabeledImages set = Synthetic(128, 3);
  auto reference = (*local)->Run(set.images);
  ASSERT_TRUE(reference.ok());
  auto full = (*cloud)->RunFull(set.images);
  ASSERT_TRUE(full.ok());
  EXPECT_TRUE(torch::equal(*full, *reference));

  // fp32 head, fp32 features: the tail's serving plan folds BatchNorm into the convs, which
  // changes only the rounding order (split/tail_plan.h): the same predictions, logits within
  // 1e-4 relative.
  auto head = (*edge32)->Run(set.images);
  ASSERT_TRUE(head.ok());
  ASSERT_EQ(head->exit_logits.size(), 1u);
  auto exact = (*cloud)->RunTail(head->features);
  ASSERT_TRUE(exact.ok());
  EXPECT_LE(((*exact - *reference).abs() / (reference->abs() + 1)).max().item<double>(), 1e-4);
  EXPECT_TRUE(torch::equal(exact->argmax(1), reference->argmax(1)));

  // Deployed path: int8 head -> u4 wire (real codec) -> tail. Tolerance: predictions agree on
  // at least 90% of the images and the logits' normalized MSE is below 0.1 (the u4 wire
  // alone contributes ~1e-2, int8 rounding of the head a few 1e-3).
  auto head8 = (*edge8)->Run(set.images);
  ASSERT_TRUE(head8.ok());
  auto wired = WireRoundTrip(head8->features, (*edge8)->wire_dtype(), &(*edge8)->wire_quant());
  ASSERT_TRUE(wired.ok());
  auto deployed = (*cloud)->RunTail(*wired);
  ASSERT_TRUE(deployed.ok());
  const double agree =
      deployed->argmax(1).eq(reference->argmax(1)).to(torch::kDouble).mean().item<double>();
  const double nmse =
      (*deployed - *reference).pow(2).sum().item<double>() / reference->pow(2).sum().item<double>();
  EXPECT_GE(agree, 0.9);
  EXPECT_LT(nmse, 0.1);
  // The exit policy decides on int8 exit logits.
  EXPECT_EQ((*edge8)->exit_policy().Decide(head8->exit_logits).size(), 128u);
}

TEST_F(TrainerTest, RuntimeRejectsMalformedInputs) {
  auto bundle = Bundle::Open(BundleDir());
  ASSERT_TRUE(bundle.ok());
  auto edge = EdgeModel::Load(*bundle, {true, "reference"});
  auto cloud = CloudModel::Load(*bundle);
  auto local = LocalModel::Load(*bundle);
  ASSERT_TRUE(edge.ok() && cloud.ok() && local.ok());
  const auto code = [](const Status& s) { return s.code(); };
  EXPECT_EQ(code((*edge)->Run(torch::rand({2, 1, 27, 28})).status()), StatusCode::kInvalidArgument);
  EXPECT_EQ(code((*edge)->Run(torch::rand({0, 1, 28, 28})).status()), StatusCode::kInvalidArgument);
  EXPECT_EQ(code((*edge)->Run(torch::zeros({2, 1, 28, 28}, torch::kUInt8)).status()),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code((*edge)->Run(torch::Tensor()).status()), StatusCode::kInvalidArgument);
  torch::Tensor nan = torch::rand({1, 1, 28, 28});
  nan[0][0][3][3] = NAN;
  EXPECT_EQ(code((*local)->Run(nan).status()), StatusCode::kInvalidArgument);
  EXPECT_EQ(code((*cloud)->RunTail(torch::rand({2, 3, 7, 7})).status()),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code((*cloud)->RunTail(torch::rand({2, 2, 7})).status()), StatusCode::kInvalidArgument);
  EXPECT_EQ(code((*cloud)->RunFull(torch::rand({2, 2, 28, 28})).status()),
            StatusCode::kInvalidArgument);
}

TEST_F(TrainerTest, TamperedHeadFileIsRefused) {
  const fs::path copy = *dir_ / "tampered";
  fs::remove_all(copy);
  fs::copy(BundleDir(), copy, fs::copy_options::recursive);
  for (const char* file : {kHeadInt8File, kHeadFp32File}) {
    const fs::path target = copy / file;
    std::string bytes;
    {
      std::ifstream in(target, std::ios::binary);
      bytes.assign(std::istreambuf_iterator<char>(in), {});
    }
    ASSERT_FALSE(bytes.empty());
    bytes[bytes.size() / 2] ^= 0x5a;
    // Tampered before Open: refused by the bundle's hash check.
    {
      auto opened = Bundle::Open(copy);
      ASSERT_TRUE(opened.ok());  // still pristine
      std::ofstream(target, std::ios::binary | std::ios::trunc) << bytes;
      // Tampered after Open: refused when the edge reads the file.
      auto edge = EdgeModel::Load(*opened, {std::string(file) == kHeadInt8File, "reference"});
      ASSERT_FALSE(edge.ok());
      EXPECT_EQ(edge.status().code(), StatusCode::kDataLoss) << edge.status().ToString();
    }
    auto reopened = Bundle::Open(copy);
    ASSERT_FALSE(reopened.ok());
    EXPECT_EQ(reopened.status().code(), StatusCode::kDataLoss);
    fs::remove_all(copy);
    fs::copy(BundleDir(), copy, fs::copy_options::recursive);
  }
}

TEST_F(TrainerTest, WrongKindAndInconsistentManifestAreRefused) {
  const fs::path other = *dir_ / "other";
  {
    BundleWriter writer(other);
    ASSERT_TRUE(writer.Commit("language-model", nlohmann::json::object()).ok());
  }
  auto bundle = Bundle::Open(other);
  ASSERT_TRUE(bundle.ok());
  auto cloud = CloudModel::Load(*bundle);
  ASSERT_FALSE(cloud.ok());
  EXPECT_EQ(cloud.status().code(), StatusCode::kInvalidArgument);

  // A manifest whose wire parameters do not fit the feature shape.
  auto good = Bundle::Open(BundleDir());
  ASSERT_TRUE(good.ok());
  VisionBundleParts parts;
  auto model = ReadVisionBundle(*good, parts);
  ASSERT_TRUE(model.ok());
  model->wire_quant.scale.push_back(1.0f);
  model->wire_quant.zero_point.push_back(0);
  EXPECT_EQ(WriteVisionBundle(*dir_ / "bad", *model).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(*dir_ / "bad"));
}

// What `cleave split` does: re-quantize the wire to u8 and re-calibrate for an offload cap.
TEST_F(TrainerTest, ResplitChangesWireDtypeAndTarget) {
  auto bundle = Bundle::Open(BundleDir());
  ASSERT_TRUE(bundle.ok());
  auto model = ReadVisionBundle(*bundle, VisionBundleParts{});
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  model->wire_dtype = wire::DType::kUInt8;
  FinalizeOptions options;
  options.refit_wire = true;
  options.int8_engine = "reference";
  options.int8_calibration_images = 128;
  options.target = {CalibrationTarget::Kind::kMaxOffloadFraction, 0.2};
  options.log = nullptr;
  const LabeledImages train = Synthetic(256, 6), held = Synthetic(200, 7);
  ASSERT_TRUE(FinalizeSplitModel(*model, train, held, LabeledImages{}, options).ok());
  const fs::path out = *dir_ / "resplit";
  ASSERT_TRUE(WriteVisionBundle(out, *model).ok());

  auto reopened = Bundle::Open(out);
  ASSERT_TRUE(reopened.ok());
  auto edge = EdgeModel::Load(*reopened, {true, "reference"});
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  EXPECT_EQ((*edge)->wire_dtype(), wire::DType::kUInt8);
  const auto& calibration = reopened->model().at("calibration");
  EXPECT_EQ(calibration.at("target"), "offload:0.2");
  EXPECT_GE(calibration.at("exit_fraction").get<double>(), 0.8);
  EXPECT_FALSE(reopened->model().at("evaluation").contains("test"));  // no test set given
  // The same held-out decisions follow from the stored policy.
  auto head = (*edge)->Run(held.images);
  ASSERT_TRUE(head.ok());
  const std::vector<int> decision = (*edge)->exit_policy().Decide(head->exit_logits);
  const double local =
      std::count_if(decision.begin(), decision.end(), [](int d) { return d >= 0; }) /
      static_cast<double>(decision.size());
  EXPECT_DOUBLE_EQ(local, calibration.at("exit_fraction").get<double>());
}

TEST(TrainerCancelTest, CancelledRunWritesNothing) {
  const fs::path out =
      fs::temp_directory_path() / ("cleave_trainer_cancel_" + std::to_string(::getpid()));
  fs::remove_all(out);
  TrainOptions options = TrainOptions::Quick();
  options.student_spec = VisionModelSpec::TinySplit();
  options.held_out = 64;
  options.train_limit = 0;
  options.progress_out = nullptr;
  options.threads = 1;
  int polls = 0;
  options.cancelled = [&polls] { return ++polls > 3; };
  auto report = TrainVisionSplit(options, {Synthetic(256, 4), Synthetic(64, 5), std::nullopt}, out);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(report.status().message().find("interrupted"), std::string::npos);
  EXPECT_FALSE(fs::exists(out));
}

// An IDX dataset of `count` 28x28 images, label i % 10, brightness in proportion to it.
void WriteTrainerIdx(const fs::path& dir, const std::string& prefix, int count) {
  ASSERT_TRUE(
      cleave::testing::WriteIdxPair(
          dir, prefix, count, 28,
          [](int i, int p) { return static_cast<uint8_t>((i % 10) * 20 + (p * 7 + i * 3) % 40); },
          [](int i) { return static_cast<uint8_t>(i % 10); })
          .ok());
}

// `cleave train` on a dataset read a batch at a time (memory_mb 0) trains exactly what it
// trains on the same dataset held in memory.
TEST(TrainerStreamTest, StreamedDataTrainsExactlyAsInMemoryData) {
  const fs::path dir =
      fs::temp_directory_path() / ("cleave_trainer_stream_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "data");
  WriteTrainerIdx(dir / "data", "train", 640);
  WriteTrainerIdx(dir / "data", "t10k", 100);
  TrainOptions options = TrainOptions::Quick();
  options.student_spec = VisionModelSpec::TinySplit();
  options.data = "idx:" + (dir / "data").string();
  options.held_out = 128;
  options.train_limit = 0;
  options.test_limit = 0;
  options.batch_size = 64;
  options.int8_engine = "reference";
  options.progress_out = nullptr;
  options.threads = 1;
  std::vector<nlohmann::json> evaluations;
  for (int64_t memory_mb : {int64_t{4096}, int64_t{0}}) {
    options.memory_mb = memory_mb;
    Result<TrainData> data = LoadTrainData(options);
    ASSERT_TRUE(data.ok()) << data.status().ToString();
    EXPECT_EQ(data->train.streamed(), memory_mb == 0);
    auto report = TrainVisionSplit(options, *data, dir / ("bundle" + std::to_string(memory_mb)));
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    evaluations.push_back(report->evaluation);
  }
  EXPECT_EQ(evaluations[0].dump(), evaluations[1].dump());
  options.memory_mb = -1;
  EXPECT_EQ(options.Validate().code(), StatusCode::kInvalidArgument);
  fs::remove_all(dir);
}

TEST(TrainerOptionsTest, ValidateRejectsNonsense) {
  const auto rejects = [](const std::function<void(TrainOptions&)>& f) {
    TrainOptions o;
    f(o);
    return o.Validate().code() == StatusCode::kInvalidArgument;
  };
  EXPECT_TRUE(TrainOptions().Validate().ok());
  EXPECT_TRUE(TrainOptions::Quick().Validate().ok());
  EXPECT_TRUE(rejects([](TrainOptions& o) { o.epochs_teacher = 0; }));
  EXPECT_TRUE(rejects([](TrainOptions& o) { o.epochs_exit = -1; }));
  EXPECT_TRUE(rejects([](TrainOptions& o) { o.batch_size = 1; }));
  EXPECT_TRUE(rejects([](TrainOptions& o) { o.lr = 0; }));
  EXPECT_TRUE(rejects([](TrainOptions& o) { o.threads = 0; }));
  EXPECT_TRUE(rejects([](TrainOptions& o) { o.bottleneck_channels = 0; }));
  EXPECT_TRUE(rejects([](TrainOptions& o) { o.wire_dtype = wire::DType::kFloat16; }));
  EXPECT_TRUE(rejects([](TrainOptions& o) { o.held_out = 0; }));
}

}  // namespace
}  // namespace cleave::split
