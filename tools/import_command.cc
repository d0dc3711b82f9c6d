#include "tools/import_command.h"

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/shutdown.h"
#include "split/import_pipeline.h"
#include "split/torchscript_model.h"
#include "tools/command_error.h"
#include "tools/data_option.h"

namespace cleave::tools {
namespace {

struct ImportArgs {
  split::ImportOptions options;
  std::string out;
  std::string data_dir;
  std::string wire_dtype = "u4";
  std::string calibrate = split::ImportOptions().target.ToString();
  std::string criterion = "max_softmax";
  bool quick = false;
  bool quiet = false;
  bool list_cuts = false;
};

void RunImport(ImportArgs& args, const CLI::App& cmd) {
  const std::string name = "import";
  if (args.list_cuts) {
    if (args.options.torchscript.empty()) {
      Fail(name, Status::InvalidArgument("--list-cuts needs --torchscript FILE"));
    }
    Result<split::TorchScriptModel> model = split::TorchScriptModel::Load(args.options.torchscript);
    if (!model.ok()) Fail(name, model.status());
    const Status cuttable = model->CheckCuttable();
    if (!cuttable.ok()) Fail(name, cuttable);
    std::cout
        << nlohmann::json({{"model", model->class_name()}, {"cuts", model->CutPoints()}}).dump(2)
        << std::endl;
    return;
  }
  if (args.out.empty()) Fail(name, Status::InvalidArgument("--out DIR is required"));
  split::ImportOptions options = args.options;
  if (args.quick) {
    // Smoke-run sizes; anything given explicitly wins.
    const split::ImportOptions quick = split::ImportOptions::Quick();
    const auto keep = [&cmd](const char* flag) { return cmd.count(flag) > 0; };
    if (!keep("--epochs-distill")) options.epochs_distill = quick.epochs_distill;
    if (!keep("--epochs-finetune")) options.epochs_finetune = quick.epochs_finetune;
    if (!keep("--epochs-exit")) options.epochs_exit = quick.epochs_exit;
    if (!keep("--train-limit")) options.train_limit = quick.train_limit;
    if (!keep("--held-out")) options.held_out = quick.held_out;
    if (!keep("--test-limit")) options.test_limit = quick.test_limit;
  }
  Result<std::string> data = ResolveDataSpec(options.data, args.data_dir);
  if (!data.ok()) Fail(name, data.status());
  options.data = *data;
  Result<wire::DType> dtype = wire::ParseDType(args.wire_dtype);
  if (!dtype.ok()) Fail(name, dtype.status());
  options.wire_dtype = *dtype;
  Result<split::CalibrationTarget> target = split::CalibrationTarget::Parse(args.calibrate);
  if (!target.ok()) Fail(name, target.status());
  options.target = *target;
  Result<split::ExitCriterion> criterion = split::ParseExitCriterion(args.criterion);
  if (!criterion.ok()) Fail(name, criterion.status());
  options.criterion = *criterion;
  options.progress_out = args.quiet ? nullptr : stderr;
  if (const Status valid = options.Validate(); !valid.ok()) Fail(name, valid);
  InstallShutdownHandlers();
  options.cancelled = [] { return ShutdownRequested(); };
  Result<split::ImportReport> report = split::ImportTorchScript(options, args.out);
  if (!report.ok()) Fail(name, report.status());
  std::cout << report->ToJson().dump(2) << std::endl;
}

}  // namespace

void RegisterImportCommand(CLI::App& app) {
  auto args = std::make_shared<ImportArgs>();
  split::ImportOptions& o = args->options;
  CLI::App* cmd = app.add_subcommand(
      "import",
      "Import a model trained in PyTorch and exported with TorchScript (torch.jit.script or "
      "torch.jit.trace): cut it after --split-after, insert a learned bottleneck at the cut "
      "(BottleFit: the encoder/decoder imitate the cut's features, then the tail side is "
      "fine-tuned through the simulated wire with the imported model as teacher), attach and "
      "calibrate an early exit, and write a split bundle that cleave-edge and cleave-cloud "
      "serve. Where a model can be cut: its forward is a chain of child-module calls "
      "(nn.Sequential, or a custom module calling self.a, self.b, ... in turn; dotted names "
      "reach into nested chains), or it exports forward_head/forward_tail (cut name 'head'). "
      "--list-cuts prints the names.");
  cmd->add_option("--torchscript", o.torchscript, "the TorchScript file (.pt)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--split-after", o.split_after,
                  "where to cut: a child's name or index in the model's chain, a dotted name "
                  "into a nested chain, or 'head'");
  cmd->add_flag("--list-cuts", args->list_cuts, "print where the model can be cut, then exit");
  cmd->add_option("--out", args->out, "bundle directory to write (atomically)");
  AddDataOptions(cmd, &o.data, &args->data_dir);
  cmd->add_option("--image-size", o.image_size,
                  "model input side in pixels; images of another size are resized (0: the "
                  "data's own)")
      ->capture_default_str();
  cmd->add_option("--mean", o.mean,
                  "normalization cleave applies before the model, (x - mean) / std, one value "
                  "or one per channel (default: none, for models that normalize themselves)");
  cmd->add_option("--std", o.std, "see --mean");
  cmd->add_option("--name", o.name, "model name in the bundle (default: the file's stem)");
  cmd->add_option("--bottleneck-channels", o.bottleneck_channels,
                  "channels of the bottleneck code on the wire")
      ->capture_default_str();
  cmd->add_option("--bottleneck-stride", o.bottleneck_stride,
                  "1 or 2 (halves each side of the code); 0: 2 when the cut's map is at least "
                  "8x8")
      ->capture_default_str();
  cmd->add_option("--wire-dtype", args->wire_dtype, "wire quantization: u4 or u8")
      ->capture_default_str();
  cmd->add_option("--exit-hidden", o.exit_hidden, "hidden channels of the exit (0: no exit)")
      ->capture_default_str();
  cmd->add_option("--epochs-distill", o.epochs_distill, "stage 1 epochs (bottleneck)")
      ->capture_default_str();
  cmd->add_option("--epochs-finetune", o.epochs_finetune, "stage 2 epochs (tail side)")
      ->capture_default_str();
  cmd->add_option("--epochs-exit", o.epochs_exit, "stage 3 epochs (exit)")->capture_default_str();
  cmd->add_flag("--finetune-encoder", o.finetune_encoder,
                "stage 2 also trains the bottleneck encoder (through the simulated wire)");
  cmd->add_option("--batch-size", o.batch_size, "mini-batch size")->capture_default_str();
  cmd->add_option("--lr", o.lr, "peak AdamW learning rate (the bottleneck and exit use 3x)")
      ->capture_default_str();
  cmd->add_option("--calibrate", args->calibrate,
                  "exit calibration target: drop:X (at most X points below the imported "
                  "model) or offload:Y")
      ->capture_default_str();
  cmd->add_option("--criterion", args->criterion, "exit confidence: max_softmax, entropy, margin")
      ->capture_default_str();
  cmd->add_option("--memory-mb", o.memory_mb,
                  "datasets whose converted images (float32) take more than this are read a "
                  "batch at a time instead of held in memory (0: always)")
      ->capture_default_str();
  cmd->add_option("--held-out", o.held_out, "training images held out for calibration")
      ->capture_default_str();
  cmd->add_option("--train-limit", o.train_limit, "use the first N training images (0 = all)")
      ->capture_default_str();
  cmd->add_option("--test-limit", o.test_limit, "evaluate on the first N test images (0 = all)")
      ->capture_default_str();
  cmd->add_option("--seed", o.seed, "seed of the held-out split and training")
      ->capture_default_str();
  cmd->add_option("--threads", o.threads, "libtorch intra-op threads")->capture_default_str();
  cmd->add_flag("--quick", args->quick, "small, fast run for smoke tests");
  cmd->add_flag("--quiet", args->quiet, "no progress output on stderr");
  cmd->callback([args, cmd] { RunImport(*args, *cmd); });
}

}  // namespace cleave::tools
