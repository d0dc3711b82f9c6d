#include "split/import_pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "common/progress.h"
#include "split/compute_runtime.h"
#include "split/dataset.h"
#include "split/head_int8_graph.h"
#include "split/image_rows.h"
#include "split/imported_model.h"
#include "split/torch_status.h"
#include "split/torchscript_model.h"
#include "split/train_data.h"
#include "split/train_log.h"
#include "split/wire_quant.h"

namespace cleave::split {
namespace {

using nlohmann::json;

constexpr double kImportKdTemperature = 4.0;
constexpr int64_t kImportEvalBatch = 256;
constexpr int64_t kWireFitRows = 4096;

torch::Tensor ImportKdLoss(const torch::Tensor& student, const torch::Tensor& teacher) {
  const double t = kImportKdTemperature;
  namespace nnf = torch::nn::functional;
  return nnf::kl_div(nnf::log_softmax(student / t, nnf::LogSoftmaxFuncOptions(1)),
                     nnf::log_softmax(teacher / t, nnf::LogSoftmaxFuncOptions(1)),
                     nnf::KLDivFuncOptions().reduction(torch::kBatchMean).log_target(true)) *
         (t * t);
}

torch::Tensor ImportCeKdLoss(const torch::Tensor& student, const torch::Tensor& teacher,
                             const torch::Tensor& labels) {
  return 0.5 * torch::nn::functional::cross_entropy(student, labels) +
         0.5 * ImportKdLoss(student, teacher);
}

Status ImportInterrupted(const ImportOptions& options) {
  if (options.cancelled && options.cancelled()) {
    return Status::FailedPrecondition("interrupted; nothing was written");
  }
  return Status::Ok();
}

// One training stage: `epochs` passes over `train` in shuffled mini-batches, AdamW at a
// warm-up + cosine rate peaking at `peak_lr`; `step` returns the loss of one batch.
template <typename Step>
Result<StageStats> RunImportStage(const std::string& label, int epochs, const ImageRows& train,
                                  const ImportOptions& options, torch::optim::Optimizer& optimizer,
                                  double peak_lr, Step&& step) {
  StageStats stats;
  stats.name = label;
  const auto start = std::chrono::steady_clock::now();
  const int64_t n = train.size();
  const int64_t batch = std::min<int64_t>(options.batch_size, n);
  const int64_t steps_per_epoch = n / batch;
  const int64_t total = steps_per_epoch * epochs;
  std::unique_ptr<ProgressBar> bar;
  if (options.progress_out != nullptr) {
    bar = std::make_unique<ProgressBar>(label, static_cast<uint64_t>(total), options.progress_out);
  }
  double smoothed = 0;
  int64_t done = 0;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    EpochBatches batches(train, torch::randperm(n, torch::kLong), batch);
    for (int64_t s = 0; s < steps_per_epoch; ++s) {
      CLEAVE_RETURN_IF_ERROR(ImportInterrupted(options));
      Result<torch::Tensor> images = batches.Next();
      if (!images.ok()) return images.status().WithContext(label + ": reading a batch");
      const torch::Tensor index = batches.Index(s);
      SetLearningRate(optimizer, WarmupCosineLr(peak_lr, done, total));
      optimizer.zero_grad();
      torch::Tensor loss = step(*images, train.labels().index_select(0, index));
      const double value = loss.item<double>();
      if (!std::isfinite(value)) {
        return Status::Internal(label + ": the loss diverged (" + std::to_string(value) +
                                "); try a smaller --lr");
      }
      loss.backward();
      optimizer.step();
      smoothed = done == 0 ? value : 0.98 * smoothed + 0.02 * value;
      ++done;
      if (bar) bar->Update(static_cast<uint64_t>(done), "loss " + std::to_string(smoothed));
    }
  }
  if (bar) bar->Finish("loss " + std::to_string(smoothed));
  stats.seconds = SecondsSince(start);
  stats.samples = done * batch;
  stats.samples_per_second = stats.seconds > 0 ? stats.samples / stats.seconds : 0;
  stats.final_loss = smoothed;
  return stats;
}

// Logits of every path on `images`: the imported model, the split path (encoder -> real wire
// codec -> decoder -> tail), and each exit.
struct ImportLogits {
  torch::Tensor imported, split;
  std::vector<torch::Tensor> exits;
};

// The imported model's own logits from the head's output (a copy of h goes in: a tail that
// starts with an in-place op must not change the caller's h).
torch::Tensor TeacherLogits(torch::jit::Module& teacher_tail, const torch::Tensor& h) {
  return teacher_tail.forward({h.clone()}).toTensor();
}

Result<ImportLogits> RunImportPaths(ImportedSplitModel& model, torch::jit::Module& teacher_tail,
                                    const ImageRows& rows) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> imported, split;
  std::vector<std::vector<torch::Tensor>> exits(model.exits.size());
  for (int64_t begin = 0; begin < rows.size(); begin += kImportEvalBatch) {
    CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor x, rows.Slice(begin, kImportEvalBatch));
    const torch::Tensor h_fp32 = model.RunHead(x);
    imported.push_back(TeacherLogits(teacher_tail, h_fp32));
    // The deployed head: int8 when the model has one.
    torch::Tensor h = h_fp32;
    if (model.int8_head) {
      CLEAVE_ASSIGN_OR_RETURN(h, model.RunHeadInt8(x));
    }
    CLEAVE_ASSIGN_OR_RETURN(
        torch::Tensor wire,
        WireRoundTrip(model.encoder->forward(h).contiguous(), model.wire_dtype, &model.wire_quant));
    split.push_back(model.RunTail(wire.clone()));
    for (size_t e = 0; e < model.exits.size(); ++e) exits[e].push_back(model.exits[e]->forward(h));
  }
  ImportLogits out;
  out.imported = torch::cat(imported, 0);
  out.split = torch::cat(split, 0);
  for (auto& parts : exits) out.exits.push_back(torch::cat(parts, 0));
  return out;
}

json EvaluateImport(const ImportLogits& logits, const torch::Tensor& labels,
                    const ExitPolicy& policy) {
  json exit_accuracy = json::array();
  for (const torch::Tensor& e : logits.exits) exit_accuracy.push_back(Accuracy(e, labels));
  const std::vector<int> decided = policy.Decide(logits.exits);
  const torch::Tensor split_pred = logits.split.argmax(1);
  int64_t correct = 0, local = 0;
  const int64_t n = labels.size(0);
  for (int64_t i = 0; i < n; ++i) {
    const int e = i < static_cast<int64_t>(decided.size()) ? decided[i] : -1;
    const int64_t pred =
        e >= 0 ? logits.exits[e][i].argmax().item<int64_t>() : split_pred[i].item<int64_t>();
    correct += pred == labels[i].item<int64_t>();
    local += e >= 0;
  }
  const double rows = static_cast<double>(std::max<int64_t>(1, n));
  return {{"imported", Accuracy(logits.imported, labels)},
          {"split_no_exit", Accuracy(logits.split, labels)},
          {"exit_accuracy", exit_accuracy},
          {"split_exit", correct / rows},
          {"exit_fraction", local / rows},
          {"rows", n}};
}

// The tail's parameters as trainable leaves: each is replaced on its module by a detached
// copy that requires grad (parameters of an extracted module may be non-leaf tensors, which
// an optimizer refuses).
std::vector<torch::Tensor> TrainableTail(torch::jit::Module& tail) {
  std::vector<std::pair<std::string, torch::Tensor>> named;
  for (const auto& p : tail.named_parameters(/*recurse=*/true)) named.emplace_back(p.name, p.value);
  std::vector<torch::Tensor> params;
  for (const auto& [name, value] : named) {
    torch::jit::Module owner = tail;
    std::string leaf = name;
    for (size_t dot = leaf.find('.'); dot != std::string::npos; dot = leaf.find('.')) {
      owner = owner.attr(leaf.substr(0, dot)).toModule();
      leaf = leaf.substr(dot + 1);
    }
    torch::Tensor fresh = value.detach().clone().set_requires_grad(true);
    owner.setattr(leaf, fresh);
    params.push_back(fresh);
  }
  return params;
}

}  // namespace

ImportOptions ImportOptions::Quick() {
  ImportOptions o;
  o.epochs_distill = o.epochs_finetune = o.epochs_exit = 1;
  o.train_limit = 2048 + 512;
  o.held_out = 512;
  o.test_limit = 1000;
  return o;
}

Status ImportOptions::Validate() const {
  const auto bad = [](const std::string& m) { return Status::InvalidArgument(m); };
  if (torchscript.empty()) return bad("--torchscript FILE is required");
  if (split_after.empty()) return bad("--split-after NAME is required");
  if (bottleneck_channels < 1 || bottleneck_channels > 256) {
    return bad("--bottleneck-channels must be in [1, 256]");
  }
  if (bottleneck_stride < 0 || bottleneck_stride > 2) return bad("--bottleneck-stride: 0, 1 or 2");
  if (wire_dtype != wire::DType::kUInt4 && wire_dtype != wire::DType::kUInt8) {
    return bad("--wire-dtype must be u4 or u8");
  }
  if (exit_hidden < 0 || exit_hidden > 1024) return bad("--exit-hidden must be in [0, 1024]");
  if (memory_mb < 0 || memory_mb > (int64_t{1} << 30)) return bad("--memory-mb must be >= 0");
  if (epochs_distill < 1 || epochs_finetune < 0 || epochs_exit < 0 || epochs_distill > 1000 ||
      epochs_finetune > 1000 || epochs_exit > 1000) {
    return bad("epochs: distill in [1, 1000], finetune and exit in [0, 1000]");
  }
  if (batch_size < 2 || batch_size > 8192) return bad("--batch-size must be in [2, 8192]");
  if (!(lr > 0 && lr < 1)) return bad("--lr must be in (0, 1)");
  if (held_out < 1 || train_limit < 0 || test_limit < 0) return bad("bad held-out or limits");
  if (threads < 1 || threads > 256) return bad("--threads must be in [1, 256]");
  if (int8_calibration_images < 1) return bad("int8 calibration needs at least one image");
  if (image_size < 0 || image_size > 1024) return bad("--image-size must be in [0, 1024]");
  for (float s : std) {
    if (!(s > 0.0f) || !std::isfinite(s)) return bad("--std values must be > 0");
  }
  for (float m : mean) {
    if (!std::isfinite(m)) return bad("--mean values must be finite");
  }
  return Status::Ok();
}

json ImportOptions::ToJson() const {
  return {{"torchscript", torchscript},
          {"split_after", split_after},
          {"data", data},
          {"image_size", image_size},
          {"mean", mean},
          {"std", std},
          {"bottleneck_channels", bottleneck_channels},
          {"bottleneck_stride", bottleneck_stride},
          {"wire_dtype", wire::DTypeName(wire_dtype)},
          {"exit_hidden", exit_hidden},
          {"int8", int8},
          {"int8_calibration_images", int8_calibration_images},
          {"epochs_distill", epochs_distill},
          {"epochs_finetune", epochs_finetune},
          {"finetune_encoder", finetune_encoder},
          {"epochs_exit", epochs_exit},
          {"batch_size", batch_size},
          {"lr", lr},
          {"calibration_target", target.ToString()},
          {"criterion", ExitCriterionName(criterion)},
          {"held_out", held_out},
          {"memory_mb", memory_mb},
          {"train_limit", train_limit},
          {"test_limit", test_limit},
          {"seed", seed},
          {"threads", threads}};
}

json ImportReport::ToJson() const {
  json stage_list = json::array();
  for (const auto& s : stages) stage_list.push_back(s.ToJson());
  return {{"bundle", bundle_dir},
          {"import_seconds", import_seconds},
          {"stages", stage_list},
          {"calibration", calibration},
          {"int8", int8},
          {"held_out", evaluation.value("held_out", json::object())},
          {"test", evaluation.value("test", json::object())}};
}

Result<ImportReport> ImportTorchScript(const ImportOptions& options,
                                       const std::filesystem::path& out_dir) {
  CLEAVE_RETURN_IF_ERROR(options.Validate());
  const auto start = std::chrono::steady_clock::now();
  SetComputeThreads(options.threads);
  torch::manual_seed(options.seed);

  DatasetOptions load;
  load.image_size = options.image_size;
  load.train_limit = options.train_limit;
  load.test_limit = options.test_limit;
  load.threads = options.threads;
  load.progress_out = options.progress_out;
  CLEAVE_ASSIGN_OR_RETURN(
      const DatasetRows data,
      OpenDatasetRows(options.data, load, options.memory_mb * (int64_t{1} << 20)));
  const InputSpec& input = data.input;
  const ImageRows& all_train = data.train;
  const ImageRows& test = data.test;
  if (all_train.streamed() || test.streamed()) {
    LogLine(options.progress_out, "data: larger than --memory-mb " +
                                      std::to_string(options.memory_mb) +
                                      ": images are read from the dataset a batch at a time");
  }
  if (options.mean.size() != 1 && options.mean.size() != static_cast<size_t>(input.channels)) {
    return Status::InvalidArgument("--mean needs one value or one per channel");
  }
  if (options.std.size() != 1 && options.std.size() != static_cast<size_t>(input.channels)) {
    return Status::InvalidArgument("--std needs one value or one per channel");
  }

  TorchScriptModel::Options model_options;
  model_options.input_shape = {input.channels, input.height, input.width};
  Result<TorchScriptModel> loaded = TorchScriptModel::Load(options.torchscript, model_options);
  if (!loaded.ok()) return loaded.status().WithContext(options.torchscript);
  TorchScriptModel teacher = std::move(loaded).value();
  CLEAVE_ASSIGN_OR_RETURN(const TorchScriptCut cut, teacher.ResolveCut(options.split_after));

  auto split = HoldOut(all_train, options.held_out, options.seed);
  if (!split.ok()) return split.status().WithContext("held-out split");
  const ImageRows& train = split->first;
  const ImageRows& held = split->second;
  LogLine(options.progress_out,
          "data: " + std::to_string(train.size()) + " training, " + std::to_string(held.size()) +
              " held-out, " + std::to_string(test.size()) + " test images of " + options.data);

  ImportedSplitModel model;
  model.name = options.name.empty() ? std::filesystem::path(options.torchscript).stem().string()
                                    : options.name;
  model.input = input;
  model.mean = options.mean;
  model.std = options.std;
  model.source = {{"file", std::filesystem::path(options.torchscript).filename().string()},
                  {"cut", cut.name},
                  {"class", teacher.class_name()}};
  CLEAVE_ASSIGN_OR_RETURN(model.head, teacher.ExtractHead(cut));
  CLEAVE_ASSIGN_OR_RETURN(model.tail, teacher.ExtractTail(cut));
  // The teacher's tail: a second copy that stage 2 does not change.
  CLEAVE_ASSIGN_OR_RETURN(torch::jit::Module teacher_tail, teacher.ExtractTail(cut));
  model.has_head = model.has_tail = true;
  model.head.eval();
  model.tail.eval();
  teacher_tail.eval();

  ImportReport report;
  CLEAVE_RETURN_IF_ERROR(
      CallTorch(TorchSource::kExternalInput, "import failed inside libtorch", [&]() -> Status {
        // The cut's map decides the bottleneck's shape.
        torch::Tensor probe;
        {
          torch::NoGradGuard no_grad;
          CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor first, train.Slice(0, 2));
          probe = model.RunHead(first);
        }
        if (probe.dim() != 4) {
          return Status::InvalidArgument(
              "the head's output at " + cut.name + " has " + std::to_string(probe.dim()) +
              " dimensions; a bottleneck needs a feature map [N, C, H, W]: "
              "cut before the model flattens");
        }
        model.head_output_shape = {probe.size(1), probe.size(2), probe.size(3)};
        model.bottleneck_channels = options.bottleneck_channels;
        model.bottleneck_stride = options.bottleneck_stride > 0
                                      ? options.bottleneck_stride
                                      : (probe.size(2) >= 16 && probe.size(3) >= 16 ? 2 : 1);
        if (options.exit_hidden > 0) model.exit_hidden = {options.exit_hidden};
        model.wire_dtype = options.wire_dtype;
        CLEAVE_RETURN_IF_ERROR(model.BuildBottleneck());
        LogLine(options.progress_out,
                "cut " + cut.name + ": head output " + std::to_string(probe.size(1)) + "x" +
                    std::to_string(probe.size(2)) + "x" + std::to_string(probe.size(3)) +
                    " -> bottleneck " + std::to_string(model.FeatureShape()[0]) + "x" +
                    std::to_string(model.FeatureShape()[1]) + "x" +
                    std::to_string(model.FeatureShape()[2]) + " " +
                    wire::DTypeName(model.wire_dtype));

        // Stage 1: the bottleneck reproduces h.
        {
          model.encoder->train();
          model.decoder->train();
          std::vector<torch::Tensor> params = model.encoder->parameters();
          for (const auto& p : model.decoder->parameters()) params.push_back(p);
          torch::optim::AdamW optimizer(params,
                                        torch::optim::AdamWOptions(options.lr * 3).weight_decay(0));
          CLEAVE_ASSIGN_OR_RETURN(
              StageStats stats,
              RunImportStage("stage1-bottleneck", options.epochs_distill, train, options, optimizer,
                             options.lr * 3, [&](const torch::Tensor& x, const torch::Tensor&) {
                               torch::Tensor h;
                               {
                                 torch::NoGradGuard no_grad;
                                 h = model.RunHead(x);
                               }
                               return torch::mse_loss(
                                   model.decoder->forward(model.encoder->forward(h)), h);
                             }));
          report.stages.push_back(stats);
        }
        model.encoder->eval();

        // Wire ranges from the frozen encoder's outputs.
        {
          torch::NoGradGuard no_grad;
          CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor sample, train.Slice(0, kWireFitRows));
          std::vector<torch::Tensor> codes;
          for (int64_t b = 0; b < sample.size(0); b += kImportEvalBatch) {
            codes.push_back(model.encoder->forward(model.RunHead(
                sample.narrow(0, b, std::min(kImportEvalBatch, sample.size(0) - b)))));
          }
          auto [lo, hi] = ChooseWireRanges(torch::cat(codes, 0), model.wire_dtype);
          model.wire_quant = RangesToQuantParams(lo, hi, model.wire_dtype);
        }

        // Stage 2: the tail side, end to end through the simulated wire, distilled from the
        // imported model.
        if (options.epochs_finetune > 0) {
          model.decoder->train();
          std::vector<torch::Tensor> params = model.decoder->parameters();
          for (const auto& p : TrainableTail(model.tail)) params.push_back(p);
          if (options.finetune_encoder) {
            for (const auto& p : model.encoder->parameters()) params.push_back(p);
          }
          torch::optim::AdamW optimizer(params,
                                        torch::optim::AdamWOptions(options.lr).weight_decay(1e-4));
          CLEAVE_ASSIGN_OR_RETURN(
              StageStats stats,
              RunImportStage("stage2-finetune", options.epochs_finetune, train, options, optimizer,
                             options.lr, [&](const torch::Tensor& x, const torch::Tensor& y) {
                               torch::Tensor h, code, target;
                               {
                                 torch::NoGradGuard no_grad;
                                 h = model.RunHead(x);
                                 if (!options.finetune_encoder) code = model.encoder->forward(h);
                                 target = TeacherLogits(teacher_tail, h);
                               }
                               if (options.finetune_encoder) code = model.encoder->forward(h);
                               const torch::Tensor wire =
                                   FakeQuantizeWire(code, model.wire_quant, model.wire_dtype);
                               return ImportCeKdLoss(model.RunTail(wire), target, y);
                             }));
          report.stages.push_back(stats);
          for (at::Tensor p : model.tail.parameters()) p.set_requires_grad(false);
        }
        model.decoder->eval();

        // Stage 3: exits on h, distilled from the imported model.
        if (!model.exits.empty() && options.epochs_exit > 0) {
          std::vector<torch::Tensor> params;
          for (auto& e : model.exits) {
            e->train();
            for (const auto& p : e->parameters()) params.push_back(p);
          }
          torch::optim::AdamW optimizer(
              params, torch::optim::AdamWOptions(options.lr * 3).weight_decay(1e-4));
          CLEAVE_ASSIGN_OR_RETURN(
              StageStats stats,
              RunImportStage("stage3-exits", options.epochs_exit, train, options, optimizer,
                             options.lr * 3, [&](const torch::Tensor& x, const torch::Tensor& y) {
                               torch::Tensor h, target;
                               {
                                 torch::NoGradGuard no_grad;
                                 h = model.RunHead(x);
                                 target = TeacherLogits(teacher_tail, h);
                               }
                               torch::Tensor loss = torch::zeros({}, torch::kFloat);
                               for (auto& e : model.exits) {
                                 loss = loss + ImportCeKdLoss(e->forward(h), target, y);
                               }
                               return loss;
                             }));
          report.stages.push_back(stats);
        }
        for (auto& e : model.exits) e->eval();
        CLEAVE_RETURN_IF_ERROR(ImportInterrupted(options));

        // The int8 head (post-training static quantization where the head's ops allow).
        if (options.int8) {
          CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor calibration_images,
                                  train.Slice(0, options.int8_calibration_images));
          const torch::Tensor calibration = model.Normalize(calibration_images);
          Result<Int8GraphHead> int8 = Int8GraphHead::Quantize(model.head, calibration);
          if (!int8.ok()) return int8.status().WithContext("int8 head");
          CLEAVE_RETURN_IF_ERROR(int8->SelectEngine("auto").WithContext("int8 head engine"));
          model.int8_head = std::make_shared<Int8GraphHead>(std::move(int8).value());
          model.int8_info = {{"engine", model.int8_head->engine()},
                             {"engine_timings_ms", model.int8_head->engine_timings_ms()}};
          const HeadInt8Report& q = model.int8_head->report();
          LogLine(options.progress_out,
                  "int8 head: " + std::to_string(100.0 * q.int8_ops_fraction) + "% of ops, " +
                      std::to_string(100.0 * q.int8_macs_fraction) + "% of MACs in int8, engine " +
                      model.int8_head->engine());
        }

        // Calibration on held-out rows, against the imported model's own accuracy there.
        CLEAVE_ASSIGN_OR_RETURN(const ImportLogits h_logits,
                                RunImportPaths(model, teacher_tail, held));
        if (model.exits.empty()) {
          model.exit_policy = ExitPolicy(options.criterion, {});
        } else {
          std::vector<torch::Tensor> scores, correct;
          for (const torch::Tensor& e : h_logits.exits) {
            scores.push_back(ExitScores(options.criterion, e));
            correct.push_back(e.argmax(1).eq(held.labels()));
          }
          const torch::Tensor full_correct = h_logits.split.argmax(1).eq(held.labels());
          const double reference = Accuracy(h_logits.imported, held.labels());
          auto calibration = Calibrate(scores, correct, full_correct, options.criterion,
                                       options.target, reference);
          std::string drop_reference = "imported";
          if (!calibration.ok() && calibration.status().code() == StatusCode::kFailedPrecondition) {
            LogLine(options.progress_out, "exits: warning: the split path misses " +
                                              options.target.ToString() +
                                              " against the imported model even without exits; "
                                              "calibrating against the split path instead");
            calibration =
                Calibrate(scores, correct, full_correct, options.criterion, options.target);
            drop_reference = "split_no_exit (imported reference infeasible)";
          }
          if (!calibration.ok()) return calibration.status().WithContext("exit calibration");
          model.exit_policy = calibration->policy();
          model.calibration = calibration->ToJson();
          model.calibration["drop_reference"] = drop_reference;
        }
        model.evaluation["held_out"] = EvaluateImport(h_logits, held.labels(), model.exit_policy);
        if (test.size() > 0) {
          CLEAVE_ASSIGN_OR_RETURN(const ImportLogits t_logits,
                                  RunImportPaths(model, teacher_tail, test));
          model.evaluation["test"] = EvaluateImport(t_logits, test.labels(), model.exit_policy);
        }
        json stage_list = json::array();
        for (const auto& s : report.stages) stage_list.push_back(s.ToJson());
        model.training = options.ToJson();
        model.training["stages"] = stage_list;
        model.training["import_seconds"] = SecondsSince(start);
        CLEAVE_RETURN_IF_ERROR(ImportInterrupted(options));
        return WriteImportedBundle(out_dir, model);
      }));
  report.evaluation = model.evaluation;
  report.calibration = model.calibration;
  if (model.int8_head) {
    report.int8 = {{"engine", model.int8_head->engine()},
                   {"weight_bytes", model.int8_head->WeightBytes()},
                   {"int8_ops_fraction", model.int8_head->report().int8_ops_fraction},
                   {"int8_macs_fraction", model.int8_head->report().int8_macs_fraction}};
  }
  report.bundle_dir = out_dir.string();
  report.import_seconds = SecondsSince(start);
  return report;
}

}  // namespace cleave::split
