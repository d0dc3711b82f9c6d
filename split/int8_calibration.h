// Activation range calibration for Int8Head (post-training static quantization).
//
// Ranges are observed on the fp32, BatchNorm-folded head over calibration images. kMse
// (the default) builds a histogram of each quantization point's nonzero values and picks,
// among min/max and percentile-clipped ranges (tails of 1e-5, 1e-4, 1e-3 of the values),
// the range whose uint8 grid has the smallest expected squared error (clipping error plus
// step^2/12 rounding error). Exact zeros (ReLU outputs, padding) are free on every grid,
// so they are left out of the histogram. kMinMax is the plain observer, kept for comparison.
#pragma once

#include <torch/torch.h>

#include "common/status.h"
#include "split/int8_ops.h"

namespace cleave::split::int8 {

enum class RangeMethod { kMinMax, kMse };

// Sets every `state.acts[i]` from `images` ([N, C, H, W] floats in [0, 1]), running the float
// path with the weights currently in `weight_float`. Processes images in chunks, so N may be
// large; needs two passes for kMse.
Status CalibrateActivations(Int8HeadState& state, const torch::Tensor& images,
                            RangeMethod method = RangeMethod::kMse);

}  // namespace cleave::split::int8
