#include "split/post_training.h"

#include <chrono>

#include "split/split_point_calibration.h"
#include "split/torch_status.h"
#include "split/train_log.h"
#include "split/wire_entropy.h"
#include "split/wire_quant.h"

namespace cleave::split {
using nlohmann::json;

std::pair<double, double> ExitPolicyAccuracy(const std::vector<torch::Tensor>& exits,
                                             const torch::Tensor& offloaded,
                                             const torch::Tensor& labels,
                                             const ExitPolicy& policy) {
  const std::vector<int> decision = policy.Decide(exits);
  const torch::Tensor chosen =
      torch::tensor(std::vector<int64_t>(decision.begin(), decision.end()), torch::kLong);
  torch::Tensor pred = offloaded.argmax(1);
  for (size_t e = 0; e < exits.size(); ++e) {
    pred = torch::where(chosen.eq(static_cast<int64_t>(e)), exits[e].argmax(1), pred);
  }
  const double local = chosen.ge(0).sum().item<double>();
  const double n = static_cast<double>(labels.size(0));
  return {pred.eq(labels).sum().item<double>() / n, local / n};
}

Result<PathLogits> RunPaths(VisionSplitModel& model, const ImageRows& rows, int64_t batch) {
  torch::NoGradGuard no_grad;
  SplitVisionNetImpl& net = *model.net;
  net.eval();
  const int end = model.head_end();
  PathLogits out;
  std::vector<torch::Tensor> local, fp32_wire, deployed;
  std::vector<std::vector<torch::Tensor>> exits_fp32(model.spec.exits.size()),
      exits_deployed(model.spec.exits.size());
  CLEAVE_RETURN_IF_ERROR(CallTorch(TorchSource::kOwnState, "evaluating the split model", [&] {
    for (int64_t i = 0; i < rows.size(); i += batch) {
      CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor x, rows.Slice(i, batch));
      SplitVisionNetImpl::Outputs head = net.ForwardWithExits(x, end);
      local.push_back(net.ForwardRange(head.features, end, net.num_blocks()));
      CLEAVE_ASSIGN_OR_RETURN(torch::Tensor wired,
                              WireRoundTrip(head.features, model.wire_dtype, &model.wire_quant));
      fp32_wire.push_back(net.ForwardRange(wired, end, net.num_blocks()));
      for (size_t e = 0; e < head.exit_logits.size(); ++e) {
        exits_fp32[e].push_back(head.exit_logits[e]);
      }
      if (model.int8_head) {
        CLEAVE_ASSIGN_OR_RETURN(SplitVisionNetImpl::Outputs q, model.int8_head->Forward(x));
        CLEAVE_ASSIGN_OR_RETURN(torch::Tensor qwired,
                                WireRoundTrip(q.features, model.wire_dtype, &model.wire_quant));
        deployed.push_back(net.ForwardRange(qwired, end, net.num_blocks()));
        for (size_t e = 0; e < q.exit_logits.size(); ++e) {
          exits_deployed[e].push_back(q.exit_logits[e]);
        }
      }
    }
    out.local_fp32 = torch::cat(local);
    out.fp32_head_wire = torch::cat(fp32_wire);
    out.deployed = model.int8_head ? torch::cat(deployed) : out.fp32_head_wire;
    for (size_t e = 0; e < exits_fp32.size(); ++e) {
      out.exits_fp32.push_back(torch::cat(exits_fp32[e]));
      out.exits_deployed.push_back(model.int8_head ? torch::cat(exits_deployed[e])
                                                   : out.exits_fp32.back());
    }
    return Status::Ok();
  }));
  return out;
}

json EvaluatePaths(const PathLogits& logits, const torch::Tensor& labels,
                   const ExitPolicy& policy) {
  json j;
  j["rows"] = labels.size(0);
  j["local_fp32"] = Accuracy(logits.local_fp32, labels);
  j["split_no_exit"] = Accuracy(logits.deployed, labels);
  j["split_no_exit_fp32_head"] = Accuracy(logits.fp32_head_wire, labels);
  json exit_acc = json::array();
  for (const auto& e : logits.exits_deployed) exit_acc.push_back(Accuracy(e, labels));
  j["exit_accuracy"] = exit_acc;
  auto [acc, frac] = ExitPolicyAccuracy(logits.exits_deployed, logits.deployed, labels, policy);
  j["split_exit"] = acc;
  j["exit_fraction"] = frac;
  auto [acc32, frac32] =
      ExitPolicyAccuracy(logits.exits_fp32, logits.fp32_head_wire, labels, policy);
  j["split_exit_fp32_head"] = acc32;
  j["exit_fraction_fp32_head"] = frac32;
  return j;
}

namespace {

Status FinalizeImpl(VisionSplitModel& model, const ImageRows& train, const ImageRows& held_out,
                    const ImageRows& test, const FinalizeOptions& options) {
  if (!model.net) return Status::InvalidArgument("finalize: model has no network");
  if (train.size() == 0 || held_out.size() == 0) {
    return Status::InvalidArgument("finalize: training and held-out images are required");
  }
  torch::NoGradGuard no_grad;
  SplitVisionNetImpl& net = *model.net;
  net.eval();
  const int end = model.head_end();

  // Wire ranges.
  auto start = std::chrono::steady_clock::now();
  const bool quantized_wire =
      model.wire_dtype == wire::DType::kUInt4 || model.wire_dtype == wire::DType::kUInt8;
  if (!quantized_wire) {
    model.wire_quant = {};
  } else if (options.refit_wire || model.wire_quant.scale.empty()) {
    CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor images, train.Slice(0, options.wire_fit_images));
    const torch::Tensor features = Batched(images, 500, [&](const torch::Tensor& x) {
      return net.ForwardRange(net.Preprocess(x), 0, end);
    });
    auto [lo, hi] = ChooseWireRanges(features, model.wire_dtype);
    model.wire_quant = RangesToQuantParams(lo, hi, model.wire_dtype);
    LogLine(options.log, "wire: fitted " + std::string(wire::DTypeName(model.wire_dtype)) +
                             " ranges on " + std::to_string(images.size(0)) + " training images");
  }

  // Entropy model of the quantized features (what version 2 requests carry), fitted on
  // training images' features with the ranges just chosen.
  model.wire_entropy.reset();
  if (!model.evaluation.is_object()) model.evaluation = json::object();
  if (quantized_wire && options.entropy) {
    CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor images, train.Slice(0, options.wire_fit_images));
    const torch::Tensor features = Batched(images, 500, [&](const torch::Tensor& x) {
      return net.ForwardRange(net.Preprocess(x), 0, end);
    });
    auto fit = FitWireEntropy(features, model.wire_dtype, model.wire_quant);
    if (!fit.ok()) return fit.status().WithContext("wire entropy model");
    model.wire_entropy = fit->model;
    model.evaluation["wire_entropy"] = fit->report;
    LogLine(options.log,
            "wire: entropy model (" + fit->report["context"].get<std::string>() + ") codes " +
                std::to_string(fit->report["heldout_bytes_per_image"].get<double>()) +
                " bytes per image on held-out training rows, " +
                std::to_string(fit->report["packed_bytes_per_image"].get<uint64_t>()) + " packed");
  }

  // Int8 head (post-training static quantization by Int8Head).
  model.int8_head.reset();
  model.int8_info = nullptr;
  if (options.int8) {
    start = std::chrono::steady_clock::now();
    CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor calib,
                            train.Slice(0, options.int8_calibration_images));
    auto head = Int8Head::Quantize(net, end, calib);
    if (!head.ok()) return head.status().WithContext("int8 quantization of the head");
    model.int8_head = std::make_shared<Int8Head>(std::move(head).value());
    CLEAVE_RETURN_IF_ERROR(model.int8_head->SelectEngine(options.int8_engine)
                               .WithContext("int8 engine '" + options.int8_engine + "'"));
    json timings = json::object();
    for (const auto& [name, ms] : model.int8_head->engine_timings_ms()) timings[name] = ms;
    model.int8_info = {{"engine", model.int8_head->engine()},
                       {"requested_engine", options.int8_engine},
                       {"engine_timings_ms", timings},
                       {"calibration_images", calib.size(0)},
                       {"weight_bytes", model.int8_head->WeightBytes()},
                       {"seconds", SecondsSince(start)}};
    LogLine(options.log, "int8: head quantized on " + std::to_string(calib.size(0)) +
                             " images, engine " + model.int8_head->engine() + ", " +
                             std::to_string(model.int8_head->WeightBytes()) + " bytes");
  }

  // Exit calibration on the held-out set through the deployed path.
  CLEAVE_ASSIGN_OR_RETURN(const PathLogits held, RunPaths(model, held_out));
  std::vector<torch::Tensor> scores, correct;
  for (const auto& logits : held.exits_deployed) {
    scores.push_back(ExitScores(options.criterion, logits));
    correct.push_back(logits.argmax(1).eq(held_out.labels()));
  }
  std::optional<double> reference;
  if (options.drop_vs_fp32) reference = Accuracy(held.local_fp32, held_out.labels());
  const torch::Tensor full_correct = held.deployed.argmax(1).eq(held_out.labels());
  auto calibration =
      Calibrate(scores, correct, full_correct, options.criterion, options.target, reference);
  std::string drop_reference = options.drop_vs_fp32 ? "local_fp32" : "split_no_exit";
  if (!calibration.ok() && reference &&
      calibration.status().code() == StatusCode::kFailedPrecondition) {
    // The deployed path alone is already more than X points below fp32: the best we can do
    // is to bound the drop against the deployed path itself, and say so.
    LogLine(options.log, "exits: warning: the int8/" +
                             std::string(wire::DTypeName(model.wire_dtype)) + " path misses " +
                             options.target.ToString() +
                             " against fp32 even without exits; calibrating against it instead");
    calibration = Calibrate(scores, correct, full_correct, options.criterion, options.target);
    drop_reference = "split_no_exit (fp32 reference infeasible)";
  }
  if (!calibration.ok()) return calibration.status().WithContext("exit calibration");
  model.exit_policy = calibration->policy();
  model.calibration = calibration->ToJson();
  model.calibration["drop_reference"] = drop_reference;
  // The trade-off an offload policy chooses from (split/split_point_calibration.h).
  model.calibration["sweep"] =
      ThresholdSweep(held.exits_deployed, held.deployed, held_out.labels(), options.criterion);
  LogLine(options.log,
          "exits: " + options.target.ToString() + " with " + ExitCriterionName(options.criterion) +
              " -> threshold " +
              std::to_string(calibration->thresholds.empty() ? kExitDisabled
                                                             : calibration->thresholds[0]) +
              ", " + std::to_string(100.0 * calibration->exit_fraction) +
              "% answered at the edge (held-out)");

  if (!model.evaluation.is_object()) model.evaluation = json::object();
  model.evaluation["held_out"] = EvaluatePaths(held, held_out.labels(), model.exit_policy);
  if (test.size() > 0) {
    CLEAVE_ASSIGN_OR_RETURN(const PathLogits t, RunPaths(model, test));
    model.evaluation["test"] = EvaluatePaths(t, test.labels(), model.exit_policy);
  } else {
    model.evaluation.erase("test");  // figures of an older quantization would mislead
  }
  return Status::Ok();
}

}  // namespace

Status FinalizeSplitModel(VisionSplitModel& model, const ImageRows& train,
                          const ImageRows& held_out, const ImageRows& test,
                          const FinalizeOptions& options) {
  return CallTorch(TorchSource::kOwnState, "post-training failed inside libtorch",
                   [&] { return FinalizeImpl(model, train, held_out, test, options); });
}

}  // namespace cleave::split
