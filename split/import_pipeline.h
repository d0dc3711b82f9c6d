// `cleave import`: a user's TorchScript model -> a split bundle (kind torchscript-split,
// split/imported_model.h) that cleave-edge, cleave-cloud and `cleave bench split` serve.
//
// With the imported model as the frozen teacher (BottleFit, Matsubara et al. 2022):
//   stage 1  the bottleneck encoder + decoder learn to reproduce the head's output h (MSE),
//            head and tail frozen;
//   stage 2  the tail side (decoder + the model's own tail) is fine-tuned end to end with
//            0.5 CE + 0.5 T^2 KL(teacher || student), T = 4 (Hinton et al. 2015), on features
//            passed through the simulated wire quantizer (u4/u8, ranges fitted on the frozen
//            encoder's outputs, split/wire_quant.h); the encoder stays frozen so the ranges the
//            bundle records are the ones the tail learned with;
//   stage 3  exits on h learn with the backbone frozen (0.5 CE + 0.5 KD from the teacher).
// Then the head is quantized to int8 where its ops allow (post-training, activation ranges
// from training images; split/head_int8_graph.h), and the exit threshold is calibrated on held-out
// rows of the training split against the imported model's own held-out accuracy (drop:X) through
// the deployed path (int8 head -> exits and encoder -> real wire codec -> decoder -> tail), and the
// imported model, the split path with and without exits are evaluated on the test split. The bundle
// is written once, at the end, atomically; an interrupted run leaves nothing behind.
#pragma once

#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "common/tensor_codec.h"
#include "split/distill.h"
#include "split/exit_policy.h"

namespace cleave::split {

struct ImportOptions {
  std::string torchscript;  // the .pt file
  std::string split_after;  // a cut name (TorchScriptModel::CutPoints)
  std::string data = "fashion-mnist";
  int image_size = 0;             // model input side; 0 = the data's own
  std::vector<float> mean{0.0f};  // normalization cleave applies before the head
  std::vector<float> std{1.0f};   // (default: none; the model normalizes itself)
  std::string name;               // bundle model name; "" = the file's stem
  // 4, chosen on held-out rows with the example model cut after relu2 (32x7x7): split path
  // 92.78% with 4 channels against 91.44% with 2 (u4, 2 + 2 epochs); more epochs did not help.
  int bottleneck_channels = 4;
  int bottleneck_stride = 0;  // 1 or 2; 0 = 2 when the cut's map is at least 8x8, else 1
  wire::DType wire_dtype = wire::DType::kUInt4;
  int exit_hidden = 128;  // 0 = no exit
  bool int8 = true;       // quantize the head to int8 where its ops allow (split/head_int8_graph.h)
  int64_t int8_calibration_images = 1024;
  // Stage 2 also trains the bottleneck encoder (through the straight-through wire quantizer,
  // its BatchNorm statistics and the wire ranges fixed) instead of freezing it after stage 1.
  bool finetune_encoder = false;
  int epochs_distill = 2;
  int epochs_finetune = 2;
  int epochs_exit = 2;
  int batch_size = 128;
  double lr = 1e-3;  // peak AdamW rate of the three stages
  CalibrationTarget target{CalibrationTarget::Kind::kMaxAccuracyDrop, 0.3};
  ExitCriterion criterion = ExitCriterion::kMaxSoftmax;
  int64_t held_out = 5000;
  int64_t train_limit = 0;
  int64_t test_limit = 0;
  uint64_t seed = 1;
  int threads = 2;
  std::FILE* progress_out = stderr;
  std::function<bool()> cancelled;

  // For tests and smoke runs: 2k training rows, one short epoch per stage.
  static ImportOptions Quick();
  Status Validate() const;
  nlohmann::json ToJson() const;
};

struct ImportReport {
  std::vector<StageStats> stages;
  double import_seconds = 0;  // bottleneck + exits + calibration + evaluation
  nlohmann::json evaluation;  // {"held_out": {...}, "test": {...}}
  nlohmann::json calibration;
  nlohmann::json int8;  // engine, weight_bytes, int8_ops_fraction, int8_macs_fraction; or null
  std::string bundle_dir;
  nlohmann::json ToJson() const;
};

// Runs the whole import and writes the bundle to `out_dir`. Errors: those of loading the
// model, resolving the cut (with the valid names), loading the data, and training.
Result<ImportReport> ImportTorchScript(const ImportOptions& options,
                                       const std::filesystem::path& out_dir);

}  // namespace cleave::split
