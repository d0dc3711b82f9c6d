// `cleave import`: a user's TorchScript model -> a split bundle (kind torchscript-split,
// split/imported_model.h) that cleave-edge, cleave-cloud and `cleave bench split` serve.
//
// With the imported model as the frozen teacher (BottleFit, Matsubara et al. 2022):
//   stage 1  the bottleneck encoder + decoder learn to reproduce the head's output h (MSE),
//            head and tail frozen;
//   stage 2  the tail side (decoder + the model's own tail) is fine-tuned end to end with
//            0.5 CE + 0.5 T^2 KL(teacher || student), T = 4 (Hinton et al. 2015), on features
//            passed through the simulated wire quantizer (u4/u8, ranges fitted on the
//            encoder's outputs after stage 1, split/wire_quant.h). The ranges stay fixed, so
//            the bundle records the ones the tail learned with; by default the encoder's
//            weights are fine-tuned too, through the straight-through quantizer (its
//            BatchNorm statistics fixed), which BottleFit's stage 2 leaves frozen: on held-out
//            rows this recovers most of what the bottleneck costs (finetune_encoder);
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
  // Defaults (channels, stride rule, encoder fine-tuning, epochs) were chosen on held-out
  // rows only, with `cleave bench import`'s example models trained without those rows
  // (examples/train_fashion_mnist.py --exclude-rows), cut after relu2, before any test figure
  // of these settings was computed. Held-out accuracy, imported -> split path without exits:
  //   Fashion-MNIST (32x7x7 map): 4 channels, encoder frozen, 2+2 epochs 92.02 -> 91.48;
  //     encoder fine-tuned 91.96; + 6 channels 92.02 (too many bytes); + 4+4 epochs 92.16,
  //     and the exit then answers 78% of the rows at the calibrated 0.3-point drop (69% with
  //     2+2 epochs: more offloads, over the bytes budget).
  //   RGB 3x32x32 (32x8x8 map): stride 2 (4x4x4 code) 91.70 -> 88.56; stride 1 91.36;
  //     + encoder fine-tuned 91.46; + 4+4 epochs 91.94.
  int bottleneck_channels = 4;
  int bottleneck_stride = 0;  // 1 or 2; 0 = 2 when the cut's map is at least 16x16, else 1
  wire::DType wire_dtype = wire::DType::kUInt4;
  int exit_hidden = 128;  // 0 = no exit
  bool int8 = true;       // quantize the head to int8 where its ops allow (split/head_int8_graph.h)
  int64_t int8_calibration_images = 1024;
  // Stage 2 also trains the bottleneck encoder (through the straight-through wire quantizer,
  // its BatchNorm statistics and the wire ranges fixed) instead of freezing it after stage 1.
  bool finetune_encoder = true;
  int epochs_distill = 4;
  int epochs_finetune = 4;
  int epochs_exit = 2;
  int batch_size = 128;
  double lr = 1e-3;  // peak AdamW rate of the three stages
  CalibrationTarget target{CalibrationTarget::Kind::kMaxAccuracyDrop, 0.3};
  ExitCriterion criterion = ExitCriterion::kMaxSoftmax;
  int64_t held_out = 5000;
  // Training and test images whose converted size (float32) exceeds this are read from the
  // dataset a batch at a time (split/image_rows.h) instead of held in memory; the next batch
  // is read while the current one trains.
  int64_t memory_mb = 4096;
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
