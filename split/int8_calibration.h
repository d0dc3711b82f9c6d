// Activation range calibration for Int8Head (post-training static quantization).
//
// Each quantization point gets the min/max of its fp32 (BatchNorm-folded) activations over
// the calibration images, widened to include 0. Percentile and MSE-optimal clipping (tails
// of 1e-5..1e-3, chosen per tensor from a histogram) were measured against this on a
// briefly trained DefaultSplit(2) (Fashion-MNIST, 84.7% fp32): accuracy moved by less than
// the 2000-image noise (+-0.3%) and the bottleneck's relative error was no better (min/max
// 1.5%, 99.999%: 2.0%, 99.99%: 1.6%, 99.9%: 3.4%), so the simpler observer stays.
#pragma once

#include <torch/torch.h>

#include "common/status.h"
#include "split/int8_ops.h"

namespace cleave::split::int8 {

// Sets every `state.acts[i]` from `images` ([N, C, H, W] floats in [0, 1]), running the
// float path with the weights currently in `weight_float`, in chunks (N may be large).
// InvalidArgument if an activation is not finite.
Status CalibrateActivations(Int8HeadState& state, const torch::Tensor& images);

}  // namespace cleave::split::int8
