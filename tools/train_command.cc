#include "tools/train_command.h"

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/shutdown.h"
#include "split/compute_runtime.h"
#include "split/dataset.h"
#include "split/image_rows.h"
#include "split/latency_profile.h"
#include "split/model_spec_file.h"
#include "split/post_training.h"
#include "split/split_point.h"
#include "split/split_point_calibration.h"
#include "split/trainer.h"
#include "split/vision_bundle.h"
#include "tools/command_error.h"
#include "tools/data_option.h"

namespace cleave::tools {

using split::CalibrationTarget;
using split::ExitCriterionName;
using split::FinalizeOptions;
using split::FinalizeSplitModel;
using split::HoldOut;
using split::LabeledImages;
using split::ParseExitCriterion;
using split::TrainData;
using split::TrainOptions;
using split::TrainReport;
using split::VisionBundleParts;
using split::VisionSplitModel;
using split::WriteVisionBundle;
namespace {

using nlohmann::json;

template <typename T>
T OrFail(const std::string& command, Result<T> result) {
  if (!result.ok()) Fail(command, result.status());
  return std::move(result).value();
}

struct TrainArgs {
  TrainOptions options;
  std::string out;
  std::string wire_dtype = "u4";
  std::string calibrate = TrainOptions().target.ToString();
  std::string criterion = "max_softmax";
  bool quick = false;
  bool long_preset = false;
  bool no_int8 = false;
  bool augment = false;
  bool quiet = false;
  std::string data_dir;  // --data-dir, the older form of --data fashion-mnist:DIR
  std::string model = "default_split";
  std::string model_spec;  // --model-spec FILE
};

struct SplitArgs {
  std::string bundle;
  std::string out;
  std::string calibrate;
  std::string criterion;
  std::string wire_dtype;
  std::string int8_engine = "auto";
  std::string data;  // default: the dataset the bundle was trained on
  std::string data_dir;
  int threads = 2;
  bool no_int8 = false;
  bool quiet = false;
  std::vector<std::string> add_splits;  // AFTER[:DTYPE]
  bool clear_splits = false;
};

// "AFTER[:DTYPE]" of --add-split: a plain cut after block AFTER (u8 on the wire by default).
Result<split::SplitPoint> ParseAddSplit(const std::string& text,
                                        const split::VisionModelSpec& spec) {
  const size_t colon = text.find(':');
  const std::string block = text.substr(0, colon);
  int after = -1;
  try {
    size_t used = 0;
    after = std::stoi(block, &used);
    if (used != block.size()) after = -1;
  } catch (const std::exception&) {
    after = -1;
  }
  if (after < 0) {
    return Status::InvalidArgument("--add-split " + text +
                                   ": expected AFTER[:DTYPE], AFTER a block index");
  }
  wire::DType dtype = wire::DType::kUInt8;
  if (colon != std::string::npos) {
    CLEAVE_ASSIGN_OR_RETURN(dtype, wire::ParseDType(text.substr(colon + 1)));
  }
  if (after == spec.split_after) {
    return Status::InvalidArgument("--add-split " + text + ": block " + block +
                                   " is already the deployment split");
  }
  auto point = split::SplitPoint::Plain(spec, after, dtype);
  if (!point.ok()) return point.status().WithContext("--add-split " + text);
  return point;
}

// Epoch counts and the data/size knobs a preset sets; any of them given explicitly on the
// command line wins over the preset.
void ApplyPreset(const TrainOptions& preset, const CLI::App& cmd, TrainOptions& options) {
  const auto keep = [&cmd](const char* flag) { return cmd.count(flag) > 0; };
  const TrainOptions given = options;
  options = preset;
  options.data = given.data;
  options.image_size = given.image_size;
  options.batch_size = given.batch_size;
  options.lr = given.lr;
  options.seed = given.seed;
  options.threads = given.threads;
  options.bottleneck_channels = given.bottleneck_channels;
  if (keep("--epochs-teacher")) options.epochs_teacher = given.epochs_teacher;
  if (keep("--epochs-distill")) options.epochs_distill = given.epochs_distill;
  if (keep("--epochs-finetune")) options.epochs_finetune = given.epochs_finetune;
  if (keep("--epochs-exit")) options.epochs_exit = given.epochs_exit;
  if (keep("--held-out")) options.held_out = given.held_out;
  if (keep("--tail-channels")) options.tail_channels = given.tail_channels;
  if (keep("--tail-blocks")) options.tail_blocks = given.tail_blocks;
}

// The student network: --model (a preset, sized by --bottleneck-channels, --tail-channels and
// --tail-blocks where it has those knobs) or --model-spec FILE. Leaves options.student_spec
// unset for default_split, which the trainer builds from the size options itself.
Status ChooseStudent(const TrainArgs& args, const CLI::App& cmd, TrainOptions& options) {
  const bool sized = cmd.count("--bottleneck-channels") > 0 || cmd.count("--tail-channels") > 0 ||
                     cmd.count("--tail-blocks") > 0;
  if (!args.model_spec.empty()) {
    if (cmd.count("--model") > 0) {
      return Status::InvalidArgument("give --model or --model-spec, not both");
    }
    if (sized) {
      return Status::InvalidArgument(
          "--bottleneck-channels, --tail-channels and --tail-blocks size the presets; the "
          "model spec file sets its own sizes");
    }
    CLEAVE_ASSIGN_OR_RETURN(options.student_spec, split::LoadVisionModelSpecFile(args.model_spec));
    options.model = args.model_spec;
    return Status::Ok();
  }
  options.model = args.model;
  if (args.model == "default_split") return Status::Ok();
  if (args.model == "residual_split") {
    if (cmd.count("--bottleneck-channels") == 0) {
      options.bottleneck_channels = split::VisionModelSpec::kResidualSplitBottleneck;
    }
    options.student_spec = split::VisionModelSpec::ResidualSplit(
        options.bottleneck_channels, options.tail_channels, options.tail_blocks);
    return Status::Ok();
  }
  if (args.model == "tiny_split") {
    if (sized) return Status::InvalidArgument("tiny_split has fixed sizes");
    options.student_spec = split::VisionModelSpec::TinySplit();
    return Status::Ok();
  }
  return Status::InvalidArgument("unknown --model '" + args.model +
                                 "' (default_split, residual_split, tiny_split; or give "
                                 "--model-spec FILE)");
}

void RunTrain(TrainArgs& args, const CLI::App& cmd) {
  TrainOptions options = args.options;
  if (args.quick && args.long_preset) {
    Fail("train", Status::InvalidArgument("--quick and --long exclude each other"));
  }
  if (args.quick) ApplyPreset(TrainOptions::Quick(), cmd, options);
  if (args.long_preset) ApplyPreset(TrainOptions::Long(), cmd, options);
  options.data = OrFail("train", ResolveDataSpec(options.data, args.data_dir));
  options.wire_dtype = OrFail("train", wire::ParseDType(args.wire_dtype));
  options.target = OrFail("train", CalibrationTarget::Parse(args.calibrate));
  options.criterion = OrFail("train", ParseExitCriterion(args.criterion));
  options.int8 = !args.no_int8;
  options.augment = args.augment;
  options.progress_out = args.quiet ? nullptr : stderr;
  const Status student = ChooseStudent(args, cmd, options);
  if (!student.ok()) Fail("train", student);
  const Status valid = options.Validate();
  if (!valid.ok()) Fail("train", valid);

  InstallShutdownHandlers();
  options.cancelled = [] { return ShutdownRequested(); };
  split::SetComputeThreads(options.threads);
  const TrainData data = OrFail("train", LoadTrainData(options));
  const TrainReport report = OrFail("train", TrainVisionSplit(options, data, args.out));
  std::cout << report.ToJson().dump(2) << std::endl;
}

void RunSplit(SplitArgs& args) {
  const std::string cmd = "split";
  split::SetComputeThreads(args.threads);
  const Bundle bundle = OrFail(cmd, Bundle::Open(args.bundle));
  VisionBundleParts parts;  // every fp32 part: re-quantization starts from the fp32 model
  VisionSplitModel model = OrFail(cmd, ReadVisionBundle(bundle, parts));

  const json& training = model.training;
  FinalizeOptions finalize;
  finalize.log = args.quiet ? nullptr : stderr;
  finalize.int8 = !args.no_int8;
  finalize.int8_engine = args.int8_engine;
  finalize.int8_calibration_images = training.value("int8_calibration_images", int64_t{1536});
  if (!args.wire_dtype.empty()) {
    const wire::DType dtype = OrFail(cmd, wire::ParseDType(args.wire_dtype));
    if (dtype != wire::DType::kUInt4 && dtype != wire::DType::kUInt8) {
      Fail(cmd, Status::InvalidArgument("--wire-dtype must be u4 or u8"));
    }
    finalize.refit_wire = dtype != model.wire_dtype;
    model.wire_dtype = dtype;
  }
  const std::string target_text =
      !args.calibrate.empty()
          ? args.calibrate
          : training.value("calibration_target", TrainOptions().target.ToString());
  finalize.target = OrFail(cmd, CalibrationTarget::Parse(target_text));
  const std::string criterion_text =
      !args.criterion.empty() ? args.criterion : ExitCriterionName(model.exit_policy.criterion());
  finalize.criterion = OrFail(cmd, ParseExitCriterion(criterion_text));

  // Rebuild exactly the training/held-out split the bundle was calibrated on.
  // The data: the bundle's own dataset unless --data/--data-dir say otherwise, converted to
  // the input the bundle declares.
  TrainOptions options;
  const std::string bundle_data = model.input.data.empty() ? "fashion-mnist" : model.input.data;
  const std::string data_spec =
      args.data.empty() && args.data_dir.empty()
          ? bundle_data
          : OrFail(cmd,
                   ResolveDataSpec(args.data.empty() ? "fashion-mnist" : args.data, args.data_dir));
  options.seed = training.value("seed", uint64_t{1});
  options.held_out = training.value("held_out", int64_t{5000});
  options.train_limit = training.value("train_limit", int64_t{0});
  options.test_limit = training.value("test_limit", int64_t{0});
  // Only the held-out rows and a few thousand training rows are read in full: a large
  // dataset is streamed (split/image_rows.h).
  const int64_t budget = options.memory_mb * (int64_t{1} << 20);
  const split::ImageRows all =
      OrFail(cmd, split::OpenRows(data_spec, DatasetSplit::kTrain, model.input, options.train_limit,
                                  budget, args.threads, finalize.log));
  const split::ImageRows test =
      OrFail(cmd, split::OpenRows(data_spec, DatasetSplit::kTest, model.input, options.test_limit,
                                  budget, args.threads, finalize.log));
  auto split = OrFail(cmd, split::HoldOut(all, options.held_out, options.seed));

  const Status finalized = FinalizeSplitModel(model, split.first, split.second, test, finalize);
  if (!finalized.ok()) Fail(cmd, finalized);
  // Further split points: every one is re-calibrated with the deployment split's target.
  if (args.clear_splits) model.splits.clear();
  for (const std::string& text : args.add_splits) {
    split::SplitPoint point = OrFail(cmd, ParseAddSplit(text, model.spec));
    for (const split::SplitPoint& have : model.splits) {
      if (have.after == point.after && !have.bottleneck) {
        Fail(cmd, Status::InvalidArgument("--add-split " + text +
                                          ": the bundle already cuts after block " +
                                          std::to_string(point.after)));
      }
    }
    model.splits.push_back(std::move(point));
  }
  split::SplitPointCalibration point_options;
  point_options.target = finalize.target;
  point_options.criterion = finalize.criterion;
  point_options.log = finalize.log;
  for (split::SplitPoint& point : model.splits) {
    const Status calibrated =
        split::CalibrateSplitPoint(model, point, split.first, split.second, test, point_options);
    if (!calibrated.ok()) Fail(cmd, calibrated);
  }
  const Status profiled = split::AttachLatencyProfile(model);
  if (!profiled.ok()) Fail(cmd, profiled.WithContext("latency profile"));
  model.training["resplit"] = {{"calibration_target", finalize.target.ToString()},
                               {"criterion", ExitCriterionName(finalize.criterion)},
                               {"wire_dtype", wire::DTypeName(model.wire_dtype)},
                               {"int8_engine", args.int8_engine}};
  const std::string out = args.out.empty() ? args.bundle : args.out;
  const Status written = WriteVisionBundle(out, model);
  if (!written.ok()) Fail(cmd, written);
  json summary = {{"bundle", out},
                  {"calibration", model.calibration},
                  {"wire_dtype", wire::DTypeName(model.wire_dtype)},
                  {"int8", model.int8_info},
                  {"test", model.evaluation.value("test", json::object())},
                  {"held_out", model.evaluation.value("held_out", json::object())}};
  json points = json::array();
  for (const split::SplitPoint& point : model.splits) {
    points.push_back({{"after", point.after},
                      {"wire_dtype", wire::DTypeName(point.wire_dtype)},
                      {"feature_shape", point.feature_shape},
                      {"held_out", point.calibration.value("held_out", json::object())},
                      {"test", point.calibration.value("test", json::object())}});
  }
  summary["splits"] = points;
  summary["profile"] = model.profile;
  std::cout << summary.dump(2) << std::endl;
}

}  // namespace

void RegisterTrainCommands(CLI::App& app) {
  auto train_args = std::make_shared<TrainArgs>();
  CLI::App* train = app.add_subcommand(
      "train",
      "Train a teacher and split model on --data (Fashion-MNIST by default) (BottleFit stages: "
      "bottleneck "
      "distillation, end-to-end fine-tuning with KD and simulated u4 wire, early exits), "
      "quantize the head to int8, calibrate the exit threshold on a held-out split, report "
      "test accuracies as JSON on stdout and write a vision-split bundle to --out.");
  TrainOptions& o = train_args->options;
  train->add_option("--out", train_args->out, "bundle directory to write (atomically)")->required();
  train->add_flag("--quick", train_args->quick,
                  "small, fast run (2k images, 1 epoch per stage) for smoke tests");
  train->add_flag("--long", train_args->long_preset,
                  "longer run for higher accuracy (teacher 8, fine-tune 5, exit 3 epochs; about "
                  "twice the default's time)");
  train->add_option("--epochs-teacher", o.epochs_teacher, "teacher epochs")->capture_default_str();
  train
      ->add_option("--epochs-distill", o.epochs_distill,
                   "stage 1 epochs: encoder+decoder imitate the teacher's features")
      ->capture_default_str();
  train
      ->add_option("--epochs-finetune", o.epochs_finetune,
                   "stage 2 epochs: end to end with distillation and the simulated wire")
      ->capture_default_str();
  train->add_option("--epochs-exit", o.epochs_exit, "stage 3 epochs: early exits")
      ->capture_default_str();
  train->add_option("--batch-size", o.batch_size, "mini-batch size")->capture_default_str();
  train
      ->add_option("--lr", o.lr,
                   "peak SGD learning rate of the teacher and of end-to-end fine-tuning")
      ->capture_default_str();
  train->add_option("--seed", o.seed, "seed of the held-out split and of training")
      ->capture_default_str();
  train->add_option("--threads", o.threads, "libtorch intra-op threads")->capture_default_str();
  train
      ->add_option("--memory-mb", o.memory_mb,
                   "datasets whose converted images (float32) take more than this are read a "
                   "batch at a time instead of held in memory (0: always)")
      ->capture_default_str();
  train
      ->add_option("--bottleneck-channels", o.bottleneck_channels,
                   "channels of the 7x7 bottleneck sent over the wire")
      ->capture_default_str();
  train->add_option("--tail-channels", o.tail_channels, "width of the cloud tail (7x7 blocks)")
      ->capture_default_str();
  train->add_option("--tail-blocks", o.tail_blocks, "Fused-MBConv blocks in the cloud tail")
      ->capture_default_str();
  train
      ->add_option("--model", train_args->model,
                   "network family: default_split (Fused-MBConv, 28x28-sized), residual_split "
                   "(ResNet BasicBlocks, 32x32-sized; bottleneck 4 unless "
                   "--bottleneck-channels) or tiny_split; re-seated for --data's input")
      ->capture_default_str();
  train->add_option("--model-spec", train_args->model_spec,
                    "a model spec file (.json or .toml: blocks, split_after, exits; see "
                    "examples/model_spec.toml) instead of --model");
  train->add_option("--wire-dtype", train_args->wire_dtype, "wire quantization: u4 or u8")
      ->capture_default_str();
  train
      ->add_option("--calibrate", train_args->calibrate,
                   "exit calibration target: drop:X (at most X accuracy points below the fp32 "
                   "split model on the held-out rows), drop:X@C (the upper confidence bound at "
                   "level C of that drop at most X) or offload:Y (offload at most a fraction Y, "
                   "or Y%)")
      ->capture_default_str();
  train
      ->add_option("--criterion", train_args->criterion,
                   "exit confidence: max_softmax, entropy or margin")
      ->capture_default_str();
  train->add_option("--held-out", o.held_out, "training images held out for calibration")
      ->capture_default_str();
  AddDataOptions(train, &o.data, &train_args->data_dir);
  train
      ->add_option("--image-size", o.image_size,
                   "network input side in pixels; images of another size are resized "
                   "(bilinear), and the bundle declares it so the edge does the same "
                   "(0: the data's own, which must then be square)")
      ->capture_default_str();
  train->add_flag("--no-int8", train_args->no_int8, "keep the fp32 head (no int8 head file)");
  train->add_flag("--augment", train_args->augment,
                  "random crop (2 px) and horizontal flip; helps long runs, hurts short ones");
  train->add_flag("--quiet", train_args->quiet, "no progress output on stderr");
  train->callback([train_args, train] { RunTrain(*train_args, *train); });

  auto split_args = std::make_shared<SplitArgs>();
  CLI::App* split = app.add_subcommand(
      "split",
      "Re-quantize and re-calibrate an existing vision-split bundle: refit the wire "
      "quantizer (--wire-dtype), re-run int8 post-training quantization of the head, "
      "re-calibrate the exit threshold on the bundle's own held-out split, add or re-calibrate "
      "further split points (--add-split), re-evaluate, and write the bundle (in place, "
      "atomically, unless --out is given).");
  split->add_option("--bundle", split_args->bundle, "bundle directory to read")
      ->required()
      ->check(CLI::ExistingDirectory);
  split->add_option("--out", split_args->out, "where to write (default: replace --bundle)");
  split->add_option("--calibrate", split_args->calibrate,
                    "drop:X, drop:X@C or offload:Y (default: the bundle's target)");
  split->add_option("--criterion", split_args->criterion,
                    "max_softmax, entropy or margin (default: the bundle's)");
  split->add_option("--wire-dtype", split_args->wire_dtype, "u4 or u8 (default: the bundle's)");
  split
      ->add_option("--int8-engine", split_args->int8_engine,
                   "auto, onednn, qnnpack or reference (recorded for the edge)")
      ->capture_default_str();
  split->add_option("--data", split_args->data,
                    std::string(kDataSpecHelp) + " (default: the one the bundle was trained on)");
  split->add_option("--data-dir", split_args->data_dir,
                    "Fashion-MNIST IDX directory (= --data fashion-mnist:DIR)");
  split->add_option("--threads", split_args->threads, "libtorch intra-op threads")
      ->capture_default_str();
  split->add_flag("--no-int8", split_args->no_int8, "drop the int8 head");
  split
      ->add_option("--add-split", split_args->add_splits,
                   "AFTER[:DTYPE]: add a further split point cutting after block AFTER, its "
                   "features sent as DTYPE (u8 by default; f32, f16, u8 or u4); repeatable. The "
                   "cloud serves every split point's tail and the edge may choose per request")
      ->type_name("AFTER[:DTYPE]");
  split->add_flag("--clear-splits", split_args->clear_splits,
                  "drop the bundle's further split points (before --add-split)");
  split->add_flag("--quiet", split_args->quiet, "no progress output on stderr");
  split->callback([split_args] { RunSplit(*split_args); });
}

}  // namespace cleave::tools
