// The `cleave train` pipeline: data -> teacher -> split student (BottleFit stages 1-2) ->
// exits (stage 3) -> wire quantizer, int8 head, exit calibration -> evaluation -> bundle.
// The stages themselves live in split/distill.h, the post-training steps in
// split/post_training.h; this file holds the options and the orchestration.
//
// Data discipline: Fashion-MNIST train (60k) is split with a fixed seed into training rows
// and a held-out set (5k) used only for exit calibration and validation; the test set
// (10k) is used only for the final report. The bundle is written once, at the very end,
// atomically (BundleWriter): an interrupted run (Ctrl-C, `cancelled`) leaves nothing behind.
// Runs on the calling thread; sets libtorch's intra-op thread count and RNG seed.
#pragma once

#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/datasets.h"
#include "common/status.h"
#include "common/tensor_codec.h"
#include "split/distill.h"
#include "split/exit_policy.h"
#include "split/image_rows.h"
#include "split/input_spec.h"
#include "split/train_data.h"

namespace cleave::split {

struct TrainOptions {
  // The dataset (common/image_data.h spec): "fashion-mnist" (the embedded default),
  // "idx:DIR", "cifar:DIR", "folder:DIR", ...
  std::string data = "fashion-mnist";
  int image_size = 0;              // the network's input side; 0 = the data's own (square images)
  std::string preset = "default";  // informational: "default", "long" or "quick"
  // Epochs per stage (0 skips the stage; the teacher must train for the student to copy it).
  int epochs_teacher = 4;
  int epochs_distill = 1;   // stage 1: bottleneck imitates the teacher's features
  int epochs_finetune = 3;  // stage 2: end to end with KD and the simulated wire
  int epochs_exit = 2;      // stage 3: exits with the backbone frozen
  int batch_size = 128;
  double lr = 0.1;  // peak SGD learning rate of the teacher and of stage 2
  uint64_t seed = 1;
  int threads = 2;
  int bottleneck_channels = 2;
  int tail_channels = 64;  // width of the cloud tail (7x7 part) of student and teacher
  int tail_blocks = 2;     // Fused-MBConv blocks in that tail
  // Which network `student_spec` is ("default_split", "residual_split", "tiny_split", a spec
  // file's path; informational, recorded in the bundle's training options).
  std::string model = "default_split";
  // The student; default VisionModelSpec::DefaultSplit(bottleneck_channels, tail_channels,
  // tail_blocks) re-seated for the data's input (ForInput), with TeacherFor(student) as
  // teacher. Tests pass a tiny spec; its teacher is TeacherFor(spec). A given spec is also
  // re-seated for the data's input and normalization.
  std::optional<VisionModelSpec> student_spec;
  wire::DType wire_dtype = wire::DType::kUInt4;
  // drop:0.2@0.9 against the fp32 split model on the held-out set: the 90 % upper confidence
  // bound of the drop, thresholds tested in fixed sequence (CalibrationTarget::confidence).
  // The point estimate (drop:0.2) picks the most aggressive of thousands of thresholds whose
  // held-out drop meets the target, and so overstates what it delivers: on the default bundle
  // it measured 0.40 points below local_fp32 on the test set (79 % answered at the edge)
  // where the issue-19 budget is 0.3. 0.9 is the conventional level, not tuned.
  CalibrationTarget target{CalibrationTarget::Kind::kMaxAccuracyDrop, 0.2, 0.9};
  ExitCriterion criterion = ExitCriterion::kMaxSoftmax;
  int64_t held_out = 5000;
  int64_t train_limit = 0;  // use at most this many training rows (0 = all)
  int64_t test_limit = 0;   // evaluate on at most this many test rows (0 = all)
  // Splits whose converted images (float32) take more than this are read from the dataset
  // a batch at a time instead of held in memory (LoadTrainData).
  int64_t memory_mb = 4096;
  int64_t int8_calibration_images = 1536;
  bool int8 = true;
  std::string int8_engine = "auto";
  // Random crop/flip. Off by default: in a 3-epoch budget it costs accuracy (measured:
  // teacher 90.9% with crop+flip vs 92.4% without, 3 epochs, SGD); worth it for long runs.
  bool augment = false;
  std::FILE* progress_out = stderr;  // progress bars and step lines; null = silent
  std::function<bool()> cancelled;   // polled between batches; may be empty

  // A longer preset for when accuracy matters more than the demo's time budget: teacher 8,
  // fine-tuning 5, exits 3 epochs (about twice the default's time).
  static TrainOptions Long();
  // The preset for tests and smoke runs: 2k training rows, 1 short epoch per stage, 512
  // held-out, 1k test rows; finishes in seconds.
  static TrainOptions Quick();
  // Range checks with messages naming the option (InvalidArgument).
  Status Validate() const;
  nlohmann::json ToJson() const;
};

struct TrainReport {
  std::vector<StageStats> stages;
  double total_seconds = 0;
  nlohmann::json evaluation;  // {"teacher_test_accuracy", "held_out": {...}, "test": {...}}
  nlohmann::json calibration;
  std::string bundle_dir;
  // The summary printed by `cleave train` (accuracies, exit fraction, timings).
  nlohmann::json ToJson() const;
};

// Data handed to the pipeline directly (tests use synthetic sets). `train` is split into
// training and held-out rows by options.held_out/seed; `test` may be empty. `input` is what
// the bundle declares (absent: InputSpec::Legacy of the student spec).
struct TrainData {
  ImageRows train;  // in memory or streamed (split/image_rows.h)
  ImageRows test;
  std::optional<InputSpec> input;
};

// Loads options.data (split/dataset.h), the first train_limit/test_limit rows; a split whose
// converted images exceed options.memory_mb is streamed a batch at a time.
Result<TrainData> LoadTrainData(const TrainOptions& options);

// Runs the whole pipeline and writes the bundle to `out_dir`.
Result<TrainReport> TrainVisionSplit(const TrainOptions& options, const TrainData& data,
                                     const std::filesystem::path& out_dir);

}  // namespace cleave::split
