// Training stages of the split vision model, BottleFit-style (Matsubara et al., "BottleFit:
// Learning Compressed Representations in Deep Neural Networks for Effective and Efficient
// Split Computing", 2022):
//   teacher  - the unsplit network trained with cross-entropy;
//   stage 1  - the student's head (copied from the teacher) is frozen and only the bottleneck
//              encoder+decoder learn to reproduce the teacher's features (MSE);
//   stage 2  - end-to-end fine-tuning with cross-entropy plus knowledge distillation from
//              the teacher (Hinton et al., "Distilling the Knowledge in a Neural Network",
//              2015), with the encoder output passed through simulated wire quantization;
//   stage 3  - the early exits learn with the backbone frozen (cross-entropy plus KD from
//              the student's own final classifier, as in BranchyNet-style self-distillation).
// Every stage runs on the calling thread, reports progress with an ETA, and polls
// `cancelled` between batches (returning FailedPrecondition "interrupted" when it fires).
#pragma once

#include <cstdio>
#include <functional>
#include <string>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/status.h"
#include "split/image_rows.h"
#include "split/train_data.h"
#include "split/vision_model.h"
#include "split/wire_quant.h"

namespace cleave::split {

struct StageConfig {
  std::string label;  // progress-bar label, e.g. "teacher"
  int epochs = 1;
  int batch_size = 128;
  double lr = 0.1;  // peak learning rate of the warm-up + cosine schedule
  double weight_decay = 5e-4;
  bool augment = true;
  AugmentOptions augment_options;
  std::FILE* progress_out = stderr;  // null: no progress bar
  std::function<bool()> cancelled;   // may be empty
};

struct StageStats {
  std::string name;
  double seconds = 0;   // wall time of the whole stage (including cached inference passes)
  int64_t samples = 0;  // training samples processed (epochs x rows)
  double samples_per_second = 0;  // of the training loop alone
  double final_loss = 0;          // moving average of the loss over the last batches
  nlohmann::json ToJson() const;
};

// Stores every 4-D parameter of `module` in `format`. Training runs channels-last (oneDNN's
// native layout: ~10% more samples/s measured on the default nets here); bundles and the
// int8 quantizer get contiguous tensors back. Values are unchanged.
void SetMemoryFormat(torch::nn::Module& module, c10::MemoryFormat format);

// Teacher: cross-entropy with label smoothing 0.1, SGD + Nesterov momentum.
Result<StageStats> TrainTeacher(SplitVisionNetImpl& teacher, const ImageRows& train,
                                const StageConfig& config);

// Copies teacher blocks into the student: blocks [0, student encoder) one to one, and the
// blocks after the student's decoder from teacher block (encoder index + 1) on. The shapes
// must agree (InvalidArgument naming the block otherwise). The bottleneck pair and the
// exits keep their fresh initialization.
Status InitStudentFromTeacher(SplitVisionNetImpl& student, SplitVisionNetImpl& teacher);

// Index of the student's encoder and decoder blocks (by role); InvalidArgument if absent or
// not adjacent.
Result<std::pair<int, int>> BottleneckBlocks(const VisionModelSpec& spec);

// The teacher of a student: the student's encoder+decoder pair replaced by one block (encoder
// input -> decoder output channels, encoder stride), no exits, no split. The block is a "res"
// BasicBlock when the block before the encoder is one (ResidualSplit), else a Fused-MBConv
// with expansion 2; for DefaultSplit(c) the teacher is DefaultTeacher(). InvalidArgument
// without a bottleneck.
Result<VisionModelSpec> TeacherFor(const VisionModelSpec& student);

// Stage 1: encoder+decoder (AdamW) reproduce teacher block `encoder` output; head frozen.
Result<StageStats> DistillBottleneck(SplitVisionNetImpl& student, SplitVisionNetImpl& teacher,
                                     const ImageRows& train, const StageConfig& config);

// Stage 2: end-to-end fine-tuning, loss = 0.5 CE + 0.5 T^2 KL(teacher || student) with T = 4,
// encoder output fake-quantized with ranges from `wire` (updated every batch).
Result<StageStats> FinetuneWithWire(SplitVisionNetImpl& student, SplitVisionNetImpl& teacher,
                                    const ImageRows& train, const StageConfig& config,
                                    WireRangeTracker& wire);

// Stage 3: exits (AdamW) with the backbone frozen; loss = 0.5 CE + 0.5 T^2 KL(final || exit).
Result<StageStats> TrainExits(SplitVisionNetImpl& student, const ImageRows& train,
                              const StageConfig& config);

}  // namespace cleave::split
