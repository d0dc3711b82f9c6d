#include "split/int8_head.h"

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "split/vision_model.h"
#include "unit/split/test_nets.h"

namespace cleave::split {
namespace {

// Blobby images in [0, 1] (random 7x7 patterns upsampled plus a little noise): closer to
// real pictures than white noise.
torch::Tensor MakeImages(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor coarse = torch::rand({n, 1, 7, 7});
  torch::Tensor images = torch::upsample_bilinear2d(coarse, {28, 28}, /*align_corners=*/false);
  return (images + 0.05 * torch::randn_like(images)).clamp(0, 1);
}

// A labelled synthetic task: class k is blobby prototype k, scaled and with pixel noise.
struct Task {
  torch::Tensor images;
  torch::Tensor labels;
};

Task MakeTask(int64_t n, uint64_t seed) {
  const torch::Tensor prototypes = MakeImages(10, /*seed=*/99);
  torch::manual_seed(seed);
  Task task;
  task.labels = torch::randint(0, 10, {n}, torch::kLong);
  task.images = (prototypes.index_select(0, task.labels) * (0.6 + 0.4 * torch::rand({n, 1, 1, 1})) +
                 0.15 * torch::randn({n, 1, 28, 28}))
                    .clamp(0, 1);
  return task;
}

// Trains `net` briefly on MakeTask (final and exit losses) so its logits depend on the input
// the way a real model's do; leaves it in eval mode with learned BN statistics.
void TrainBriefly(SplitVisionNet& net, int steps) {
  torch::manual_seed(21);
  torch::optim::Adam optimizer(net->parameters(), 1e-2);
  net->train();
  for (int step = 0; step < steps; ++step) {
    const Task batch = MakeTask(64, 1000 + step);
    const auto out = net->ForwardWithExits(batch.images, net->num_blocks());
    torch::Tensor loss = torch::cross_entropy_loss(out.features, batch.labels);
    for (const auto& logits : out.exit_logits) {
      loss = loss + torch::cross_entropy_loss(logits, batch.labels);
    }
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
  }
  net->eval();
}

// TinySplit trained once per process (about two seconds); tests only read it. Its exit
// reaches ~94% and its classifier 100% on MakeTask.
SplitVisionNet& TrainedTinyNet() {
  static SplitVisionNet net = [] {
    SplitVisionNet n = test_nets::MakeNetWithBatchNormStats(VisionModelSpec::TinySplit(), 7);
    TrainBriefly(n, 300);
    return n;
  }();
  return net;
}

double Accuracy(const torch::Tensor& logits, const torch::Tensor& labels) {
  return logits.argmax(1).eq(labels).to(torch::kDouble).mean().item<double>();
}

SplitVisionNetImpl::Outputs FloatOutputs(SplitVisionNet& net, const torch::Tensor& images,
                                         int end) {
  torch::NoGradGuard no_grad;
  return net->ForwardWithExits(images, end);
}

// Logits of randomly initialized nets are dominated by a per-class offset shared by all
// inputs (input-dependent spread is ~1-5% of it), which makes raw cosine and top-1 trivially
// high. Both metrics therefore compare logits minus the batch mean of the reference `b`:
// errors in the offset still count, but the input-dependent part decides.
double CenteredCosine(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor mean = b.mean(0, /*keepdim=*/true);
  return torch::cosine_similarity(a - mean, b - mean, 1).mean().item<double>();
}

double CenteredTop1Agreement(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor mean = b.mean(0, /*keepdim=*/true);
  return (a - mean).argmax(1).eq((b - mean).argmax(1)).to(torch::kDouble).mean().item<double>();
}

double RelativeError(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}

Int8Head QuantizeOrDie(SplitVisionNet& net, int end, const torch::Tensor& calibration) {
  auto head = Int8Head::Quantize(*net, end, calibration);
  EXPECT_TRUE(head.ok()) << head.status().ToString();
  return std::move(head).value();
}

class Int8HeadTest : public ::testing::Test {
 protected:
  VisionModelSpec spec_ = VisionModelSpec::TinySplit();
  int end_ = spec_.split_after + 1;
  SplitVisionNet net_ = test_nets::MakeNetWithBatchNormStats(spec_, 7);
  torch::Tensor calibration_ = MakeImages(256, 1);
  torch::Tensor eval_ = MakeImages(512, 2);
};

// Random weights (as the fp32 reference of a fresh model): exit logits mean cosine > 0.99,
// top-1 agreement > 95% (both on raw logits), features (the dequantized bottleneck) relative
// L2 error < 5%. Raw-logit metrics are weak here (see CenteredCosine), hence the next test.
TEST_F(Int8HeadTest, ReferenceEngineIsCloseToFloatWithRandomWeights) {
  Int8Head head = QuantizeOrDie(net_, end_, calibration_);
  EXPECT_EQ(head.engine(), "reference");
  auto q = head.Forward(eval_);
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  const auto f = FloatOutputs(net_, eval_, end_);
  ASSERT_EQ(q->exit_logits.size(), f.exit_logits.size());
  ASSERT_EQ(q->exit_logits.size(), 1u);
  EXPECT_EQ(q->features.sizes(), f.features.sizes());
  EXPECT_EQ(q->features.scalar_type(), torch::kFloat);
  EXPECT_EQ(q->exit_logits[0].sizes(), f.exit_logits[0].sizes());
  EXPECT_GT(torch::cosine_similarity(q->exit_logits[0], f.exit_logits[0], 1).mean().item<double>(),
            0.99);
  EXPECT_GT(q->exit_logits[0]
                .argmax(1)
                .eq(f.exit_logits[0].argmax(1))
                .to(torch::kDouble)
                .mean()
                .item<double>(),
            0.95);
  EXPECT_LT(RelativeError(q->features, f.features), 0.05);
}

// A briefly trained TinySplit (input-dependent logits, learned BN statistics), for the head
// and for the whole network: centered cosine > 0.99, centered top-1 agreement > 95%,
// features relative error < 5%, and task accuracy within 3 points of fp32. (Measured over
// four training seeds: exit agreement 98.2-99.6%, features error 1.4-2.3%.)
TEST_F(Int8HeadTest, ReferenceEngineIsCloseToFloatOnATrainedNet) {
  SplitVisionNet& net = TrainedTinyNet();
  const Task calibration = MakeTask(256, 1);
  const Task test = MakeTask(512, 2);
  for (int end : {end_, static_cast<int>(spec_.blocks.size())}) {
    Int8Head head = QuantizeOrDie(net, end, calibration.images);
    auto q = head.Forward(test.images);
    ASSERT_TRUE(q.ok()) << q.status().ToString();
    const auto f = FloatOutputs(net, test.images, end);
    std::vector<std::pair<torch::Tensor, torch::Tensor>> pairs;  // (int8, fp32) logits
    for (size_t e = 0; e < f.exit_logits.size(); ++e) {
      pairs.emplace_back(q->exit_logits[e], f.exit_logits[e]);
    }
    if (end == net->num_blocks()) {
      pairs.emplace_back(q->features, f.features);  // the classifier's logits
    } else {
      EXPECT_LT(RelativeError(q->features, f.features), 0.05);
    }
    for (const auto& [qi, fi] : pairs) {
      EXPECT_GT(Accuracy(fi, test.labels), 0.5) << "the net did not learn the task";
      EXPECT_GT(CenteredCosine(qi, fi), 0.99);
      EXPECT_GT(CenteredTop1Agreement(qi, fi), 0.95);
      EXPECT_NEAR(Accuracy(qi, test.labels), Accuracy(fi, test.labels), 0.03);
    }
  }
}

TEST_F(Int8HeadTest, QuantizeOnlyReadsTheNetwork) {
  net_->train();
  std::vector<torch::Tensor> before;
  for (const auto& t : net_->parameters()) before.push_back(t.detach().clone());
  for (const auto& t : net_->buffers()) before.push_back(t.detach().clone());
  Int8Head head = QuantizeOrDie(net_, end_, calibration_);
  EXPECT_TRUE(net_->is_training());
  size_t i = 0;
  for (const auto& t : net_->parameters()) EXPECT_TRUE(torch::equal(t, before[i++]));
  for (const auto& t : net_->buffers()) EXPECT_TRUE(torch::equal(t, before[i++]));
}

// Every libtorch engine runs the same integer arithmetic as the reference path; they differ
// by a rounding step now and then (int32 accumulation and requantization versus fp32), so on
// the trained net: centered logits cosine > 0.999, centered top-1 agreement > 98%, features
// relative error < 2%; a batch of one equals that row of a batch to 1e-5.
TEST_F(Int8HeadTest, EveryAvailableEngineMatchesReference) {
  SplitVisionNet& net = TrainedTinyNet();
  const Task calibration = MakeTask(256, 1);
  const Task test = MakeTask(512, 3);
  for (int end : {end_, static_cast<int>(spec_.blocks.size())}) {
    Int8Head head = QuantizeOrDie(net, end, calibration.images);
    auto ref = head.Forward(test.images);
    ASSERT_TRUE(ref.ok()) << ref.status().ToString();
    int tested = 0;
    for (const std::string engine : {"onednn", "qnnpack"}) {
      const Status s = head.SelectEngine(engine);
      if (s.code() == StatusCode::kUnavailable) continue;
      ASSERT_TRUE(s.ok()) << s.ToString();
      EXPECT_EQ(head.engine(), engine);
      ++tested;
      auto out = head.Forward(test.images);
      ASSERT_TRUE(out.ok()) << engine << ": " << out.status().ToString();
      ASSERT_EQ(out->exit_logits.size(), ref->exit_logits.size());
      for (size_t e = 0; e < ref->exit_logits.size(); ++e) {
        EXPECT_GT(CenteredCosine(out->exit_logits[e], ref->exit_logits[e]), 0.999) << engine;
        EXPECT_GT(CenteredTop1Agreement(out->exit_logits[e], ref->exit_logits[e]), 0.98) << engine;
      }
      EXPECT_EQ(out->features.sizes(), ref->features.sizes());
      EXPECT_LT(RelativeError(out->features, ref->features), 0.02) << engine;
      auto one = head.Forward(test.images.slice(0, 3, 4));
      ASSERT_TRUE(one.ok());
      EXPECT_TRUE(torch::allclose(one->features, out->features.slice(0, 3, 4), 1e-5, 1e-6))
          << engine;
    }
    EXPECT_GE(tested, 1) << "this libtorch should ship at least one quantized engine";
  }
}

TEST_F(Int8HeadTest, SerializeRoundTripGivesIdenticalOutputs) {
  Int8Head head = QuantizeOrDie(net_, end_, calibration_);
  auto bytes = head.Serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  auto loaded = Int8Head::Deserialize(*bytes, spec_);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->WeightBytes(), head.WeightBytes());
  EXPECT_EQ(loaded->engine(), "reference");
  auto a = head.Forward(eval_);
  auto b = loaded->Forward(eval_);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(torch::equal(a->features, b->features));
  ASSERT_EQ(a->exit_logits.size(), b->exit_logits.size());
  for (size_t e = 0; e < a->exit_logits.size(); ++e) {
    EXPECT_TRUE(torch::equal(a->exit_logits[e], b->exit_logits[e]));
  }
  auto again = loaded->Serialize();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *bytes);
}

TEST_F(Int8HeadTest, DeserializeRejectsTruncatedGarbageAndOtherModels) {
  Int8Head head = QuantizeOrDie(net_, end_, calibration_);
  auto bytes = head.Serialize();
  ASSERT_TRUE(bytes.ok());
  const std::string& good = *bytes;
  for (size_t len : {size_t{0}, size_t{1}, size_t{16}, good.size() / 2, good.size() - 1}) {
    auto r = Int8Head::Deserialize(good.substr(0, len), spec_);
    ASSERT_FALSE(r.ok()) << "truncated to " << len;
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status().ToString();
  }
  torch::manual_seed(3);
  const torch::Tensor noise = torch::randint(0, 256, {static_cast<int64_t>(good.size())});
  std::string garbage(good.size(), '\0');
  for (size_t i = 0; i < garbage.size(); ++i) {
    garbage[i] = static_cast<char>(noise[i].item<int64_t>());
  }
  auto g = Int8Head::Deserialize(garbage, spec_);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kDataLoss);

  VisionModelSpec wider = spec_;  // a valid spec whose stem has 6 channels instead of 4
  wider.blocks[0].out_channels = 6;
  wider.blocks[1].in_channels = wider.blocks[1].out_channels = 6;
  wider.blocks[2].in_channels = 6;
  ASSERT_TRUE(wider.Validate().ok());
  auto w = Int8Head::Deserialize(good, wider);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kInvalidArgument) << w.status().ToString();

  VisionModelSpec strided = spec_;  // same shapes, different stride: also a different model
  strided.blocks[1].stride = 2;
  ASSERT_TRUE(strided.Validate().ok());
  EXPECT_EQ(Int8Head::Deserialize(good, strided).status().code(), StatusCode::kInvalidArgument);

  VisionModelSpec shorter = spec_;  // the head covers more blocks than this spec has
  shorter.blocks = {spec_.blocks[0], spec_.blocks.back()};
  shorter.blocks.back().in_channels = spec_.blocks[0].out_channels;
  shorter.exits.clear();
  shorter.split_after = -1;
  ASSERT_TRUE(shorter.Validate().ok());
  EXPECT_FALSE(Int8Head::Deserialize(good, shorter).ok());
}

// A corrupted byte anywhere must never crash the reader or change the head silently: it is
// rejected, or (in Cap'n Proto padding) the head loads unchanged.
TEST_F(Int8HeadTest, DeserializeRejectsEveryCorruptedByte) {
  Int8Head head = QuantizeOrDie(net_, end_, calibration_);
  auto bytes = head.Serialize();
  ASSERT_TRUE(bytes.ok());
  const torch::Tensor probe = eval_.slice(0, 0, 2);
  auto expected = head.Forward(probe);
  ASSERT_TRUE(expected.ok());
  int rejected = 0;
  for (size_t pos = 0; pos < bytes->size(); ++pos) {
    std::string corrupt = *bytes;
    corrupt[pos] = static_cast<char>(corrupt[pos] ^ 0x21);
    auto r = Int8Head::Deserialize(corrupt, spec_);
    if (!r.ok()) {
      ++rejected;
      continue;
    }
    auto out = r->Forward(probe);
    ASSERT_TRUE(out.ok());
    EXPECT_TRUE(torch::equal(out->features, expected->features)) << "byte " << pos;
  }
  EXPECT_GT(rejected, static_cast<int>(bytes->size()) * 9 / 10);
}

TEST_F(Int8HeadTest, DeserializeReportsOtherFormatVersions) {
  Int8Head head = QuantizeOrDie(net_, end_, calibration_);
  auto bytes = head.Serialize();
  ASSERT_TRUE(bytes.ok());
  std::string newer = *bytes;
  const size_t at = newer.find("\"version\":1");
  ASSERT_NE(at, std::string::npos);
  newer[at + 10] = '9';
  EXPECT_EQ(Int8Head::Deserialize(newer, spec_).status().code(), StatusCode::kVersionMismatch);
}

// Size figure: int8 weights + per-channel scales + biases + activation parameters against
// fp32 bytes = 4 x parameter count (including BN gamma/beta) of the same blocks and exits.
TEST(Int8HeadSizeTest, WeightBytesAtMostThirtyPercentOfFloat) {
  const VisionModelSpec spec = VisionModelSpec::DefaultSplit(2);
  SplitVisionNet net = test_nets::MakeNetWithBatchNormStats(spec, 11);
  const int end = spec.split_after + 1;
  auto head = Int8Head::Quantize(*net, end, MakeImages(64, 5));
  ASSERT_TRUE(head.ok()) << head.status().ToString();
  const int64_t fp32_bytes = 4 * net->ParameterCount(0, end, /*with_exits=*/true);
  EXPECT_GT(head->WeightBytes(), fp32_bytes / 5);  // sanity: it counts the weights
  EXPECT_LE(head->WeightBytes(), fp32_bytes * 3 / 10)
      << head->WeightBytes() << " vs fp32 " << fp32_bytes;
}

TEST_F(Int8HeadTest, SelectEngineRejectsUnknownNamesAndAutoPicksATimedEngine) {
  Int8Head head = QuantizeOrDie(net_, end_, calibration_);
  for (const std::string bad : {"", "fbgemm", "ONEDNN", "x86", "reference "}) {
    const Status s = head.SelectEngine(bad);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << "'" << bad << "'";
    EXPECT_EQ(head.engine(), "reference");
  }
  ASSERT_TRUE(head.SelectEngine("auto").ok());
  const auto& timings = head.engine_timings_ms();
  ASSERT_TRUE(timings.count("reference"));
  ASSERT_TRUE(timings.count(head.engine())) << head.engine();
  for (const auto& [engine, ms] : timings) {
    EXPECT_GT(ms, 0.0) << engine;
    EXPECT_LE(timings.at(head.engine()), ms) << "auto must keep the fastest engine";
  }
  EXPECT_TRUE(head.Forward(eval_.slice(0, 0, 4)).ok());
  ASSERT_TRUE(head.SelectEngine("reference").ok());
  EXPECT_EQ(head.engine(), "reference");
}

TEST_F(Int8HeadTest, RejectsBadArgumentsWithoutThrowing) {
  EXPECT_EQ(Int8Head::Quantize(*net_, 0, calibration_).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Int8Head::Quantize(*net_, 99, calibration_).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Int8Head::Quantize(*net_, end_, torch::rand({4, 3, 28, 28})).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Int8Head::Quantize(*net_, end_, torch::Tensor()).status().code(),
            StatusCode::kInvalidArgument);
  Int8Head head = QuantizeOrDie(net_, end_, calibration_);
  EXPECT_EQ(head.Forward(torch::rand({2, 1, 27, 28})).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(head.Forward(torch::rand({2, 28, 28})).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(head.Forward(torch::rand({2, 1, 28, 28}, torch::kDouble)).status().code(),
            StatusCode::kInvalidArgument);
  torch::Tensor nan_images = torch::rand({2, 1, 28, 28});
  nan_images[0][0][0][0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(head.Forward(nan_images).status().code(), StatusCode::kInvalidArgument);

  Int8Head moved = std::move(head);
  EXPECT_TRUE(moved.Forward(eval_.slice(0, 0, 1)).ok());
  EXPECT_EQ(head.Forward(eval_.slice(0, 0, 1)).status().code(),  // NOLINT: use after move
            StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace cleave::split
