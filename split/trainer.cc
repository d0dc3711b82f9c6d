#include "split/trainer.h"

#include <chrono>

#include "split/post_training.h"
#include "split/vision_bundle.h"

namespace cleave::split {
namespace {

using nlohmann::json;

// Stage learning rates relative to TrainOptions::lr (the teacher's peak SGD rate). Stage 1
// and 3 train small modules from scratch with AdamW; stage 2 fine-tunes a converged network.
constexpr double kDistillAdamLr = 3e-3;
constexpr double kExitAdamLr = 3e-3;
constexpr double kFinetuneLrScale = 0.3;

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

void Log(std::FILE* out, const std::string& line) {
  if (out != nullptr) {
    std::fprintf(out, "%s\n", line.c_str());
    std::fflush(out);
  }
}

double TestAccuracy(SplitVisionNetImpl& net, const LabeledImages& set) {
  if (set.size() == 0) return 0.0;
  net.eval();
  return Accuracy(Batched(set.images, 500, [&](const torch::Tensor& x) { return net.forward(x); }),
                  set.labels);
}

}  // namespace

TrainOptions TrainOptions::Quick() {
  TrainOptions o;
  o.quick = true;
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
  if (wire_dtype != wire::DType::kUInt4 && wire_dtype != wire::DType::kUInt8) {
    return bad("--wire-dtype must be u4 or u8");
  }
  if (held_out < 1) return bad("held-out set must have at least one row");
  if (train_limit < 0 || test_limit < 0) return bad("limits must be >= 0");
  if (int8_calibration_images < 1) return bad("int8 calibration needs at least one image");
  return Status::Ok();
}

json TrainOptions::ToJson() const {
  return {{"data_dir", data_dir},
          {"quick", quick},
          {"epochs_teacher", epochs_teacher},
          {"epochs_distill", epochs_distill},
          {"epochs_finetune", epochs_finetune},
          {"epochs_exit", epochs_exit},
          {"batch_size", batch_size},
          {"lr", lr},
          {"seed", seed},
          {"threads", threads},
          {"bottleneck_channels", bottleneck_channels},
          {"wire_dtype", wire::DTypeName(wire_dtype)},
          {"calibration_target", target.ToString()},
          {"criterion", ExitCriterionName(criterion)},
          {"held_out", held_out},
          {"train_limit", train_limit},
          {"test_limit", test_limit},
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
  TrainData data;
  CLEAVE_ASSIGN_OR_RETURN(const ImageDataset train,
                          LoadFashionMnist(DatasetSplit::kTrain, options.data_dir));
  CLEAVE_ASSIGN_OR_RETURN(data.train, ToLabeledImages(train));
  CLEAVE_ASSIGN_OR_RETURN(const ImageDataset test,
                          LoadFashionMnist(DatasetSplit::kTest, options.data_dir));
  CLEAVE_ASSIGN_OR_RETURN(data.test, ToLabeledImages(test));
  return data;
}

Result<TrainReport> TrainVisionSplit(const TrainOptions& options, const TrainData& data,
                                     const std::filesystem::path& out_dir) {
  CLEAVE_RETURN_IF_ERROR(options.Validate());
  const auto start = std::chrono::steady_clock::now();
  torch::set_num_threads(options.threads);
  torch::manual_seed(options.seed);

  // Data: fixed-seed held-out split of the training set; the test set only for the report.
  LabeledImages all = data.train;
  if (options.train_limit > 0) all = all.Head(options.train_limit);
  auto split = HoldOut(all, options.held_out, options.seed);
  if (!split.ok()) return split.status().WithContext("held-out split");
  const LabeledImages& train = split->first;
  const LabeledImages& held_out = split->second;
  LabeledImages test = data.test;
  if (options.test_limit > 0) test = test.Head(options.test_limit);
  Log(options.progress_out, "data: " + std::to_string(train.size()) + " training, " +
                                std::to_string(held_out.size()) + " held-out, " +
                                std::to_string(test.size()) + " test images");

  VisionModelSpec student_spec = VisionModelSpec::DefaultSplit(options.bottleneck_channels);
  VisionModelSpec teacher_spec = VisionModelSpec::DefaultTeacher();
  if (options.student_spec) {
    CLEAVE_RETURN_IF_ERROR(options.student_spec->Validate());
    student_spec = *options.student_spec;
    CLEAVE_ASSIGN_OR_RETURN(teacher_spec, TeacherFor(student_spec));
  }
  if (student_spec.split_after < 0) {
    return Status::InvalidArgument("the student spec has no split point");
  }
  TrainReport report;
  StageConfig base;
  base.batch_size = options.batch_size;
  base.augment = options.augment;
  base.progress_out = options.progress_out;
  base.cancelled = options.cancelled;

  try {
    // Teacher.
    SplitVisionNet teacher(teacher_spec);
    StageConfig config = base;
    config.label = "teacher";
    config.epochs = options.epochs_teacher;
    config.lr = options.lr;
    CLEAVE_ASSIGN_OR_RETURN(StageStats stats, TrainTeacher(*teacher, train, config));
    report.stages.push_back(stats);
    const double teacher_test = TestAccuracy(*teacher, test);
    const double teacher_held = TestAccuracy(*teacher, held_out);
    Log(options.progress_out, "teacher: test accuracy " + std::to_string(teacher_test));

    // Student initialised from the teacher, then BottleFit stages 1 and 2, then the exits.
    SplitVisionNet student(student_spec);
    CLEAVE_RETURN_IF_ERROR(InitStudentFromTeacher(*student, *teacher));
    if (options.epochs_distill > 0) {
      config = base;
      config.label = "stage1-distill";
      config.epochs = options.epochs_distill;
      config.lr = kDistillAdamLr;
      config.weight_decay = 0;
      CLEAVE_ASSIGN_OR_RETURN(stats, DistillBottleneck(*student, *teacher, train, config));
      report.stages.push_back(stats);
    }
    WireRangeTracker wire(options.wire_dtype, /*momentum=*/0.05);
    if (options.epochs_finetune > 0) {
      config = base;
      config.label = "stage2-finetune";
      config.epochs = options.epochs_finetune;
      config.lr = options.lr * kFinetuneLrScale;
      CLEAVE_ASSIGN_OR_RETURN(stats, FinetuneWithWire(*student, *teacher, train, config, wire));
      report.stages.push_back(stats);
    }
    if (options.epochs_exit > 0 && !student_spec.exits.empty()) {
      config = base;
      config.label = "stage3-exits";
      config.epochs = options.epochs_exit;
      config.lr = kExitAdamLr;
      config.weight_decay = 1e-4;
      CLEAVE_ASSIGN_OR_RETURN(stats, TrainExits(*student, train, config));
      report.stages.push_back(stats);
    }
    if (options.cancelled && options.cancelled()) {
      return Status::FailedPrecondition("interrupted; nothing was written");
    }

    // Wire quantizer, int8 head, calibration and evaluation.
    const auto post_start = std::chrono::steady_clock::now();
    VisionSplitModel model;
    model.spec = student_spec;
    model.net = student;
    model.wire_dtype = options.wire_dtype;
    if (wire.initialized()) model.wire_quant = wire.Params();
    model.evaluation = {{"teacher_test_accuracy", teacher_test},
                        {"teacher_held_out_accuracy", teacher_held}};
    FinalizeOptions finalize;
    finalize.int8 = options.int8;
    finalize.int8_engine = options.int8_engine;
    finalize.int8_calibration_images = options.int8_calibration_images;
    finalize.target = options.target;
    finalize.criterion = options.criterion;
    finalize.log = options.progress_out;
    CLEAVE_RETURN_IF_ERROR(FinalizeSplitModel(model, train, held_out, test, finalize));
    StageStats post;
    post.name = "post-training";
    post.seconds = Seconds(post_start);
    report.stages.push_back(post);

    json stage_list = json::array();
    for (const auto& s : report.stages) stage_list.push_back(s.ToJson());
    model.training = options.ToJson();
    model.training["stages"] = stage_list;
    model.training["teacher_spec"] = teacher_spec.ToJson();
    if (options.cancelled && options.cancelled()) {
      return Status::FailedPrecondition("interrupted; nothing was written");
    }
    CLEAVE_RETURN_IF_ERROR(WriteVisionBundle(out_dir, model));
    report.evaluation = model.evaluation;
    report.calibration = model.calibration;
  } catch (const c10::Error& e) {
    return Status::Internal(std::string("training failed inside libtorch: ") +
                            e.what_without_backtrace());
  }
  report.bundle_dir = out_dir.string();
  report.total_seconds = Seconds(start);
  return report;
}

}  // namespace cleave::split
