// Calibrating further split points (split/split_point.h) of a trained vision-split model:
// the wire quantizer of the cut's features, the thresholds of the exits before the cut, a
// threshold sweep an offload policy can choose from, and accuracies on held-out and test
// data, all through the path the daemons run at that point (fp32 blocks -> encoder -> wire
// codec -> decoder -> TailPlan-equivalent fp32 tail).
#pragma once

#include <cstdio>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/status.h"
#include "split/exit_policy.h"
#include "split/image_rows.h"
#include "split/vision_bundle.h"

namespace cleave::split {

// The thresholds a sweep visits (max-softmax style scores in [0, 1], plus "never exit").
const std::vector<double>& SweepThresholds();

// Held-out trade-off of one split point: for every threshold of SweepThresholds, the share
// of rows an exit answers and the accuracy of exits + offloaded rows:
// [{"threshold", "exit_fraction", "accuracy"}, ...] (one entry, threshold kExitDisabled,
// when no exit answers before the cut).
nlohmann::json ThresholdSweep(const std::vector<torch::Tensor>& exit_logits,
                              const torch::Tensor& offloaded, const torch::Tensor& labels,
                              ExitCriterion criterion);

struct SplitPointCalibration {
  int64_t wire_fit_images = 8192;
  CalibrationTarget target;  // as the deployment split's (cleave split passes the bundle's)
  ExitCriterion criterion = ExitCriterion::kMaxSoftmax;
  std::FILE* log = stderr;
};

// Fits `point`'s wire ranges (u8/u4) on `train`, calibrates its exits on `held_out` with
// `options.target` against the fp32 model's held-out accuracy (when an exit answers before
// the cut), and fills point.calibration with the result, the sweep and the test accuracies
// ({"held_out": {...}, "test": {...}, "sweep": [...]}). `model` needs every fp32 part and
// `point` its bottleneck built (if it has one). Errors: the rows', the codec's; a target no
// threshold meets leaves the exits closed (noted in the calibration) rather than failing.
Status CalibrateSplitPoint(VisionSplitModel& model, SplitPoint& point, const ImageRows& train,
                           const ImageRows& held_out, const ImageRows& test,
                           const SplitPointCalibration& options);

}  // namespace cleave::split
