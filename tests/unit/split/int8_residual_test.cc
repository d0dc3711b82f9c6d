// Int8Head on "res" blocks: ResidualSplit's head (a projection shortcut) and its whole
// network (identity shortcuts in the tail), and a block without the final ReLU. Tolerances
// are those of int8_head_test.cc: with random weights, exit logits cosine > 0.99 and top-1
// agreement > 95% against fp32, features relative error < 5%; on a briefly trained net the
// same on centered logits plus accuracy within 3 points; the libtorch engines against the
// reference path: centered cosine > 0.999, features relative error < 2%.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "split/int8_head.h"
#include "split/vision_model.h"
#include "unit/split/test_nets.h"

namespace cleave::split {
namespace {

// Blobby RGB images in [0, 1]: random 8x8 patterns upsampled plus a little noise.
torch::Tensor RgbBlobs(int64_t n, int size, uint64_t seed) {
  torch::manual_seed(seed);
  const torch::Tensor coarse = torch::rand({n, 3, 8, 8});
  const torch::Tensor images =
      torch::upsample_bilinear2d(coarse, {size, size}, /*align_corners=*/false);
  return (images + 0.05 * torch::randn_like(images)).clamp(0, 1);
}

double RawCosine(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::cosine_similarity(a, b, 1).mean().item<double>();
}

// Random weights give logits dominated by a per-class offset shared by all inputs, which
// makes raw cosine trivially high; on a trained net the centered metrics subtract the batch
// mean of the reference `b` so the input-dependent part decides (as int8_head_test.cc does).
double CenteredCos(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor mean = b.mean(0, /*keepdim=*/true);
  return RawCosine(a - mean, b - mean);
}

double CenteredAgreement(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor mean = b.mean(0, /*keepdim=*/true);
  return (a - mean).argmax(1).eq((b - mean).argmax(1)).to(torch::kDouble).mean().item<double>();
}

double Top1Agreement(const torch::Tensor& a, const torch::Tensor& b) {
  return a.argmax(1).eq(b.argmax(1)).to(torch::kDouble).mean().item<double>();
}

double RelError(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}

double TaskAccuracy(const torch::Tensor& logits, const torch::Tensor& labels) {
  return logits.argmax(1).eq(labels).to(torch::kDouble).mean().item<double>();
}

// A labelled RGB task: class k is blobby prototype k, scaled, with pixel noise.
struct RgbTask {
  torch::Tensor images, labels;
};

RgbTask MakeRgbTask(int64_t n, int size, uint64_t seed) {
  const torch::Tensor prototypes = RgbBlobs(10, size, /*seed=*/99);
  torch::manual_seed(seed);
  RgbTask task;
  task.labels = torch::randint(0, 10, {n}, torch::kLong);
  task.images = (prototypes.index_select(0, task.labels) * (0.6 + 0.4 * torch::rand({n, 1, 1, 1})) +
                 0.15 * torch::randn({n, 3, size, size}))
                    .clamp(0, 1);
  return task;
}

Int8Head QuantizedOrFail(SplitVisionNet& net, int end, const torch::Tensor& calibration) {
  auto head = Int8Head::Quantize(*net, end, calibration);
  EXPECT_TRUE(head.ok()) << head.status().ToString();
  return std::move(head).value();
}

// A small residual net whose head has an identity block without the final ReLU, then a
// projection block with it.
VisionModelSpec ResNoReluSpec() {
  VisionModelSpec s = VisionModelSpec::ResidualSplit();
  s.image_size = 16;
  BlockSpec plain = s.blocks[1];
  plain.in_channels = plain.out_channels = 16;
  plain.stride = 1;
  plain.relu = false;
  s.blocks.insert(s.blocks.begin() + 1, plain);  // 16 -> 16, identity, no ReLU
  s.exits = {{1, 16}, {2, 32}};
  s.split_after = 3;
  return s;
}

class Int8ResidualTest : public ::testing::Test {
 protected:
  VisionModelSpec spec_ = VisionModelSpec::ResidualSplit();
  SplitVisionNet net_ = test_nets::MakeNetWithBatchNormStats(spec_, 7);
  torch::Tensor calibration_ = RgbBlobs(128, 32, 1);
  torch::Tensor eval_ = RgbBlobs(256, 32, 2);
};

TEST_F(Int8ResidualTest, ReferenceEngineIsCloseToFloat) {
  for (int end : {spec_.split_after + 1, static_cast<int>(spec_.blocks.size())}) {
    Int8Head head = QuantizedOrFail(net_, end, calibration_);
    auto q = head.Forward(eval_);
    ASSERT_TRUE(q.ok()) << q.status().ToString();
    torch::NoGradGuard no_grad;
    const auto f = net_->ForwardWithExits(eval_, end);
    ASSERT_EQ(q->exit_logits.size(), 1u);
    ASSERT_EQ(f.exit_logits.size(), 1u);
    EXPECT_GT(RawCosine(q->exit_logits[0], f.exit_logits[0]), 0.99) << "end " << end;
    EXPECT_GT(Top1Agreement(q->exit_logits[0], f.exit_logits[0]), 0.95) << "end " << end;
    ASSERT_EQ(q->features.sizes(), f.features.sizes());
    if (end == net_->num_blocks()) {  // the classifier's logits
      EXPECT_GT(RawCosine(q->features, f.features), 0.99);
      EXPECT_GT(Top1Agreement(q->features, f.features), 0.95);
    } else {
      EXPECT_LT(RelError(q->features, f.features), 0.05);
    }
  }
}

// ResidualSplit's layout at 16x16 with a narrow tail, trained briefly (final and exit losses)
// so its logits depend on the input: against fp32, centered cosine > 0.99, centered top-1
// agreement > 95%, features relative error < 5%, task accuracy within 3 points (the bounds
// of int8_head_test.cc's trained-net test).
TEST(Int8ResidualTrainedTest, ReferenceEngineIsCloseToFloatOnATrainedNet) {
  torch::set_num_threads(1);
  VisionModelSpec spec = VisionModelSpec::ResidualSplit(2, 16, 1);
  spec.exits[0].hidden_channels = 16;
  auto seated = spec.ForInput(3, 16, 10, {0.5f}, {0.25f});
  ASSERT_TRUE(seated.ok()) << seated.status().ToString();
  SplitVisionNet net = test_nets::MakeNetWithBatchNormStats(*seated, 21);
  torch::optim::Adam optimizer(net->parameters(), 1e-2);
  net->train();
  for (int step = 0; step < 120; ++step) {
    const RgbTask batch = MakeRgbTask(32, 16, 1000 + step);
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
  const RgbTask calibration = MakeRgbTask(256, 16, 1);
  const RgbTask test = MakeRgbTask(512, 16, 2);
  for (int end : {seated->split_after + 1, net->num_blocks()}) {
    Int8Head head = QuantizedOrFail(net, end, calibration.images);
    auto q = head.Forward(test.images);
    ASSERT_TRUE(q.ok()) << q.status().ToString();
    torch::NoGradGuard no_grad;
    const auto f = net->ForwardWithExits(test.images, end);
    std::vector<std::pair<torch::Tensor, torch::Tensor>> pairs;  // (int8, fp32) logits
    pairs.reserve(2);
    pairs.emplace_back(q->exit_logits[0], f.exit_logits[0]);
    if (end == net->num_blocks()) {
      pairs.emplace_back(q->features, f.features);
    } else {
      EXPECT_LT(RelError(q->features, f.features), 0.05);
    }
    for (const auto& [qi, fi] : pairs) {
      EXPECT_GT(TaskAccuracy(fi, test.labels), 0.5) << "the net did not learn the task";
      EXPECT_GT(CenteredCos(qi, fi), 0.99) << "end " << end;
      EXPECT_GT(CenteredAgreement(qi, fi), 0.95) << "end " << end;
      EXPECT_NEAR(TaskAccuracy(qi, test.labels), TaskAccuracy(fi, test.labels), 0.03);
    }
  }
}

TEST_F(Int8ResidualTest, EveryAvailableEngineMatchesReference) {
  const VisionModelSpec spec = ResNoReluSpec();
  ASSERT_TRUE(spec.Validate().ok()) << spec.Validate().ToString();
  SplitVisionNet net = test_nets::MakeNetWithBatchNormStats(spec, 3);
  const torch::Tensor calibration = RgbBlobs(128, 16, 3);
  const torch::Tensor images = RgbBlobs(128, 16, 4);
  for (int end : {spec.split_after + 1, static_cast<int>(spec.blocks.size())}) {
    Int8Head head = QuantizedOrFail(net, end, calibration);
    auto ref = head.Forward(images);
    ASSERT_TRUE(ref.ok()) << ref.status().ToString();
    int tested = 0;
    for (const std::string engine : {"onednn", "qnnpack"}) {
      const Status s = head.SelectEngine(engine);
      if (s.code() == StatusCode::kUnavailable) continue;
      ASSERT_TRUE(s.ok()) << s.ToString();
      ++tested;
      auto out = head.Forward(images);
      ASSERT_TRUE(out.ok()) << engine << ": " << out.status().ToString();
      ASSERT_EQ(out->exit_logits.size(), 2u);
      for (size_t e = 0; e < 2; ++e) {
        EXPECT_GT(CenteredCos(out->exit_logits[e], ref->exit_logits[e]), 0.999) << engine;
      }
      ASSERT_EQ(out->features.sizes(), ref->features.sizes());
      EXPECT_LT(RelError(out->features, ref->features), 0.02) << engine << " end " << end;
    }
    EXPECT_GE(tested, 1) << "this libtorch should ship at least one quantized engine";
  }
}

TEST_F(Int8ResidualTest, SerializeRoundTripGivesIdenticalOutputs) {
  Int8Head head = QuantizedOrFail(net_, spec_.split_after + 1, calibration_);
  auto bytes = head.Serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  auto loaded = Int8Head::Deserialize(*bytes, spec_);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->WeightBytes(), head.WeightBytes());
  auto a = head.Forward(eval_);
  auto b = loaded->Forward(eval_);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(torch::equal(a->features, b->features));
  EXPECT_TRUE(torch::equal(a->exit_logits[0], b->exit_logits[0]));
  auto again = loaded->Serialize();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *bytes);
  // The same bytes against another layout (the block 1 shortcut an identity) are refused.
  VisionModelSpec other = spec_;
  other.blocks[0].out_channels = 32;
  other.blocks[1].in_channels = 32;
  other.blocks[1].stride = 1;
  ASSERT_TRUE(other.Validate().ok());
  EXPECT_EQ(Int8Head::Deserialize(*bytes, other).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cleave::split
