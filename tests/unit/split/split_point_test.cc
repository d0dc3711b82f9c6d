// Further split points of a vision-split bundle (split/split_point.h): written and read back
// with the bundle, served by CloudModel and run by EdgeModel; every split point of a
// multi-split bundle, the deployment split included, equals the whole model through the wire
// with fp32 features; a learned bottleneck point runs encoder on the edge and decoder in the
// cloud; every malformed point is refused naming what is wrong.
#include "split/split_point.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "common/tensor_codec.h"
#include "split/latency_profile.h"
#include "split/split_point_calibration.h"
#include "split/split_runtime.h"
#include "split/vision_bundle.h"
#include "split/wire_entropy.h"
#include "split/wire_quant.h"
#include "testing/tiny_bundle.h"

namespace cleave::split {
namespace {

using nlohmann::json;

// TinySplit: 0 conv 4x14x14, 1 fused_mb 4x14x14 (exit), 2 encoder 2x7x7 (deployment split),
// 3 decoder 8x7x7, 4 fused_mb 8x7x7, 5 classifier.
VisionSplitModel TinyModel() {
  torch::manual_seed(3);
  VisionSplitModel model;
  model.spec = VisionModelSpec::TinySplit();
  model.net = SplitVisionNet(model.spec);
  torch::NoGradGuard no_grad;
  for (auto& b : model.net->named_buffers()) {
    if (b.key().find("running_mean") != std::string::npos) b.value().uniform_(-0.2, 0.2);
    if (b.key().find("running_var") != std::string::npos) b.value().uniform_(0.5, 1.5);
  }
  model.net->eval();
  model.wire_dtype = wire::DType::kFloat32;
  model.exit_policy = ExitPolicy(ExitCriterion::kMaxSoftmax, {kExitDisabled});
  return model;
}

SplitPoint Plain(const VisionModelSpec& spec, int after, wire::DType dtype) {
  Result<SplitPoint> point = SplitPoint::Plain(spec, after, dtype);
  EXPECT_TRUE(point.ok()) << point.status().ToString();
  return *point;
}

// A bottleneck after block 1 (4x14x14): encoder 4 -> 2 channels at stride 2 (7x7), decoder
// 2 -> 8 channels, what block 4 reads (block 3's output), so the cloud resumes at block 4.
SplitPoint BottleneckPoint(const VisionModelSpec& spec) {
  SplitPoint p;
  p.after = 1;
  p.resume = 4;
  BlockSpec enc{"conv", "encoder", 4, 2, 3, 2};
  enc.relu = false;
  BlockSpec dec{"conv", "decoder", 2, 8, 3, 1};
  p.bottleneck = SplitBottleneck{enc, dec, nullptr, nullptr};
  p.feature_shape = {2, 7, 7};
  p.wire_dtype = wire::DType::kFloat32;
  p.exit_policy = ExitPolicy(ExitCriterion::kMaxSoftmax, {kExitDisabled});
  EXPECT_TRUE(p.Validate(spec).ok()) << p.Validate(spec).ToString();
  BuildBottleneck(p);
  return p;
}

torch::Tensor ThroughF32Wire(const torch::Tensor& features) {
  const torch::Tensor f = features.contiguous();
  std::vector<uint32_t> shape;
  for (int64_t d : f.sizes()) shape.push_back(static_cast<uint32_t>(d));
  Result<wire::EncodedTensor> encoded =
      wire::EncodeTensor(f.data_ptr<float>(), shape, wire::DType::kFloat32, 1, nullptr);
  EXPECT_TRUE(encoded.ok());
  Result<std::vector<float>> decoded = wire::DecodeTensor(*encoded);
  EXPECT_TRUE(decoded.ok());
  return torch::from_blob(decoded->data(), f.sizes(), torch::kFloat32).clone();
}

class SplitPointBundleTest : public ::testing::Test {
 protected:
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::filesystem::path dir_ = testing::TempPath("split_points");
};

TEST_F(SplitPointBundleTest, EverySplitPointEqualsTheWholeModelThroughTheWire) {
  VisionSplitModel model = TinyModel();
  for (int after : {0, 1, 3, 4})
    model.splits.push_back(Plain(model.spec, after, wire::DType::kFloat32));
  ASSERT_TRUE(WriteVisionBundle(dir_, model).ok());
  Result<Bundle> bundle = Bundle::Open(dir_);
  ASSERT_TRUE(bundle.ok()) << bundle.status().ToString();
  EdgeModel::Options fp32;
  fp32.int8 = false;
  auto edge = EdgeModel::Load(*bundle, fp32);
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  CloudModel::Options exact;
  exact.precision = TailPrecision::kFp32;
  auto cloud = CloudModel::Load(*bundle, exact);
  ASSERT_TRUE(cloud.ok()) << cloud.status().ToString();
  auto local = LocalModel::Load(*bundle);
  ASSERT_TRUE(local.ok());
  ASSERT_EQ((*edge)->num_splits(), 5);
  ASSERT_EQ((*cloud)->num_splits(), 5);

  const torch::Tensor images = testing::RandomImages(6, 5);
  Result<torch::Tensor> whole = (*local)->Run(images);
  ASSERT_TRUE(whole.ok());
  for (int s = 0; s < 5; ++s) {
    SCOPED_TRACE("split " + std::to_string(s));
    Result<EdgeHeadOutput> head = (*edge)->Run(images, s);
    ASSERT_TRUE(head.ok()) << head.status().ToString();
    std::vector<int64_t> want = {6};
    for (uint32_t d : (*edge)->feature_shape(s)) want.push_back(d);
    EXPECT_EQ(head->features.sizes().vec(), want);
    EXPECT_EQ((*cloud)->feature_shape(s), (*edge)->feature_shape(s));
    // The exit (after block 1) answers only where the cut comes after it.
    EXPECT_EQ(head->exit_logits.size(), s == 1 ? 0u : 1u);
    Result<torch::Tensor> logits = (*cloud)->RunTail(ThroughF32Wire(head->features), s);
    ASSERT_TRUE(logits.ok()) << logits.status().ToString();
    EXPECT_TRUE(torch::allclose(*logits, *whole, 1e-4, 1e-5))
        << "max diff " << (*logits - *whole).abs().max().item<float>();
  }
  EXPECT_EQ((*edge)->exit_policy(1).num_exits(), 0);  // after block 0: before the exit
  EXPECT_EQ((*edge)->exit_policy(2).num_exits(), 1);
  EXPECT_EQ((*edge)->wire_dtype(3), wire::DType::kFloat32);
}

TEST_F(SplitPointBundleTest, AnInt8EdgeRunsFurtherSplitPointsOnTheFp32Blocks) {
  ASSERT_TRUE(testing::WriteTinyBundle(dir_).ok());
  Result<Bundle> tiny = Bundle::Open(dir_);
  ASSERT_TRUE(tiny.ok());
  VisionBundleParts all;
  all.head_int8 = true;
  Result<VisionSplitModel> model = ReadVisionBundle(*tiny, all);
  ASSERT_TRUE(model.ok());
  model->splits.push_back(Plain(model->spec, 3, wire::DType::kFloat32));
  const std::filesystem::path out = dir_.string() + "_multi";
  ASSERT_TRUE(WriteVisionBundle(out, *model).ok());
  Result<Bundle> bundle = Bundle::Open(out);
  ASSERT_TRUE(bundle.ok());
  auto int8_edge = EdgeModel::Load(*bundle, EdgeModel::Options());
  ASSERT_TRUE(int8_edge.ok()) << int8_edge.status().ToString();
  EdgeModel::Options fp32;
  fp32.int8 = false;
  auto fp32_edge = EdgeModel::Load(*bundle, fp32);
  ASSERT_TRUE(fp32_edge.ok());
  const torch::Tensor images = testing::RandomImages(3, 9);
  Result<EdgeHeadOutput> a = (*int8_edge)->Run(images, 1);
  Result<EdgeHeadOutput> b = (*fp32_edge)->Run(images, 1);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(torch::equal(a->features, b->features));
  std::filesystem::remove_all(out);
}

TEST_F(SplitPointBundleTest, ABottleneckPointEncodesOnTheEdgeAndDecodesInTheCloud) {
  VisionSplitModel model = TinyModel();
  model.splits.push_back(BottleneckPoint(model.spec));
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model.splits[0].bottleneck->encoder_net->parameters()) p.uniform_(-0.5, 0.5);
  }
  ASSERT_TRUE(WriteVisionBundle(dir_, model).ok());
  EXPECT_TRUE(std::filesystem::exists(dir_ / SplitBottleneckFile(1)));
  Result<Bundle> bundle = Bundle::Open(dir_);
  ASSERT_TRUE(bundle.ok());
  EdgeModel::Options fp32;
  fp32.int8 = false;
  auto edge = EdgeModel::Load(*bundle, fp32);
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  CloudModel::Options exact;
  exact.precision = TailPrecision::kFp32;
  auto cloud = CloudModel::Load(*bundle, exact);
  ASSERT_TRUE(cloud.ok()) << cloud.status().ToString();

  const torch::Tensor images = testing::RandomImages(4, 2);
  Result<EdgeHeadOutput> head = (*edge)->Run(images, 1);
  ASSERT_TRUE(head.ok()) << head.status().ToString();
  EXPECT_EQ(head->features.sizes().vec(), (std::vector<int64_t>{4, 2, 7, 7}));
  torch::NoGradGuard no_grad;
  // What the model held in memory computes: the stored weights came back.
  const SplitPoint& point = model.splits[0];
  const torch::Tensor expected_features = RunSplitHead(*model.net, point, images).features;
  EXPECT_TRUE(torch::allclose(head->features, expected_features, 1e-5, 1e-6));
  const torch::Tensor expected =
      model.net->ForwardRange(RunSplitDecoder(point, expected_features), 4, 6);
  Result<torch::Tensor> logits = (*cloud)->RunTail(ThroughF32Wire(head->features), 1);
  ASSERT_TRUE(logits.ok()) << logits.status().ToString();
  EXPECT_TRUE(torch::allclose(*logits, expected, 1e-4, 1e-5));
}

// Entropy models fitted for the deployment split and a further point travel in the manifest;
// the edge and the cloud then agree on every split point's layout tag, and a changed model
// changes it.
TEST_F(SplitPointBundleTest, EntropyModelsTravelWithTheBundleAndBothEndsAgreeOnTheTags) {
  VisionSplitModel model = TinyModel();
  torch::NoGradGuard no_grad;
  const torch::Tensor images = testing::RandomImages(64, 4);
  const torch::Tensor f0 = model.net->ForwardRange(model.net->Preprocess(images), 0, 3);
  auto [lo, hi] = ChooseWireRanges(f0, wire::DType::kUInt4);
  model.wire_dtype = wire::DType::kUInt4;
  model.wire_quant = RangesToQuantParams(lo, hi, wire::DType::kUInt4);
  Result<WireEntropyFit> fit0 = FitWireEntropy(f0, model.wire_dtype, model.wire_quant);
  ASSERT_TRUE(fit0.ok()) << fit0.status().ToString();
  model.wire_entropy = fit0->model;
  EXPECT_GT(fit0->report.at("packed_bytes_per_image").get<uint64_t>(), 0u);
  SplitPoint point = Plain(model.spec, 3, wire::DType::kUInt8);
  const torch::Tensor f3 = RunSplitHead(*model.net, point, images).features;
  auto [lo3, hi3] = ChooseWireRanges(f3, wire::DType::kUInt8);
  point.wire_quant = RangesToQuantParams(lo3, hi3, wire::DType::kUInt8);
  point.wire_entropy = FitWireEntropy(f3, point.wire_dtype, point.wire_quant)->model;
  model.splits.push_back(point);
  ASSERT_TRUE(WriteVisionBundle(dir_, model).ok());

  Result<Bundle> bundle = Bundle::Open(dir_);
  ASSERT_TRUE(bundle.ok());
  EdgeModel::Options fp32;
  fp32.int8 = false;
  auto edge = EdgeModel::Load(*bundle, fp32);
  auto cloud = CloudModel::Load(*bundle);
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  ASSERT_TRUE(cloud.ok()) << cloud.status().ToString();
  for (int s = 0; s < 2; ++s) {
    SCOPED_TRACE("split " + std::to_string(s));
    ASSERT_NE((*edge)->layout(s).entropy, nullptr);
    EXPECT_EQ((*edge)->layout(s).entropy->Fingerprint(),
              (s == 0 ? model.wire_entropy : point.wire_entropy)->Fingerprint());
    EXPECT_EQ((*edge)->layout_tag(s), (*cloud)->layout_tag(s));
  }
  EXPECT_NE((*edge)->layout_tag(0), (*edge)->layout_tag(1));
  // Without the entropy model the layout, hence the tag, differs.
  wire::FeatureLayout packed = (*edge)->layout(0);
  packed.entropy.reset();
  EXPECT_NE(wire::WireLayoutTag(packed, model.name, 0), (*edge)->layout_tag(0));
  // The models are files of the bundle, named with their fingerprints in the manifest.
  EXPECT_TRUE(std::filesystem::exists(dir_ / kWireEntropyFile));
  EXPECT_TRUE(std::filesystem::exists(dir_ / "split1_entropy.cem"));
  const json wire = bundle->model().at("wire").at("entropy");
  EXPECT_EQ(wire.at("fingerprint"), model.wire_entropy->FingerprintHex());
  // A manifest naming another fingerprint than its file holds is refused.
  {
    const std::filesystem::path copy = dir_.string() + "_fp";
    BundleWriter writer(copy);
    for (const auto& [part, file] : bundle->model().at("files").items()) {
      auto bytes = bundle->ReadVerified(file.get<std::string>());
      ASSERT_TRUE(bytes.ok()) << file;
      ASSERT_TRUE(writer.AddFile(file.get<std::string>(), *bytes).ok());
    }
    auto bytes = bundle->ReadVerified("split1_entropy.cem");
    ASSERT_TRUE(bytes.ok());
    ASSERT_TRUE(writer.AddFile("split1_entropy.cem", *bytes).ok());
    json manifest = bundle->model();
    manifest["wire"]["entropy"]["fingerprint"] = "00000000";
    ASSERT_TRUE(writer.Commit(kVisionSplitKind, manifest).ok());
    auto tampered = Bundle::Open(copy);
    ASSERT_TRUE(tampered.ok());
    auto read = ReadVisionBundle(*tampered, VisionBundleParts());
    ASSERT_FALSE(read.ok());
    EXPECT_EQ(read.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(read.status().ToString().find("00000000"), std::string::npos);
    std::filesystem::remove_all(copy);
  }
  // A model that does not fit the features is refused on write.
  model.splits[0].wire_entropy = model.wire_entropy;  // 98 u4 symbols for 392 u8 features
  Status refused = WriteVisionBundle(dir_.string() + "_bad", model);
  EXPECT_FALSE(refused.ok());
  EXPECT_NE(refused.ToString().find("entropy model"), std::string::npos) << refused.ToString();
}

TEST_F(SplitPointBundleTest, SplitIndicesOutsideTheBundleAreRefused) {
  VisionSplitModel model = TinyModel();
  model.splits.push_back(Plain(model.spec, 3, wire::DType::kFloat32));
  ASSERT_TRUE(WriteVisionBundle(dir_, model).ok());
  Result<Bundle> bundle = Bundle::Open(dir_);
  ASSERT_TRUE(bundle.ok());
  EdgeModel::Options fp32;
  fp32.int8 = false;
  auto edge = EdgeModel::Load(*bundle, fp32);
  auto cloud = CloudModel::Load(*bundle);
  ASSERT_TRUE(edge.ok() && cloud.ok());
  const torch::Tensor images = testing::RandomImages(1, 1);
  for (int bad : {-1, 2}) {
    Result<EdgeHeadOutput> head = (*edge)->Run(images, bad);
    ASSERT_FALSE(head.ok());
    EXPECT_EQ(head.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(head.status().message().find("split point"), std::string::npos);
    Result<torch::Tensor> tail = (*cloud)->RunTail(torch::zeros({1, 8, 7, 7}), bad);
    ASSERT_FALSE(tail.ok());
    EXPECT_EQ(tail.status().code(), StatusCode::kInvalidArgument);
  }
  // Features of another split point's shape.
  Result<torch::Tensor> wrong = (*cloud)->RunTail(torch::zeros({1, 2, 7, 7}), 1);
  EXPECT_FALSE(wrong.ok());
}

TEST_F(SplitPointBundleTest, ABundleMissingABottleneckFileIsRefused) {
  VisionSplitModel model = TinyModel();
  model.splits.push_back(BottleneckPoint(model.spec));
  ASSERT_TRUE(WriteVisionBundle(dir_, model).ok());
  // Removed from the directory: the bundle no longer verifies.
  const std::filesystem::path copy = dir_.string() + "_copy";
  std::filesystem::copy(dir_, copy);
  std::filesystem::remove(copy / SplitBottleneckFile(1));
  Result<Bundle> opened = Bundle::Open(copy);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), StatusCode::kDataLoss);
  std::filesystem::remove_all(copy);
  // A verified bundle whose manifest names a bottleneck it does not carry.
  Result<Bundle> bundle = Bundle::Open(dir_);
  ASSERT_TRUE(bundle.ok());
  BundleWriter writer(copy);
  for (const char* file : {kHeadFp32File, kExitsFp32File, kTailFp32File}) {
    Result<std::string> bytes = bundle->ReadVerified(file);
    ASSERT_TRUE(bytes.ok());
    ASSERT_TRUE(writer.AddFile(file, *bytes).ok());
  }
  ASSERT_TRUE(writer.Commit(kVisionSplitKind, bundle->model()).ok());
  Result<Bundle> lacking = Bundle::Open(copy);
  ASSERT_TRUE(lacking.ok()) << lacking.status().ToString();
  Result<VisionSplitModel> read = ReadVisionBundle(*lacking, VisionBundleParts());
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(read.status().ToString().find(SplitBottleneckFile(1)), std::string::npos)
      << read.status().ToString();
  std::filesystem::remove_all(copy);
}

// Each malformed point is refused, naming the problem.
TEST(SplitPointTest, MalformedPointsAreRefusedNamingTheProblem) {
  const VisionModelSpec spec = VisionModelSpec::TinySplit();
  const json good = Plain(spec, 3, wire::DType::kUInt8).ToJson();
  ASSERT_TRUE(SplitPoint::FromJson(good, spec).ok());
  const auto refused = [&](json j, const std::string& needle) {
    Result<SplitPoint> p = SplitPoint::FromJson(j, spec);
    ASSERT_FALSE(p.ok()) << j.dump();
    EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(p.status().message().find(needle), std::string::npos) << p.status().ToString();
  };
  json j = good;
  j["after"] = 5;  // the classifier
  j["resume"] = 6;
  refused(j, "flattening");
  j = good;
  j["after"] = 9;
  j["resume"] = 10;
  refused(j, "not in the network");
  j = good;
  j["resume"] = 5;
  refused(j, "resume");
  j = good;
  j["feature_shape"] = {8, 7, 6};
  refused(j, "feature_shape");
  j = good;
  j["feature_shape"] = {8, 7};
  refused(j, "[C, H, W]");
  j = good;
  j["wire"]["scale"] = {1.0};
  refused(j, "wire");
  j = good;
  j["exit_policy"]["thresholds"] = json::array();
  refused(j, "exit_policy");
  j = good;
  j.erase("exit_policy");
  refused(j, "exit_policy");
  j = good;
  j.erase("wire");
  refused(j, "malformed");
  refused(json::array(), "object");

  json b = BottleneckPoint(spec).ToJson();
  ASSERT_TRUE(SplitPoint::FromJson(b, spec).ok())
      << SplitPoint::FromJson(b, spec).status().ToString();
  j = b;
  j["decoder"]["out_channels"] = 4;
  refused(j, "chain");
  j = b;
  j["encoder"]["stride"] = 1;  // 14x14 code: the decoder cannot restore 7x7
  j["feature_shape"] = {2, 14, 14};
  refused(j, "restore");
  j = b;
  j.erase("decoder");
  refused(j, "both");
  j = b;
  j["resume"] = 1;
  refused(j, "resume");
}

TEST(SplitPointTest, AManifestWithMalformedSplitsIsRefused) {
  const std::filesystem::path dir = testing::TempPath("split_points_manifest");
  VisionSplitModel model = TinyModel();
  model.splits.push_back(Plain(model.spec, 3, wire::DType::kFloat32));
  ASSERT_TRUE(WriteVisionBundle(dir, model).ok());
  // A point that no longer fits the network, written through the public API is refused.
  model.splits[0].feature_shape = {1, 1, 1};
  Status written = WriteVisionBundle(dir, model);
  EXPECT_FALSE(written.ok());
  EXPECT_NE(written.ToString().find("split point 1"), std::string::npos) << written.ToString();
  std::filesystem::remove_all(dir);
}

TEST(SplitPointTest, CalibrationFitsTheWireAndRecordsTheSweep) {
  VisionSplitModel model = TinyModel();
  LabeledImages train{testing::RandomImages(64, 1), torch::randint(0, 10, {64}, torch::kLong)};
  LabeledImages held{testing::RandomImages(48, 2), torch::randint(0, 10, {48}, torch::kLong)};
  LabeledImages none{torch::zeros({0, 1, 28, 28}), torch::zeros({0}, torch::kLong)};
  SplitPointCalibration options;
  options.log = nullptr;
  options.target = CalibrationTarget{CalibrationTarget::Kind::kMaxAccuracyDrop, 100.0};
  for (int after : {0, 3}) {
    SCOPED_TRACE("after " + std::to_string(after));
    SplitPoint point = Plain(model.spec, after, wire::DType::kUInt8);
    ASSERT_TRUE(CalibrateSplitPoint(model, point, train, held, none, options).ok());
    EXPECT_EQ(point.wire_quant.scale.size(), point.feature_shape[0]);
    EXPECT_NE(point.wire_quant.scale[0], 1.0f);  // fitted, not the placeholder
    const json& sweep = point.calibration.at("sweep");
    const json& held_out = point.calibration.at("held_out");
    EXPECT_EQ(held_out.at("rows").get<int64_t>(), 48);
    if (after == 0) {  // no exit before the cut: one entry, nothing answered at the edge
      ASSERT_EQ(sweep.size(), 1u);
      EXPECT_EQ(held_out.at("exit_fraction").get<double>(), 0.0);
    } else {
      EXPECT_EQ(sweep.size(), SweepThresholds().size());
      EXPECT_EQ(sweep.front().at("exit_fraction").get<double>(), 1.0);  // threshold 0
      EXPECT_EQ(sweep.back().at("exit_fraction").get<double>(), 0.0);   // never
      // A 100-point drop budget lets the exit answer everything.
      EXPECT_EQ(held_out.at("exit_fraction").get<double>(), 1.0);
    }
    EXPECT_FALSE(point.calibration.contains("test"));
  }
}

TEST(LatencyProfileTest, MeasuresEveryBlockExitAndBottleneck) {
  VisionSplitModel model = TinyModel();
  model.splits.push_back(Plain(model.spec, 3, wire::DType::kUInt8));
  model.splits.push_back(BottleneckPoint(model.spec));
  Result<LatencyProfile> p = MeasureLatencyProfile(model, 3);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->block_fp32_ms.size(), model.spec.blocks.size());
  EXPECT_EQ(p->block_plan_ms.size(), model.spec.blocks.size());
  EXPECT_EQ(p->block_plan32_ms.size(), model.spec.blocks.size());
  EXPECT_EQ(p->exit_ms.size(), 1u);
  ASSERT_EQ(p->encoder_ms.size(), 2u);
  EXPECT_EQ(p->encoder_ms[0], 0.0);  // a plain cut has no bottleneck
  EXPECT_GT(p->encoder_ms[1], 0.0);
  EXPECT_GT(p->decoder_ms[1], 0.0);
  for (double ms : p->block_fp32_ms) EXPECT_GT(ms, 0.0);
  EXPECT_EQ(p->int8_head_ms, 0.0);  // no int8 head in this model
  EXPECT_FALSE(p->cpu.empty());
  Result<LatencyProfile> back = LatencyProfile::FromJson(p->ToJson(), model);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->block_plan_ms, p->block_plan_ms);
  // Stored with the bundle and read back.
  model.profile = p->ToJson();
  const std::filesystem::path dir = testing::TempPath("profile");
  ASSERT_TRUE(WriteVisionBundle(dir, model).ok());
  Result<Bundle> bundle = Bundle::Open(dir);
  ASSERT_TRUE(bundle.ok());
  Result<VisionSplitModel> read = ReadVisionBundle(*bundle, VisionBundleParts());
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(read->profile, model.profile);
  std::filesystem::remove_all(dir);
}

// Hand-countable sums: blocks before the cut + the exits there (+ encoder) on the edge; the
// decoder and the blocks from the resume block in the cloud.
TEST(LatencyProfileTest, PredictsEachSplitPointFromItsBlocks) {
  VisionSplitModel model = TinyModel();
  model.splits.push_back(Plain(model.spec, 0, wire::DType::kUInt8));
  model.splits.push_back(BottleneckPoint(model.spec));
  LatencyProfile p;
  p.block_fp32_ms = {1, 2, 4, 8, 16, 32};
  p.block_plan_ms = {100, 200, 400, 800, 1600, 3200};
  p.block_plan32_ms = {10, 20, 40, 80, 160, 320};
  p.exit_ms = {0.5};
  p.int8_head_ms = 0.25;
  p.encoder_ms = {0, 64};
  p.decoder_ms = {0, 128};
  EXPECT_DOUBLE_EQ(p.EdgeMs(model, 0, /*int8=*/false), 1 + 2 + 4 + 0.5);
  EXPECT_DOUBLE_EQ(p.EdgeMs(model, 0, /*int8=*/true), 0.25);
  EXPECT_DOUBLE_EQ(p.EdgeMs(model, 1, true), 1);  // after block 0: before the exit
  EXPECT_DOUBLE_EQ(p.EdgeMs(model, 2, false), 1 + 2 + 0.5 + 64);
  EXPECT_DOUBLE_EQ(p.CloudMs(model, 0, false), 800 + 1600 + 3200);
  EXPECT_DOUBLE_EQ(p.CloudMs(model, 1, true), 20 + 40 + 80 + 160 + 320);
  EXPECT_DOUBLE_EQ(p.CloudMs(model, 2, false), 128 + 1600 + 3200);
}

TEST(LatencyProfileTest, MalformedProfilesAreRefused) {
  VisionSplitModel model = TinyModel();
  LatencyProfile p;
  p.block_fp32_ms = p.block_plan_ms = p.block_plan32_ms = std::vector<double>(6, 1.0);
  p.exit_ms = {1.0};
  ASSERT_TRUE(LatencyProfile::FromJson(p.ToJson(), model).ok());
  const auto refused = [&](json j, const std::string& needle) {
    Result<LatencyProfile> r = LatencyProfile::FromJson(j, model);
    ASSERT_FALSE(r.ok()) << j.dump();
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().ToString();
  };
  json j = p.ToJson();
  j["block_fp32_ms"] = {1.0, 2.0};
  refused(j, "block_fp32_ms");
  j = p.ToJson();
  j["exit_ms"] = {-1.0};
  refused(j, "negative");
  j = p.ToJson();
  j["block_plan_ms"][0] = "fast";
  refused(j, "non-number");
  j = p.ToJson();
  j.erase("encoder_ms");
  refused(j, "encoder_ms");
  j = p.ToJson();
  j["int8_head_ms"] = -2;
  refused(j, "int8_head_ms");
  refused(json::array(), "object");
}

}  // namespace
}  // namespace cleave::split
