#include "edge/adaptable_model.h"

#include <utility>

#include "split/head_int8_graph.h"
#include "split/imported_model.h"
#include "split/int8_head.h"
#include "split/torch_status.h"
#include "split/vision_bundle.h"
#include "split/vision_model.h"

namespace cleave::edge {

namespace F = torch::nn::functional;
using federated::LabeledBatch;

namespace {

// Train mode with BatchNorm frozen: served data drifts, and the statistics the head was
// quantized and the tail trained with must hold.
void TrainWithFrozenBatchNorm(torch::nn::Module& module) {
  module.train();
  for (auto& m : module.modules(/*include_self=*/false)) {
    if (dynamic_cast<torch::nn::BatchNorm2dImpl*>(m.get()) != nullptr) m->eval();
  }
}

// Copies `src`'s parameters and buffers into `dst`, a module of the same structure, and
// puts `dst` in eval mode.
void CopyModuleState(const torch::nn::Module& src, torch::nn::Module& dst) {
  torch::NoGradGuard no_grad;
  auto params = src.named_parameters();
  for (auto& p : dst.named_parameters()) p.value().copy_(params[p.key()]);
  auto buffers = src.named_buffers();
  for (auto& b : dst.named_buffers()) b.value().copy_(buffers[b.key()]);
  dst.eval();
}

// ------------------------------------------------------------------- vision-split

// A deep copy of a network (its own parameters and buffers), in eval mode.
split::SplitVisionNet CopyVisionNet(const split::SplitVisionNet& net) {
  split::SplitVisionNet copy(net->spec());
  CopyModuleState(*net, *copy);
  return copy;
}

// Exit logits of `net` on `images`: [N, exits, classes].
torch::Tensor VisionExitStack(split::SplitVisionNet& net, const torch::Tensor& images,
                              int head_end) {
  return torch::stack(net->ForwardWithExits(images, head_end).exit_logits, 1);
}

// What the strategy trains: the exits (and, scope head, the blocks before the encoder).
class VisionHeadTrainee final : public federated::ContinualModel {
 public:
  VisionHeadTrainee(split::SplitVisionNet net, split::SplitVisionNet original, int head_end,
                    bool whole_head, double code_weight)
      : net_(std::move(net)),
        original_(std::move(original)),
        head_end_(head_end),
        whole_head_(whole_head),
        code_weight_(code_weight) {
    for (int j = 0; j < net_->num_exits(); ++j) {
      for (auto& p : net_->exit(j)->parameters()) params_.push_back(p);
    }
    // The encoder is block head_end - 1: it stays as it is.
    if (whole_head_) {
      for (int b = 0; b + 1 < head_end_; ++b) {
        for (auto& p : net_->block(b).parameters()) params_.push_back(p);
      }
    }
    for (auto& p : net_->parameters()) p.set_requires_grad(false);
    for (auto& p : params_) p.set_requires_grad(true);
  }
  torch::Tensor Forward(const torch::Tensor& images) override {
    return VisionExitStack(net_, images, head_end_);
  }
  std::vector<torch::Tensor> Parameters() override { return params_; }
  Result<FrozenForward> Snapshot() override {
    auto frozen = std::make_shared<split::SplitVisionNet>(CopyVisionNet(net_));
    const int end = head_end_;
    return FrozenForward([frozen, end](const torch::Tensor& x) {
      torch::NoGradGuard no_grad;
      return VisionExitStack(*frozen, x, end);
    });
  }
  torch::Tensor AuxiliaryLoss(const torch::Tensor& images) override {
    if (!whole_head_ || code_weight_ <= 0) return {};
    torch::Tensor target;
    {
      torch::NoGradGuard no_grad;
      target = original_->ForwardWithExits(images, head_end_).features;
    }
    return code_weight_ * F::mse_loss(net_->ForwardWithExits(images, head_end_).features, target);
  }
  void SetTraining(bool training) override {
    if (training) {
      TrainWithFrozenBatchNorm(*net_);
    } else {
      net_->eval();
    }
  }

 private:
  split::SplitVisionNet net_, original_;
  int head_end_;
  bool whole_head_;
  double code_weight_;
  std::vector<torch::Tensor> params_;
};

class VisionAdaptableModel final : public AdaptableModel {
 public:
  VisionAdaptableModel(split::VisionSplitModel model, bool whole_head, double code_weight)
      : model_(std::move(model)),
        original_(CopyVisionNet(model_.net)),
        whole_head_(whole_head),
        code_weight_(code_weight) {}

  std::string kind() const override { return split::kVisionSplitKind; }
  int num_classes() const override { return model_.spec.num_classes; }
  std::vector<int64_t> input_shape() const override {
    return {model_.spec.input_channels, model_.spec.image_size, model_.spec.image_size};
  }
  const split::ExitPolicy& exit_policy() const override { return model_.exit_policy; }
  const nlohmann::json& calibration() const override { return model_.calibration; }

  std::unique_ptr<federated::ContinualModel> Trainable() override {
    return std::make_unique<VisionHeadTrainee>(model_.net, original_, model_.head_end(),
                                               whole_head_, code_weight_);
  }
  std::vector<torch::Tensor> ExitLogits(const torch::Tensor& images) override {
    torch::NoGradGuard no_grad;
    model_.net->eval();
    return model_.net->ForwardWithExits(images, model_.head_end()).exit_logits;
  }
  Result<std::unique_ptr<split::EdgeModel>> Serving(const split::EdgeModel::Options& options,
                                                    const torch::Tensor& calibration) override {
    // A copy of the adapted network, its int8 head re-quantized on what was served.
    split::VisionSplitModel serving = model_;
    serving.net = CopyVisionNet(model_.net);
    if (options.int8) {
      CLEAVE_ASSIGN_OR_RETURN(
          split::Int8Head int8,
          split::Int8Head::Quantize(*serving.net, model_.head_end(), calibration));
      serving.int8_head = std::make_shared<split::Int8Head>(std::move(int8));
    }
    return split::EdgeModel::FromModel(std::move(serving), options);
  }

 private:
  split::VisionSplitModel model_;   // model_.net: the network being adapted
  split::SplitVisionNet original_;  // as the bundle has it (distillation on the code)
  bool whole_head_;
  double code_weight_;
};

// -------------------------------------------------------------- torchscript-split

// Copies of an imported model's exits (their own weights, eval mode).
std::vector<split::ExitHead> CopyImportedExits(const split::ImportedSplitModel& model) {
  std::vector<split::ExitHead> copies;
  for (size_t i = 0; i < model.exits.size(); ++i) {
    split::ExitSpec spec;
    spec.hidden_channels = model.exit_hidden[i];
    split::ExitHead copy(spec, static_cast<int>(model.head_output_shape[0]), model.num_classes());
    CopyModuleState(*model.exits[i], *copy);
    copies.push_back(std::move(copy));
  }
  return copies;
}

// The frozen head's output h on `images`, computed once without grad, then every exit on
// it: one [N, classes] per exit. Autograd records the exits unless the caller disables it.
std::vector<torch::Tensor> ImportedExitLogits(split::ImportedSplitModel& model,
                                              const torch::Tensor& images) {
  torch::Tensor h;
  {
    torch::NoGradGuard no_grad;
    h = model.RunHead(images);
  }
  std::vector<torch::Tensor> logits;
  for (auto& exit : model.exits) logits.push_back(exit->forward(h));
  return logits;
}

// What the strategy trains on an imported model: its exits, on the frozen head's output.
class ImportedExitsTrainee final : public federated::ContinualModel {
 public:
  explicit ImportedExitsTrainee(split::ImportedSplitModel& model) : model_(model) {
    for (auto& exit : model_.exits) {
      for (auto& p : exit->parameters()) {
        p.set_requires_grad(true);
        params_.push_back(p);
      }
    }
  }
  torch::Tensor Forward(const torch::Tensor& images) override {
    return torch::stack(ImportedExitLogits(model_, images), 1);
  }
  std::vector<torch::Tensor> Parameters() override { return params_; }
  Result<FrozenForward> Snapshot() override {
    // The head is frozen: the snapshot shares it and copies only the exits.
    auto frozen = std::make_shared<split::ImportedSplitModel>(model_);
    frozen->exits = CopyImportedExits(model_);
    return FrozenForward([frozen](const torch::Tensor& x) {
      torch::NoGradGuard no_grad;
      return torch::stack(ImportedExitLogits(*frozen, x), 1);
    });
  }
  void SetTraining(bool training) override {
    for (auto& exit : model_.exits) {
      if (training) {
        TrainWithFrozenBatchNorm(*exit);
      } else {
        exit->eval();
      }
    }
  }

 private:
  split::ImportedSplitModel& model_;
  std::vector<torch::Tensor> params_;
};

class ImportedAdaptableModel final : public AdaptableModel {
 public:
  // `int8_head`: Int8GraphHead::Serialize of the bundle's int8 head ("" without one).
  ImportedAdaptableModel(split::ImportedSplitModel model, std::string int8_head)
      : model_(std::move(model)), int8_head_(std::move(int8_head)) {}

  std::string kind() const override { return split::kTorchScriptSplitKind; }
  int num_classes() const override { return model_.num_classes(); }
  std::vector<int64_t> input_shape() const override {
    return {model_.input.channels, model_.input.height, model_.input.width};
  }
  const split::ExitPolicy& exit_policy() const override { return model_.exit_policy; }
  const nlohmann::json& calibration() const override { return model_.calibration; }

  std::unique_ptr<federated::ContinualModel> Trainable() override {
    return std::make_unique<ImportedExitsTrainee>(model_);
  }
  std::vector<torch::Tensor> ExitLogits(const torch::Tensor& images) override {
    torch::NoGradGuard no_grad;
    for (auto& exit : model_.exits) exit->eval();
    return ImportedExitLogits(model_, images);
  }
  Result<std::unique_ptr<split::EdgeModel>> Serving(const split::EdgeModel::Options& options,
                                                    const torch::Tensor& calibration) override {
    (void)calibration;  // the head is the bundle's: its int8 version serves unchanged
    auto serving = std::make_shared<split::ImportedSplitModel>(model_);
    serving->head = model_.head.clone();  // deep: the serving thread runs its own modules
    serving->head.eval();
    serving->encoder =
        split::BottleneckEncoder(static_cast<int>(model_.head_output_shape[0]),
                                 model_.bottleneck_channels, model_.bottleneck_stride);
    CopyModuleState(*model_.encoder, *serving->encoder);
    serving->exits = CopyImportedExits(model_);
    serving->decoder = split::BottleneckDecoder(nullptr);  // the cloud's; the edge never runs it
    serving->int8_head = nullptr;
    if (options.int8) {
      if (int8_head_.empty()) {
        return Status::FailedPrecondition("adaptation: the imported bundle has no int8 head");
      }
      CLEAVE_ASSIGN_OR_RETURN(split::Int8GraphHead int8,
                              split::Int8GraphHead::Deserialize(int8_head_, serving->head));
      serving->int8_head = std::make_shared<split::Int8GraphHead>(std::move(int8));
    }
    return split::EdgeModel::FromImported(std::move(serving), options);
  }

 private:
  split::ImportedSplitModel model_;  // fp32 head (frozen), encoder (frozen), exits (adapted)
  std::string int8_head_;
};

Result<std::shared_ptr<AdaptableModel>> LoadVisionAdaptable(const Bundle& bundle, bool whole_head,
                                                            double code_weight) {
  split::VisionBundleParts parts;
  parts.head_fp32 = true;
  parts.exits_fp32 = true;
  parts.tail_fp32 = false;
  parts.head_int8 = false;
  CLEAVE_ASSIGN_OR_RETURN(split::VisionSplitModel model, split::ReadVisionBundle(bundle, parts));
  if (model.spec.exits.empty()) {
    return Status::FailedPrecondition(
        "edge.adapt_enabled: the bundle's model has no early exit to adapt");
  }
  return std::shared_ptr<AdaptableModel>(
      std::make_shared<VisionAdaptableModel>(std::move(model), whole_head, code_weight));
}

Result<std::shared_ptr<AdaptableModel>> LoadImportedAdaptable(const Bundle& bundle,
                                                              const split::EdgeModel::Options& head,
                                                              const std::string& scope) {
  if (scope != "exits") {
    return Status::FailedPrecondition(
        "edge.adapt_scope = " + scope +
        ": an imported (torchscript-split) bundle adapts only its exits (its TorchScript head "
        "and encoder stay frozen); set edge.adapt_scope = exits");
  }
  split::ImportedBundleParts parts;
  parts.head = true;
  parts.head_int8 = head.int8;
  parts.edge = true;
  parts.tail = false;
  parts.cloud = false;
  CLEAVE_ASSIGN_OR_RETURN(split::ImportedSplitModel model,
                          split::ReadImportedBundle(bundle, parts));
  if (model.exits.empty()) {
    return Status::FailedPrecondition(
        "edge.adapt_enabled: the bundle's model has no early exit to adapt");
  }
  std::string int8;
  if (model.int8_head) {
    CLEAVE_ASSIGN_OR_RETURN(int8, model.int8_head->Serialize());
    model.int8_head = nullptr;  // each engine Serving builds gets its own (engines prepack it)
  }
  return std::shared_ptr<AdaptableModel>(
      std::make_shared<ImportedAdaptableModel>(std::move(model), std::move(int8)));
}

}  // namespace

double AdaptableModel::Disagreement(const LabeledBatch& check) {
  if (check.size() == 0) return 0.0;
  torch::NoGradGuard no_grad;
  const std::vector<torch::Tensor> exits = ExitLogits(check.images);
  const std::vector<int> decided = exit_policy().Decide(exits);
  const torch::Tensor teacher = check.soft.argmax(1);
  int64_t differ = 0;
  for (size_t r = 0; r < decided.size(); ++r) {
    if (decided[r] < 0) continue;
    differ += exits[decided[r]][static_cast<int64_t>(r)].argmax().item<int64_t>() !=
              teacher[static_cast<int64_t>(r)].item<int64_t>();
  }
  return decided.empty() ? 0.0 : static_cast<double>(differ) / decided.size();
}

Result<std::shared_ptr<AdaptableModel>> LoadAdaptableModel(const Bundle& bundle,
                                                           const split::EdgeModel::Options& head,
                                                           const std::string& scope,
                                                           double code_weight) {
  // The readers report their own errors; copying the network is ours (kOwnState).
  if (bundle.kind() == split::kVisionSplitKind) {
    return split::CallTorch(split::TorchSource::kOwnState, "adaptation: loading the bundle", [&] {
      return LoadVisionAdaptable(bundle, scope == "head", code_weight);
    });
  }
  if (bundle.kind() == split::kTorchScriptSplitKind) {
    return split::CallTorch(split::TorchSource::kOwnState, "adaptation: loading the bundle",
                            [&] { return LoadImportedAdaptable(bundle, head, scope); });
  }
  return Status::FailedPrecondition(
      "edge.adapt_enabled: on-gateway adaptation supports vision-split and torchscript-split "
      "bundles; this bundle is " +
      bundle.kind());
}

}  // namespace cleave::edge
