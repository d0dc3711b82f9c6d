#include "split/split_point_calibration.h"

#include "split/post_training.h"
#include "split/torch_status.h"
#include "split/train_data.h"
#include "split/train_log.h"
#include "split/wire_entropy.h"
#include "split/wire_quant.h"

namespace cleave::split {
namespace {

using nlohmann::json;

// Logits of `rows` at `point`: the exits before the cut, the offloaded path through the wire,
// and the whole fp32 model.
struct PointLogits {
  std::vector<torch::Tensor> exits;
  torch::Tensor offloaded;
  torch::Tensor local_fp32;
};

Result<PointLogits> RunPoint(VisionSplitModel& model, const SplitPoint& point,
                             const ImageRows& rows) {
  SplitVisionNetImpl& net = *model.net;
  PointLogits out;
  std::vector<std::vector<torch::Tensor>> exits(static_cast<size_t>(point.NumExits(model.spec)));
  std::vector<torch::Tensor> offloaded, local;
  constexpr int64_t kBatch = 500;
  CLEAVE_RETURN_IF_ERROR(CallTorch(TorchSource::kOwnState, "evaluating a split point", [&] {
    for (int64_t i = 0; i < rows.size(); i += kBatch) {
      CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor x, rows.Slice(i, kBatch));
      SplitVisionNetImpl::Outputs head = RunSplitHead(net, point, x);
      for (size_t e = 0; e < exits.size(); ++e) exits[e].push_back(head.exit_logits[e]);
      CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor wired,
                              WireRoundTrip(head.features, point.wire_dtype, &point.wire_quant));
      offloaded.push_back(
          net.ForwardRange(RunSplitDecoder(point, wired), point.resume, net.num_blocks()));
      local.push_back(net.forward(x));
    }
    for (auto& e : exits) out.exits.push_back(torch::cat(e));
    out.offloaded = torch::cat(offloaded);
    out.local_fp32 = torch::cat(local);
    return Status::Ok();
  }));
  return out;
}

json PointAccuracies(const PointLogits& logits, const torch::Tensor& labels,
                     const ExitPolicy& policy) {
  auto [accuracy, fraction] = ExitPolicyAccuracy(logits.exits, logits.offloaded, labels, policy);
  return {{"rows", labels.size(0)},
          {"local_fp32", Accuracy(logits.local_fp32, labels)},
          {"split_no_exit", Accuracy(logits.offloaded, labels)},
          {"split_exit", accuracy},
          {"exit_fraction", fraction}};
}

}  // namespace

const std::vector<double>& SweepThresholds() {
  static const std::vector<double> kThresholds = {0.0,  0.3,  0.4,  0.5,   0.6,   0.7,
                                                  0.75, 0.8,  0.85, 0.9,   0.93,  0.95,
                                                  0.97, 0.98, 0.99, 0.995, 0.999, kExitDisabled};
  return kThresholds;
}

json ThresholdSweep(const std::vector<torch::Tensor>& exit_logits, const torch::Tensor& offloaded,
                    const torch::Tensor& labels, ExitCriterion criterion) {
  json sweep = json::array();
  if (exit_logits.empty()) {
    sweep.push_back({{"threshold", kExitDisabled},
                     {"exit_fraction", 0.0},
                     {"accuracy", Accuracy(offloaded, labels)}});
    return sweep;
  }
  for (double t : SweepThresholds()) {
    const ExitPolicy policy(criterion, std::vector<double>(exit_logits.size(), t));
    auto [accuracy, fraction] = ExitPolicyAccuracy(exit_logits, offloaded, labels, policy);
    sweep.push_back({{"threshold", t}, {"exit_fraction", fraction}, {"accuracy", accuracy}});
  }
  return sweep;
}

Status CalibrateSplitPoint(VisionSplitModel& model, SplitPoint& point, const ImageRows& train,
                           const ImageRows& held_out, const ImageRows& test,
                           const SplitPointCalibration& options) {
  if (!model.net) return Status::InvalidArgument("split point calibration: no network");
  if (point.bottleneck && !point.bottleneck->encoder_net) BuildBottleneck(point);
  torch::NoGradGuard no_grad;
  model.net->eval();
  const std::string where = "split after block " + std::to_string(point.after);
  json entropy_report;

  if (point.wire_dtype == wire::DType::kUInt4 || point.wire_dtype == wire::DType::kUInt8) {
    CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor images, train.Slice(0, options.wire_fit_images));
    CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor features,
                            CallTorch(TorchSource::kOwnState, "split point features", [&] {
                              return Batched(images, 500, [&](const torch::Tensor& x) {
                                return RunSplitHead(*model.net, point, x).features;
                              });
                            }));
    auto [lo, hi] = ChooseWireRanges(features, point.wire_dtype);
    point.wire_quant = RangesToQuantParams(lo, hi, point.wire_dtype);
    auto fit = FitWireEntropy(features, point.wire_dtype, point.wire_quant);
    if (!fit.ok()) return fit.status().WithContext(where + ": wire entropy model");
    point.wire_entropy = fit->model;
    entropy_report = fit->report;
  } else {
    point.wire_quant = {};
    point.wire_entropy.reset();
  }

  CLEAVE_ASSIGN_OR_RETURN(const PointLogits held, RunPoint(model, point, held_out));
  const torch::Tensor& labels = held_out.labels();
  const int exits = point.NumExits(model.spec);
  json calibration = json::object();
  point.exit_policy =
      ExitPolicy(options.criterion, std::vector<double>(static_cast<size_t>(exits), kExitDisabled));
  if (exits > 0) {
    std::vector<torch::Tensor> scores, correct;
    for (const auto& logits : held.exits) {
      scores.push_back(ExitScores(options.criterion, logits));
      correct.push_back(logits.argmax(1).eq(labels));
    }
    auto result = Calibrate(scores, correct, held.offloaded.argmax(1).eq(labels), options.criterion,
                            options.target, Accuracy(held.local_fp32, labels));
    if (result.ok()) {
      point.exit_policy = result->policy();
      calibration = result->ToJson();
    } else {
      calibration["exits_closed"] = result.status().ToString();
    }
  }
  calibration["held_out"] = PointAccuracies(held, labels, point.exit_policy);
  if (!entropy_report.is_null()) calibration["wire_entropy"] = entropy_report;
  calibration["sweep"] = ThresholdSweep(held.exits, held.offloaded, labels, options.criterion);
  if (test.size() > 0) {
    CLEAVE_ASSIGN_OR_RETURN(const PointLogits t, RunPoint(model, point, test));
    calibration["test"] = PointAccuracies(t, test.labels(), point.exit_policy);
  }
  point.calibration = calibration;
  LogLine(options.log,
          where + ": " + wire::DTypeName(point.wire_dtype) + " wire, held-out " +
              std::to_string(100.0 * calibration["held_out"]["split_exit"].get<double>()) +
              "% with " +
              std::to_string(100.0 * calibration["held_out"]["exit_fraction"].get<double>()) +
              "% answered at the edge");
  return point.Validate(model.spec);
}

}  // namespace cleave::split
