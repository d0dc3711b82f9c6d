// TailPlan (split/tail_plan.h): the serving form of a block range computes the module's
// forward.
//
// fp32: folding BatchNorm into the conv changes only the rounding order, so the plan's
// outputs are held to |plan - module| <= 1e-4 * (1 + |module|) element-wise, for every start
// block of every model shape we ship (the split model, the residual family with both kinds of
// shortcut, the tiny test model and the simple CNN with max pooling and linear layers) and
// for batch sizes 1 and 17.
// bf16: 8-bit mantissas give a relative error of ~2^-9 per rounding; through a handful of
// layers the logits' normalized MSE stays near 1e-5. The bound 1e-3 leaves room for random
// weights' gain but catches a wrong layout, a dropped bias or an unfolded BatchNorm (all give
// NMSE near 1).
#include <gtest/gtest.h>

#include "split/tail_plan.h"
#include "split/vision_model.h"
#include "unit/split/test_nets.h"

namespace cleave::split {
namespace {

// The input block `k` sees: the module's own output of blocks [0, k) on random images.
torch::Tensor InputOfBlock(SplitVisionNet& net, int k, int64_t batch) {
  torch::NoGradGuard no_grad;
  const VisionModelSpec& spec = net->spec();
  return net->ForwardRange(
      net->Preprocess(torch::rand({batch, spec.input_channels, spec.image_size, spec.image_size})),
      0, k);
}

double Nmse(const torch::Tensor& got, const torch::Tensor& want) {
  return (got - want).pow(2).sum().item<double>() / want.pow(2).sum().item<double>();
}

struct NamedSpec {
  const char* name;
  VisionModelSpec spec;
};

std::vector<NamedSpec> Specs() {
  return {{"tiny", VisionModelSpec::TinySplit()},
          {"default", VisionModelSpec::DefaultSplit(2)},
          {"residual", VisionModelSpec::ResidualSplit()},
          {"simple_cnn", VisionModelSpec::SimpleCnn()}};
}

TEST(TailPlanTest, Fp32MatchesTheModuleFromEveryStartBlock) {
  torch::set_num_threads(1);
  for (const NamedSpec& s : Specs()) {
    SplitVisionNet net = test_nets::MakeNetWithBatchNormStats(s.spec, 7);
    const int n = net->num_blocks();
    for (int k = 0; k < n; ++k) {
      auto plan = TailPlan::Compile(*net, k, n, TailPrecision::kFp32);
      ASSERT_TRUE(plan.ok()) << s.name << " k=" << k << ": " << plan.status().ToString();
      EXPECT_EQ(plan->num_steps(), n - k);
      EXPECT_EQ(plan->precision(), TailPrecision::kFp32);
      for (int64_t batch : {1, 17}) {
        const torch::Tensor x = InputOfBlock(net, k, batch);
        torch::Tensor want;
        {
          torch::NoGradGuard no_grad;
          want = net->ForwardRange(x, k, n);
        }
        const torch::Tensor got = plan->Run(x);
        ASSERT_EQ(got.sizes(), want.sizes()) << s.name << " k=" << k;
        EXPECT_EQ(got.scalar_type(), torch::kFloat);
        EXPECT_TRUE(got.is_contiguous());
        const double worst = ((got - want).abs() / (want.abs() + 1)).max().item<double>();
        EXPECT_LE(worst, 1e-4) << s.name << " k=" << k << " batch=" << batch;
        EXPECT_TRUE(torch::equal(got.argmax(1), want.argmax(1))) << s.name << " k=" << k;
      }
    }
  }
}

TEST(TailPlanTest, PartialRangesAndStridedInputs) {
  SplitVisionNet net = test_nets::MakeNetWithBatchNormStats(VisionModelSpec::DefaultSplit(2), 3);
  // A middle range ending in a 4-D activation: the plan returns a contiguous NCHW tensor.
  auto plan = TailPlan::Compile(*net, 1, 4, TailPrecision::kFp32);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  const torch::Tensor x = InputOfBlock(net, 1, 5);
  torch::Tensor want;
  {
    torch::NoGradGuard no_grad;
    want = net->ForwardRange(x, 1, 4);
  }
  const torch::Tensor got = plan->Run(x);
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_TRUE(got.is_contiguous());
  EXPECT_LE(((got - want).abs() / (want.abs() + 1)).max().item<double>(), 1e-4);
  // A non-contiguous view of the same input (a transposed copy transposed back) and a double
  // tensor give the same result.
  const torch::Tensor strided = x.transpose(2, 3).contiguous().transpose(2, 3);
  ASSERT_FALSE(strided.is_contiguous());
  EXPECT_TRUE(torch::allclose(plan->Run(strided), got));
  EXPECT_TRUE(torch::allclose(plan->Run(x.to(torch::kDouble)), got, 1e-5, 1e-5));
}

TEST(TailPlanTest, Bf16StaysCloseToFp32) {
  if (!CpuCanRunBf16()) {
    GTEST_SKIP() << "this CPU has no AVX-512 BW/VL/DQ (or libtorch no oneDNN): bf16 tails are "
                    "refused here, see ParseTailPrecisionRejectsBf16WhereItCannotRun";
  }
  torch::set_num_threads(1);
  for (const NamedSpec& s : Specs()) {
    SplitVisionNet net = test_nets::MakeNetWithBatchNormStats(s.spec, 11);
    const int n = net->num_blocks();
    const int k = s.spec.split_after >= 0 ? s.spec.split_after + 1 : 0;
    auto plan = TailPlan::Compile(*net, k, n, TailPrecision::kBf16);
    ASSERT_TRUE(plan.ok()) << s.name << ": " << plan.status().ToString();
    EXPECT_EQ(plan->precision(), TailPrecision::kBf16);
    const torch::Tensor x = InputOfBlock(net, k, 64);
    torch::Tensor want;
    {
      torch::NoGradGuard no_grad;
      want = net->ForwardRange(x, k, n);
    }
    const torch::Tensor got = plan->Run(x);
    EXPECT_EQ(got.scalar_type(), torch::kFloat);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LT(Nmse(got, want), 1e-3) << s.name;
    EXPECT_GT(Nmse(got, want), 0.0) << s.name << ": bf16 rounding left no trace; not bf16?";
    const double agree = got.argmax(1).eq(want.argmax(1)).to(torch::kDouble).mean().item<double>();
    EXPECT_GE(agree, 0.9) << s.name;
  }
}

TEST(TailPlanTest, CompileRejectsBadRanges) {
  SplitVisionNet net = test_nets::MakeNetWithBatchNormStats(VisionModelSpec::TinySplit(), 1);
  const int n = net->num_blocks();
  for (auto [begin, end] : std::vector<std::pair<int, int>>{{-1, n}, {0, n + 1}, {3, 3}, {4, 2}}) {
    auto plan = TailPlan::Compile(*net, begin, end, TailPrecision::kFp32);
    ASSERT_FALSE(plan.ok()) << begin << ".." << end;
    EXPECT_EQ(plan.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(plan.status().message().find("block range"), std::string::npos);
  }
}

TEST(TailPlanTest, CompileRejectsNonFiniteBatchNormWithTheBlock) {
  SplitVisionNet net = test_nets::MakeNetWithBatchNormStats(VisionModelSpec::TinySplit(), 1);
  {
    torch::NoGradGuard no_grad;
    auto* mb = dynamic_cast<FusedMBConvImpl*>(&net->block(4));
    ASSERT_NE(mb, nullptr);
    mb->project_bn->running_var[0] = std::numeric_limits<float>::quiet_NaN();
  }
  auto plan = TailPlan::Compile(*net, 3, net->num_blocks(), TailPrecision::kFp32);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(plan.status().message().find("block 4"), std::string::npos) << plan.status().ToString();
  EXPECT_NE(plan.status().message().find("not finite"), std::string::npos);
}

TEST(TailPlanTest, FoldBatchNormMatchesConvThenBatchNorm) {
  torch::manual_seed(5);
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(3, 4, 3).padding(1).bias(true));
  torch::nn::BatchNorm2d bn(4);
  torch::NoGradGuard no_grad;
  bn->running_mean.uniform_(-1, 1);
  bn->running_var.uniform_(0.2, 2);
  bn->weight.uniform_(0.5, 2);
  bn->bias.uniform_(-1, 1);
  bn->eval();
  const torch::Tensor x = torch::randn({2, 3, 5, 5});
  auto folded = FoldBatchNorm(conv, bn);
  ASSERT_TRUE(folded.ok()) << folded.status().ToString();
  EXPECT_TRUE(torch::allclose(torch::conv2d(x, folded->weight, folded->bias, 1, 1), bn(conv(x)),
                              1e-5, 1e-5));
  // Without a BatchNorm the conv is copied as it is.
  auto plain = FoldBatchNorm(conv, nullptr);
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(torch::equal(plain->weight, conv->weight));
  EXPECT_TRUE(torch::equal(plain->bias, conv->bias));
  // Statistics that are not there cannot be folded.
  torch::nn::BatchNorm2d stateless(torch::nn::BatchNorm2dOptions(4).track_running_stats(false));
  auto refused = FoldBatchNorm(conv, stateless);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition);
}

TEST(TailPlanTest, ParsePrecisionNames) {
  auto fp32 = ParseTailPrecision("fp32");
  ASSERT_TRUE(fp32.ok());
  EXPECT_EQ(*fp32, TailPrecision::kFp32);
  auto automatic = ParseTailPrecision("auto");
  ASSERT_TRUE(automatic.ok());
  EXPECT_EQ(*automatic, CpuHasNativeBf16() ? TailPrecision::kBf16 : TailPrecision::kFp32);
  for (const char* bad : {"", "FP32", "fp16", "int8", "bf16 "}) {
    auto parsed = ParseTailPrecision(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find("fp32, bf16 or auto"), std::string::npos);
  }
  EXPECT_STREQ(TailPrecisionName(TailPrecision::kFp32), "fp32");
  EXPECT_STREQ(TailPrecisionName(TailPrecision::kBf16), "bf16");
  // Native bf16 implies the AVX-512 base libtorch needs.
  if (CpuHasNativeBf16()) {
    EXPECT_TRUE(CpuCanRunBf16());
  }
}

TEST(TailPlanTest, ParseTailPrecisionRejectsBf16WhereItCannotRun) {
  auto bf16 = ParseTailPrecision("bf16");
  if (CpuCanRunBf16()) {
    ASSERT_TRUE(bf16.ok());
    EXPECT_EQ(*bf16, TailPrecision::kBf16);
  } else {
    ASSERT_FALSE(bf16.ok());
    EXPECT_EQ(bf16.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(bf16.status().message().find("AVX-512"), std::string::npos);
  }
}

}  // namespace
}  // namespace cleave::split
