#include "split/tail_plan.h"

#include <cpuid.h>

#include <cstdint>
#include <string>

namespace cleave::split {
namespace {

struct CpuFeatures {
  bool avx512_base = false;  // F, DQ, BW, VL, with the OS saving the ZMM and opmask state
  bool avx512_bf16 = false;
  bool amx_bf16 = false;  // with the OS saving the tile state
};

uint64_t ReadXcr0() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

CpuFeatures DetectCpu() {
  CpuFeatures f;
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
  const bool osxsave = (ecx >> 27) & 1;
  if (!osxsave) return f;
  const uint64_t xcr0 = ReadXcr0();
  const bool os_avx512 = (xcr0 & 0xe6) == 0xe6;               // SSE, AVX, opmask, ZMM halves
  const bool os_amx = (xcr0 & (3ull << 17)) == (3ull << 17);  // XTILECFG, XTILEDATA
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  const bool f_dq_bw_vl =
      ((ebx >> 16) & 1) && ((ebx >> 17) & 1) && ((ebx >> 30) & 1) && ((ebx >> 31) & 1);
  f.avx512_base = os_avx512 && f_dq_bw_vl;
  f.amx_bf16 = f.avx512_base && os_amx && ((edx >> 22) & 1) && ((edx >> 24) & 1);
  const unsigned max_subleaf = eax;
  if (max_subleaf >= 1) {
    __cpuid_count(7, 1, eax, ebx, ecx, edx);
    f.avx512_bf16 = f.avx512_base && ((eax >> 5) & 1);
  }
  return f;
}

const CpuFeatures& Cpu() {
  static const CpuFeatures features = DetectCpu();
  return features;
}

}  // namespace

bool CpuCanRunBf16() { return Cpu().avx512_base && at::hasMKLDNN(); }
bool CpuHasNativeBf16() { return CpuCanRunBf16() && (Cpu().avx512_bf16 || Cpu().amx_bf16); }

Result<TailPrecision> ParseTailPrecision(std::string_view name) {
  if (name == "fp32") return TailPrecision::kFp32;
  if (name == "auto") return CpuHasNativeBf16() ? TailPrecision::kBf16 : TailPrecision::kFp32;
  if (name != "bf16") {
    return Status::InvalidArgument("unknown tail precision '" + std::string(name) +
                                   "' (expected fp32, bf16 or auto)");
  }
  if (!CpuCanRunBf16()) {
    return Status::InvalidArgument(
        "tail precision bf16 needs a CPU with AVX-512 (BW, VL, DQ) and libtorch built with "
        "oneDNN; this one has not: use fp32 or auto");
  }
  return TailPrecision::kBf16;
}

const char* TailPrecisionName(TailPrecision precision) {
  return precision == TailPrecision::kBf16 ? "bf16" : "fp32";
}

Result<TailPlan> TailPlan::Compile(SplitVisionNetImpl& net, int begin, int end,
                                   TailPrecision precision) {
  if (begin < 0 || end > net.num_blocks() || begin >= end) {
    return Status::InvalidArgument("tail plan: block range [" + std::to_string(begin) + ", " +
                                   std::to_string(end) + ") is not inside the network's " +
                                   std::to_string(net.num_blocks()) + " blocks");
  }
  torch::NoGradGuard no_grad;
  TailPlan plan;
  plan.precision_ = precision;
  plan.dtype_ = precision == TailPrecision::kBf16 ? torch::kBFloat16 : torch::kFloat;
  const torch::ScalarType dtype = plan.dtype_;
  // Conv weights in the activations' dtype and channels-last layout, so oneDNN never
  // reorders them per call; biases in the same dtype (conv2d requires it).
  auto make_conv = [dtype](const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn,
                           const std::string& where) -> Result<Conv> {
    Result<FoldedConv> folded = FoldBatchNorm(conv, bn);
    if (!folded.ok()) return folded.status().WithContext(where);
    Conv c;
    c.weight = folded->weight.to(dtype).contiguous(torch::MemoryFormat::ChannelsLast);
    c.bias = folded->bias.to(dtype).contiguous();
    const auto& options = conv->options;
    c.stride = (*options.stride())[0];
    const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&options.padding());
    if (padding == nullptr) {
      return Status::InvalidArgument(where + ": only explicit conv padding can be planned");
    }
    c.padding = (**padding)[0];
    return c;
  };
  for (int i = begin; i < end; ++i) {
    const std::string where = "tail plan: block " + std::to_string(i);
    VisionBlockImpl& block = net.block(i);
    Step step;
    if (auto* conv = dynamic_cast<ConvBnActImpl*>(&block)) {
      step.kind = Step::Kind::kConv;
      CLEAVE_ASSIGN_OR_RETURN(step.conv, make_conv(conv->conv, conv->bn, where));
      step.relu = block.spec().relu;
    } else if (auto* mb = dynamic_cast<FusedMBConvImpl*>(&block)) {
      step.kind = Step::Kind::kFusedMB;
      CLEAVE_ASSIGN_OR_RETURN(step.conv, make_conv(mb->expand_conv, mb->expand_bn, where));
      CLEAVE_ASSIGN_OR_RETURN(step.project, make_conv(mb->project_conv, mb->project_bn, where));
      step.residual = mb->residual();
    } else if (auto* res = dynamic_cast<ResBlockImpl*>(&block)) {
      step.kind = Step::Kind::kRes;
      CLEAVE_ASSIGN_OR_RETURN(step.conv, make_conv(res->conv1, res->bn1, where));
      CLEAVE_ASSIGN_OR_RETURN(step.project, make_conv(res->conv2, res->bn2, where));
      if (res->projection()) {
        CLEAVE_ASSIGN_OR_RETURN(step.shortcut,
                                make_conv(res->shortcut_conv, res->shortcut_bn, where));
      }
      step.relu = block.spec().relu;
    } else if (dynamic_cast<MaxPoolImpl*>(&block) != nullptr) {
      step.kind = Step::Kind::kMaxPool;
      step.pool_kernel = block.spec().kernel;
      step.pool_stride = block.spec().stride;
    } else if (auto* linear = dynamic_cast<LinearBlockImpl*>(&block)) {
      step.kind = Step::Kind::kLinear;
      step.fc_weight = linear->fc->weight.detach().to(dtype).contiguous();
      step.fc_bias = linear->fc->bias.detach().to(dtype).contiguous();
      step.relu = block.spec().relu;
    } else if (auto* cls = dynamic_cast<ClassifierImpl*>(&block)) {
      step.kind = Step::Kind::kClassifier;
      step.fc_weight = cls->fc->weight.detach().to(dtype).contiguous();
      step.fc_bias = cls->fc->bias.detach().to(dtype).contiguous();
    } else {
      return Status::InvalidArgument(where + ": block type '" + block.spec().type +
                                     "' has no serving form");
    }
    plan.steps_.push_back(std::move(step));
  }
  return plan;
}

torch::Tensor TailPlan::Run(const torch::Tensor& input) const {
  torch::NoGradGuard no_grad;
  torch::Tensor x = input.to(dtype_);
  if (x.dim() == 4) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
  auto conv = [](const torch::Tensor& in, const Conv& c) {
    return torch::conv2d(in, c.weight, c.bias, c.stride, c.padding);
  };
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Step::Kind::kConv:
        x = conv(x, step.conv);
        if (step.relu) x.relu_();
        break;
      case Step::Kind::kFusedMB: {
        torch::Tensor y = conv(conv(x, step.conv).relu_(), step.project);
        x = step.residual ? y.add_(x) : y;
        break;
      }
      case Step::Kind::kRes: {
        torch::Tensor y = conv(conv(x, step.conv).relu_(), step.project);
        y.add_(step.shortcut.weight.defined() ? conv(x, step.shortcut) : x);
        x = step.relu ? y.relu_() : y;
        break;
      }
      case Step::Kind::kMaxPool:
        x = torch::max_pool2d(x, step.pool_kernel, step.pool_stride);
        break;
      case Step::Kind::kLinear:
        x = torch::linear(x.dim() > 2 ? torch::flatten(x, 1) : x, step.fc_weight, step.fc_bias);
        if (step.relu) x.relu_();
        break;
      case Step::Kind::kClassifier:
        x = torch::linear(x.mean({2, 3}), step.fc_weight, step.fc_bias);
        break;
    }
  }
  return x.to(torch::kFloat).contiguous();
}

}  // namespace cleave::split
