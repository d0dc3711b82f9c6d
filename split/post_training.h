// After training: fit the wire quantizer, quantize the head to int8, calibrate the exit
// thresholds on held-out data through the deployed path, and measure accuracies.
//
// Shared by `cleave train` (right after the training stages) and `cleave split` (re-quantize
// or re-calibrate an existing bundle). The "deployed path" is what the daemons run:
// int8 head (exits + encoder) on the edge -> wire codec (u4/u8, real EncodeTensor and
// DecodeTensor) -> fp32 decoder + tail in the cloud. All functions run on the calling thread
// under NoGradGuard and leave the network in eval() mode.
#pragma once

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/status.h"
#include "split/exit_policy.h"
#include "split/image_rows.h"
#include "split/train_data.h"
#include "split/vision_bundle.h"

namespace cleave::split {

// Logits of one image set along every path we report.
struct PathLogits {
  torch::Tensor local_fp32;                   // whole fp32 model, fp32 features
  torch::Tensor fp32_head_wire;               // fp32 head -> wire -> tail
  torch::Tensor deployed;                     // int8 head -> wire -> tail (fp32 head if no int8)
  std::vector<torch::Tensor> exits_deployed;  // exit logits from the int8 head (or fp32)
  std::vector<torch::Tensor> exits_fp32;      // exit logits from the fp32 head
};

// Runs the images of `rows` through every path of `model` (which must have all fp32 parts,
// and the int8 head when `model.int8_head` is set), `batch` rows at a time. Errors from
// reading the rows, the codec or Int8Head::Forward.
Result<PathLogits> RunPaths(VisionSplitModel& model, const ImageRows& rows, int64_t batch = 500);

// Per row: the exit's prediction where `policy` exits, else the offloaded prediction.
// Returns (accuracy, exit fraction) against `labels`.
std::pair<double, double> ExitPolicyAccuracy(const std::vector<torch::Tensor>& exits,
                                             const torch::Tensor& offloaded,
                                             const torch::Tensor& labels, const ExitPolicy& policy);

// Accuracies of `logits` against `labels` under `policy`:
// {"local_fp32", "split_no_exit", "split_no_exit_fp32_head", "exit_accuracy": [...],
//  "split_exit", "exit_fraction", "split_exit_fp32_head", "exit_fraction_fp32_head", "rows"}.
nlohmann::json EvaluatePaths(const PathLogits& logits, const torch::Tensor& labels,
                             const ExitPolicy& policy);

struct FinalizeOptions {
  // Recompute the wire ranges from training features (always when the dtype changes or
  // model.wire_quant is empty); otherwise keep the ranges the tail was fine-tuned with.
  bool refit_wire = false;
  bool int8 = true;                  // quantize the head (else keep the fp32 head deployed)
  std::string int8_engine = "auto";  // recorded in the bundle; the edge may pick another
  int64_t int8_calibration_images = 1536;
  int64_t wire_fit_images = 8192;
  // Fit an entropy model of the quantized features (u8/u4 wires), for version 2 requests.
  bool entropy = true;
  CalibrationTarget target;  // the caller sets it (cleave train: TrainOptions::target)
  ExitCriterion criterion = ExitCriterion::kMaxSoftmax;
  // Bound "drop" against the fp32 split model's held-out accuracy (the benchmark's
  // local_fp32), not against the deployed path's, so int8/u4 losses count against it.
  bool drop_vs_fp32 = true;
  std::FILE* log = stderr;  // one line per step; null for silence
};

// Fills model.wire_quant (if needed), model.int8_head + int8_info, model.exit_policy +
// calibration, and model.evaluation["held_out"] / ["test"] (other keys of evaluation are
// kept). `train` supplies int8/wire calibration images, `held_out` the exit calibration
// set, `test` the final report (may be empty: then any older "test" entry is removed).
Status FinalizeSplitModel(VisionSplitModel& model, const ImageRows& train,
                          const ImageRows& held_out, const ImageRows& test,
                          const FinalizeOptions& options);

}  // namespace cleave::split
