// The "res" block (ResNet BasicBlock) and the residual family VisionModelSpec::ResidualSplit:
// shapes, both shortcuts against the block's formula, MAC and parameter counts by hand, the
// teacher of the family.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include "split/distill.h"
#include "split/vision_bundle.h"
#include "split/vision_model.h"
#include "unit/split/test_nets.h"

namespace cleave::split {
namespace {

BlockSpec ResSpec(int in, int out, int stride, bool relu = true) {
  BlockSpec b;
  b.type = "res";
  b.in_channels = in;
  b.out_channels = out;
  b.stride = stride;
  b.relu = relu;
  return b;
}

// A standalone block in eval mode with non-trivial BatchNorm statistics.
std::shared_ptr<ResBlockImpl> MakeResBlock(const BlockSpec& spec, uint64_t seed) {
  torch::manual_seed(seed);
  auto block = std::make_shared<ResBlockImpl>(spec);
  test_nets::RandomizeBatchNorms(*block);
  block->eval();
  return block;
}

// He et al. 2016, eval semantics, written out with the functional ops.
torch::Tensor BasicBlockByHand(ResBlockImpl& b, const torch::Tensor& x) {
  namespace F = torch::nn::functional;
  const auto bn = [](torch::nn::BatchNorm2d& m, const torch::Tensor& t) {
    return F::batch_norm(t, m->running_mean, m->running_var,
                         F::BatchNormFuncOptions().weight(m->weight).bias(m->bias).eps(1e-5));
  };
  const int stride = b.spec().stride;
  torch::Tensor y = torch::relu(bn(b.bn1, torch::conv2d(x, b.conv1->weight, {}, stride, 1)));
  y = bn(b.bn2, torch::conv2d(y, b.conv2->weight, {}, 1, 1));
  const torch::Tensor shortcut =
      b.projection() ? bn(b.shortcut_bn, torch::conv2d(x, b.shortcut_conv->weight, {}, stride)) : x;
  return b.spec().relu ? torch::relu(y + shortcut) : y + shortcut;
}

TEST(ResBlockTest, IdentityShortcutWhenStrideOneAndChannelsMatch) {
  auto block = MakeResBlock(ResSpec(8, 8, 1), 1);
  EXPECT_FALSE(block->projection());
  EXPECT_EQ(block->shortcut_bn.is_empty(), true);
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({2, 8, 6, 6});
  const torch::Tensor y = block->forward(x);
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 8, 6, 6}));
  EXPECT_TRUE(torch::allclose(y, BasicBlockByHand(*block, x), 1e-5, 1e-5));
  EXPECT_GE(y.min().item<float>(), 0.0f);  // the ReLU after the sum
  // The shortcut really is the input: zeroing the residual branch's last BN leaves relu(x).
  block->bn2->weight.zero_();
  block->bn2->bias.zero_();
  EXPECT_TRUE(torch::allclose(block->forward(x), torch::relu(x)));
}

TEST(ResBlockTest, ProjectionShortcutWhenStrideOrChannelsChange) {
  struct Shape {
    int in, out, stride;
    std::vector<int64_t> output;
  };
  for (const Shape& s : {Shape{8, 16, 2, {2, 16, 3, 3}}, Shape{8, 16, 1, {2, 16, 6, 6}},
                         Shape{8, 8, 2, {2, 8, 3, 3}}}) {
    auto block = MakeResBlock(ResSpec(s.in, s.out, s.stride), 2);
    ASSERT_TRUE(block->projection()) << s.in << "->" << s.out << " stride " << s.stride;
    EXPECT_EQ(block->shortcut_conv->weight.sizes(), (std::vector<int64_t>{s.out, s.in, 1, 1}));
    torch::NoGradGuard no_grad;
    const torch::Tensor x = torch::randn({2, s.in, 6, 6});
    const torch::Tensor y = block->forward(x);
    EXPECT_EQ(y.sizes(), s.output);
    EXPECT_TRUE(torch::allclose(y, BasicBlockByHand(*block, x), 1e-5, 1e-5));
  }
}

TEST(ResBlockTest, WithoutReluTheSumIsReturnedAsIs) {
  auto block = MakeResBlock(ResSpec(4, 4, 1, /*relu=*/false), 3);
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({2, 4, 5, 5});
  const torch::Tensor y = block->forward(x);
  EXPECT_LT(y.min().item<float>(), 0.0f);
  EXPECT_TRUE(torch::allclose(y, BasicBlockByHand(*block, x), 1e-5, 1e-5));
}

TEST(ResBlockTest, ValidateRefusesSettingsTheBlockWouldIgnore) {
  VisionModelSpec spec = VisionModelSpec::ResidualSplit();
  ASSERT_TRUE(spec.Validate().ok());
  for (const auto& breakage : std::vector<std::function<void(BlockSpec&)>>{
           [](BlockSpec& b) { b.kernel = 5; }, [](BlockSpec& b) { b.batch_norm = false; },
           [](BlockSpec& b) { b.padding = 0; }}) {
    VisionModelSpec broken = spec;
    breakage(broken.blocks[1]);
    const Status s = broken.Validate();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("block 1"), std::string::npos) << s.ToString();
  }
}

// conv1 (3x3, stride) + conv2 (3x3) + the 1x1 projection, counted at the output resolution.
TEST(ResBlockTest, MacAndParameterCountsByHand) {
  SplitVisionNet net(VisionModelSpec::ResidualSplit());
  // Block 1: 16 -> 32, stride 2, 16x16 output, projection shortcut.
  EXPECT_EQ(net->MacCount(1, 2, false), 16 * 16 * (9 * 16 * 32 + 9 * 32 * 32 + 16 * 32));
  EXPECT_EQ(net->ParameterCount(1, 2, false),
            9 * 16 * 32 + 9 * 32 * 32 + 16 * 32 + 3 * (2 * 32));  // + three BNs' gamma, beta
  // Block 4: 64 -> 64 at 8x8, identity shortcut (no MACs, no parameters).
  EXPECT_EQ(net->MacCount(4, 5, false), 8 * 8 * (2 * 9 * 64 * 64));
  EXPECT_EQ(net->ParameterCount(4, 5, false), 2 * 9 * 64 * 64 + 2 * (2 * 64));
}

TEST(ResidualSplitTest, ValidatesAndRunsOn32x32Rgb) {
  const VisionModelSpec spec = VisionModelSpec::ResidualSplit();
  ASSERT_TRUE(spec.Validate().ok()) << spec.Validate().ToString();
  EXPECT_EQ(spec.input_channels, 3);
  EXPECT_EQ(spec.image_size, 32);
  const std::vector<int> sizes = {32, 16, 8, 8, 8, 8, 1};
  ASSERT_EQ(spec.blocks.size(), sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_EQ(spec.OutputSize(static_cast<int>(i)), sizes[i]) << "block " << i;
  }
  auto shape = FeatureShape(spec);
  ASSERT_TRUE(shape.ok());
  EXPECT_EQ(*shape, (std::vector<uint32_t>{4, 8, 8}));  // 128 bytes per image as u4

  SplitVisionNet net = test_nets::MakeNetWithBatchNormStats(spec, 5);
  torch::NoGradGuard no_grad;
  const torch::Tensor images = torch::rand({2, 3, 32, 32});
  EXPECT_EQ(net->forward(images).sizes(), (std::vector<int64_t>{2, 10}));
  const auto out = net->ForwardWithExits(images, spec.split_after + 1);
  ASSERT_EQ(out.exit_logits.size(), 1u);
  EXPECT_EQ(out.exit_logits[0].sizes(), (std::vector<int64_t>{2, 10}));
  EXPECT_EQ(out.features.sizes(), (std::vector<int64_t>{2, 4, 8, 8}));
  auto back = VisionModelSpec::FromJson(spec.ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->ToJson(), spec.ToJson());
}

// The figures of the table in docs/design.md ("The model").
TEST(ResidualSplitTest, EdgeHeadIsAFewMillionMacs) {
  SplitVisionNet net(VisionModelSpec::ResidualSplit());
  const int head = net->spec().split_after + 1;
  const int64_t stem = 32 * 32 * 27 * 16;
  const int64_t res = 16 * 16 * (9 * 16 * 32 + 9 * 32 * 32 + 16 * 32);
  const int64_t encoder = 8 * 8 * 9 * 32 * 4;
  const int64_t exit = 8 * 8 * 9 * 32 * 64 + 8 * 8 * 64 + 64 * 10;
  EXPECT_EQ(net->MacCount(0, head, false), stem + res + encoder);        // 4,186,112
  EXPECT_EQ(net->MacCount(0, head, true), stem + res + encoder + exit);  // 5,370,496
  // Conv weights plus each BatchNorm's gamma and beta (2 x channels); linear layers' biases.
  const int64_t stem_params = 27 * 16 + 2 * 16;
  const int64_t res_params = 9 * 16 * 32 + 9 * 32 * 32 + 16 * 32 + 3 * 2 * 32;
  const int64_t encoder_params = 9 * 32 * 4 + 2 * 4;
  const int64_t exit_params = 9 * 32 * 64 + 2 * 64 + 64 * 10 + 10;
  EXPECT_EQ(net->ParameterCount(0, head, true),
            stem_params + res_params + encoder_params + exit_params);  // 35,362
  const int64_t decoder_params = 9 * 4 * 64 + 2 * 64;
  const int64_t tail_res_params = 2 * (2 * 9 * 64 * 64 + 2 * 2 * 64);
  const int64_t classifier_params = 64 * 10 + 10;
  EXPECT_EQ(net->ParameterCount(head, net->num_blocks(), false),
            decoder_params + tail_res_params + classifier_params);  // 151,050
  EXPECT_EQ(net->MacCount(head, net->num_blocks(), false),
            8 * 8 * 9 * 4 * 64 + 2 * 8 * 8 * 2 * 9 * 64 * 64 + 8 * 8 * 64 + 64 * 10);
}

TEST(ResidualSplitTest, ForInputReseatsItForGray28x28) {
  auto gray = VisionModelSpec::ResidualSplit().ForInput(1, 28, 10, {0.5f}, {0.25f});
  ASSERT_TRUE(gray.ok()) << gray.status().ToString();
  auto shape = FeatureShape(*gray);
  ASSERT_TRUE(shape.ok());
  EXPECT_EQ(*shape, (std::vector<uint32_t>{4, 7, 7}));
  SplitVisionNet net(*gray);
  torch::NoGradGuard no_grad;
  net->eval();
  EXPECT_EQ(net->forward(torch::rand({2, 1, 28, 28})).sizes(), (std::vector<int64_t>{2, 10}));
}

// The teacher keeps the family (a stride-2 BasicBlock where the bottleneck pair sits), and
// the student starts from its head and tail.
TEST(ResidualSplitTest, TeacherForKeepsTheResidualFamily) {
  const VisionModelSpec student_spec = VisionModelSpec::ResidualSplit();
  auto teacher_spec = TeacherFor(student_spec);
  ASSERT_TRUE(teacher_spec.ok()) << teacher_spec.status().ToString();
  ASSERT_EQ(teacher_spec->blocks.size(), student_spec.blocks.size() - 1);
  const BlockSpec& merged = teacher_spec->blocks[2];
  EXPECT_EQ(merged.type, "res");
  EXPECT_EQ(merged.in_channels, 32);
  EXPECT_EQ(merged.out_channels, 64);
  EXPECT_EQ(merged.stride, 2);
  EXPECT_TRUE(teacher_spec->exits.empty());
  EXPECT_EQ(teacher_spec->split_after, -1);
  // Fused-MBConv students keep the Fused-MBConv teacher.
  auto default_teacher = TeacherFor(VisionModelSpec::DefaultSplit(2));
  ASSERT_TRUE(default_teacher.ok());
  EXPECT_EQ(default_teacher->blocks[3].type, "fused_mb");

  SplitVisionNet teacher = test_nets::MakeNetWithBatchNormStats(*teacher_spec, 1);
  SplitVisionNet student = test_nets::MakeNetWithBatchNormStats(student_spec, 2);
  ASSERT_TRUE(InitStudentFromTeacher(*student, *teacher).ok());
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({2, 16, 32, 32});
  EXPECT_TRUE(torch::equal(student->block(1).forward(x), teacher->block(1).forward(x)));
  const torch::Tensor t = torch::randn({2, 64, 8, 8});
  for (int k = 0; k < 2; ++k) {  // student 4, 5 <- teacher 3, 4
    EXPECT_TRUE(torch::equal(student->block(4 + k).forward(t), teacher->block(3 + k).forward(t)));
  }
}

}  // namespace
}  // namespace cleave::split
