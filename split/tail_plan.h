// The serving form of a range of blocks of a SplitVisionNet: what cleave-cloud computes.
//
// Training code runs the network as torch::nn modules: every conv is followed by a separate
// BatchNorm op, activations are NCHW, and everything is fp32. A serving process computes the
// same function many thousand times a second, so `TailPlan::Compile` lowers the blocks once,
// the way inference compilers do (torch.jit.freeze / optimize_for_inference, TensorRT):
//   - BatchNorm is folded into the convolution before it (running statistics, eval
//     semantics), halving the ops per block;
//   - activations and conv weights are kept channels-last (NHWC), the layout oneDNN's
//     convolutions work in, so no reorder runs between layers;
//   - optionally the weights and activations are bfloat16 (`TailPrecision::kBf16`). oneDNN
//     then runs the convolutions on the CPU's bf16 units (AMX tiles or AVX512-BF16
//     dot products) with fp32 accumulation. bf16 keeps fp32's exponent range and 8 bits of
//     mantissa; the accuracy cost is measured per bundle by `cleave bench split`
//     (docs/benchmarks.md), never assumed.
// The plan is numerically the module's forward up to float rounding in fp32; the unit tests
// hold it to that (tests/unit/split/tail_plan_test.cc).
//
// Threads: Run is const and allocates its own tensors, but libtorch ops share the intra-op
// pool; callers serialize as for CloudModel.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <torch/torch.h>

#include "common/status.h"
#include "split/vision_model.h"

namespace cleave::split {

enum class TailPrecision { kFp32, kBf16 };

// "fp32" | "bf16" | "auto". "auto" is bf16 when the CPU computes bf16 natively
// (CpuHasNativeBf16) and fp32 otherwise. InvalidArgument names the accepted values. "bf16"
// on a CPU without AVX-512 is refused (libtorch would fall back to slow emulation).
Result<TailPrecision> ParseTailPrecision(std::string_view name);
const char* TailPrecisionName(TailPrecision precision);

// Whether this CPU has AMX-BF16 or AVX512-BF16 and the AVX-512 base oneDNN needs for bf16
// (read with cpuid; the kernel's XSAVE support is checked through XGETBV).
bool CpuHasNativeBf16();
// Whether libtorch can run bf16 convolutions here at all (AVX-512 BW/VL/DQ, oneDNN built in).
bool CpuCanRunBf16();

class TailPlan {
 public:
  TailPlan() = default;

  // Lowers blocks [begin, end) of `net` (which must be in eval mode for BatchNorm folding to
  // mean what serving means). Errors: InvalidArgument for a bad range or a block type the
  // plan does not know; the folding errors of FoldBatchNorm, with the block index.
  static Result<TailPlan> Compile(SplitVisionNetImpl& net, int begin, int end,
                                  TailPrecision precision);

  // x: float (any layout) [N, ...] as block `begin` expects -> float [N, ...] (contiguous),
  // the output of block end-1. Throws c10::Error like any libtorch call; CloudModel turns it
  // into a Status.
  torch::Tensor Run(const torch::Tensor& x) const;

  TailPrecision precision() const { return precision_; }
  int num_steps() const { return static_cast<int>(steps_.size()); }

 private:
  struct Conv {
    torch::Tensor weight, bias;
    int64_t stride = 1, padding = 0;
  };
  struct Step {
    enum class Kind { kConv, kFusedMB, kRes, kMaxPool, kLinear, kClassifier } kind = Kind::kConv;
    Conv conv;          // kConv; kFusedMB: the 3x3 expansion; kRes: conv1
    Conv project;       // kFusedMB: the 1x1 projection; kRes: conv2
    Conv shortcut;      // kRes: the 1x1 projection (weight undefined: identity)
    bool relu = false;  // kConv, kLinear; kRes: after the sum
    bool residual = false;
    int64_t pool_kernel = 2, pool_stride = 2;  // kMaxPool
    torch::Tensor fc_weight, fc_bias;          // kLinear, kClassifier
  };

  TailPrecision precision_ = TailPrecision::kFp32;
  torch::ScalarType dtype_ = torch::kFloat;
  std::vector<Step> steps_;
};

}  // namespace cleave::split
