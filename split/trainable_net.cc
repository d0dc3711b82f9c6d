#include "split/trainable_net.h"

#include <algorithm>
#include <cctype>
#include <utility>

#include "split/torch_status.h"
#include "split/torchscript_model.h"
#include "split/vision_bundle.h"
#include "split/wire_quant.h"

namespace cleave::split {
namespace {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Appends `module`'s parameters (then, in a second call, float buffers) under `prefix`.
void AppendNnParameters(torch::nn::Module& module, const std::string& prefix, NamedTensors& out) {
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    out.emplace_back(prefix + item.key(), item.value());
  }
}
void AppendNnBuffers(torch::nn::Module& module, const std::string& prefix, NamedTensors& out) {
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    if (item.value().is_floating_point()) out.emplace_back(prefix + item.key(), item.value());
  }
}
void AppendJitParameters(const torch::jit::Module& module, const std::string& prefix,
                         NamedTensors& out) {
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    out.emplace_back(prefix + item.name, item.value);
  }
}
void AppendJitBuffers(const torch::jit::Module& module, const std::string& prefix,
                      NamedTensors& out) {
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    if (item.value.is_floating_point()) out.emplace_back(prefix + item.name, item.value);
  }
}

TrainableNet::Tensors ToTensors(NamedTensors parameters, NamedTensors buffers) {
  TrainableNet::Tensors t;
  t.num_parameters = parameters.size();
  for (auto* list : {&parameters, &buffers}) {
    for (auto& [name, tensor] : *list) {
      t.names.push_back(std::move(name));
      t.tensors.push_back(std::move(tensor));
    }
  }
  return t;
}

// Copies `from`'s exchanged values into `to` (same kind and layout by construction).
void CopyExchanged(TrainableNet::Tensors from, TrainableNet::Tensors to) {
  torch::NoGradGuard no_grad;
  TORCH_CHECK(from.tensors.size() == to.tensors.size(), "clone: layouts differ");
  for (size_t i = 0; i < from.tensors.size(); ++i) to.tensors[i].copy_(from.tensors[i]);
}

bool IsJitBatchNorm(const torch::jit::Module& module) {
  const auto& name = module.type()->name();
  return name && name->name().find("BatchNorm") != std::string::npos;
}

// Train mode for a TorchScript module and its children, BatchNorm layers back in eval mode
// when asked. Modules built without a "training" attribute (possible from C++) have no mode.
void SetJitMode(const torch::jit::Module& module, TrainableNet::Mode mode) {
  for (torch::jit::Module child : module.modules()) {
    const bool on = mode == TrainableNet::Mode::kTrain ||
                    (mode == TrainableNet::Mode::kTrainFrozenBatchNorm && !IsJitBatchNorm(child));
    if (child.hasattr("training")) child.setattr("training", on);
  }
}

void SetNnMode(torch::nn::Module& module, TrainableNet::Mode mode) {
  module.train(mode != TrainableNet::Mode::kEval);
  if (mode != TrainableNet::Mode::kTrainFrozenBatchNorm) return;
  for (const auto& child : module.modules(/*include_self=*/false)) {
    if (child->as<torch::nn::BatchNorm2d>() != nullptr) child->eval();
  }
}

// A deep copy whose parameters take part in autograd again (deepcopy detaches them).
torch::jit::Module CopyJit(const torch::jit::Module& module) {
  torch::jit::Module copy;
  {
    // deepcopy clones tensors: without this guard a clone of a parameter that requires grad
    // would be a non-leaf tensor (CloneBackward) that no optimizer takes.
    torch::NoGradGuard no_grad;
    copy = module.deepcopy();
  }
  for (const auto& parameter : copy.named_parameters(/*recurse=*/true)) {
    parameter.value.set_requires_grad(true);
  }
  SetJitMode(copy, TrainableNet::Mode::kEval);
  return copy;
}

class VisionTrainable final : public TrainableNet {
 public:
  VisionTrainable(SplitVisionNet net, InputSpec input)
      : net_(std::move(net)), input_(std::move(input)) {}
  std::string kind() const override { return kVisionSplitKind; }
  const InputSpec& input() const override { return input_; }
  int split_after() const override { return net_->spec().split_after; }
  Tensors Exchanged() override {
    NamedTensors parameters, buffers;
    AppendNnParameters(*net_, "", parameters);
    AppendNnBuffers(*net_, "", buffers);
    return ToTensors(std::move(parameters), std::move(buffers));
  }
  void SetMode(Mode mode) override { SetNnMode(*net_, mode); }
  torch::Tensor Forward(const torch::Tensor& images) override { return net_->forward(images); }
  Result<std::unique_ptr<TrainableNet>> Clone() const override {
    return CallTorch(
        TorchSource::kOwnState, "copying the network", [&]() -> std::unique_ptr<TrainableNet> {
          auto copy = std::make_unique<VisionTrainable>(SplitVisionNet(net_->spec()), input_);
          CopyExchanged(const_cast<VisionTrainable*>(this)->Exchanged(), copy->Exchanged());
          copy->net_->eval();
          return copy;
        });
  }

 private:
  SplitVisionNet net_;
  InputSpec input_;
};

class ScriptTrainable final : public TrainableNet {
 public:
  ScriptTrainable(torch::jit::Module module, InputSpec input)
      : module_(std::move(module)), input_(std::move(input)) {}
  std::string kind() const override { return "torchscript"; }
  const InputSpec& input() const override { return input_; }
  Tensors Exchanged() override {
    NamedTensors parameters, buffers;
    AppendJitParameters(module_, "", parameters);
    AppendJitBuffers(module_, "", buffers);
    return ToTensors(std::move(parameters), std::move(buffers));
  }
  void SetMode(Mode mode) override { SetJitMode(module_, mode); }
  torch::Tensor Forward(const torch::Tensor& images) override {
    // A copy: layers such as nn.ReLU(inplace=True) write into their input.
    return module_.forward({images.clone()}).toTensor();
  }
  Result<std::unique_ptr<TrainableNet>> Clone() const override {
    return CallTorch(TorchSource::kOwnState, "copying the TorchScript model",
                     [&]() -> std::unique_ptr<TrainableNet> {
                       return std::make_unique<ScriptTrainable>(CopyJit(module_), input_);
                     });
  }

 private:
  torch::jit::Module module_;
  InputSpec input_;
};

class ImportedTrainable final : public TrainableNet {
 public:
  explicit ImportedTrainable(ImportedSplitModel model) : model_(std::move(model)) {}
  std::string kind() const override { return kTorchScriptSplitKind; }
  const InputSpec& input() const override { return model_.input; }
  Tensors Exchanged() override {
    NamedTensors parameters, buffers;
    ForEachPart([&](const torch::jit::Module& m,
                    const std::string& prefix) { AppendJitParameters(m, prefix, parameters); },
                [&](torch::nn::Module& m, const std::string& prefix) {
                  AppendNnParameters(m, prefix, parameters);
                });
    ForEachPart([&](const torch::jit::Module& m,
                    const std::string& prefix) { AppendJitBuffers(m, prefix, buffers); },
                [&](torch::nn::Module& m, const std::string& prefix) {
                  AppendNnBuffers(m, prefix, buffers);
                });
    return ToTensors(std::move(parameters), std::move(buffers));
  }
  void SetMode(Mode mode) override {
    SetJitMode(model_.head, mode);
    SetJitMode(model_.tail, mode);
    SetNnMode(*model_.encoder, mode);
    SetNnMode(*model_.decoder, mode);
    for (ExitHead& exit : model_.exits) SetNnMode(*exit, mode);
  }
  torch::Tensor Forward(const torch::Tensor& images) override {
    const torch::Tensor h = model_.head.forward({model_.Normalize(images)}).toTensor();
    const torch::Tensor code =
        FakeQuantizeWire(model_.encoder->forward(h), model_.wire_quant, model_.wire_dtype);
    return model_.tail.forward({model_.decoder->forward(code)}).toTensor();
  }
  Result<std::unique_ptr<TrainableNet>> Clone() const override {
    return CallTorch(TorchSource::kOwnState, "copying the imported model",
                     [&]() -> Result<std::unique_ptr<TrainableNet>> {
                       ImportedSplitModel copy = model_;
                       copy.head = CopyJit(model_.head);
                       copy.tail = CopyJit(model_.tail);
                       copy.int8_head = nullptr;  // serving only; never trained
                       CLEAVE_RETURN_IF_ERROR(copy.BuildBottleneck());
                       auto net = std::make_unique<ImportedTrainable>(std::move(copy));
                       CopyExchanged(const_cast<ImportedTrainable*>(this)->Exchanged(),
                                     net->Exchanged());
                       net->SetMode(Mode::kEval);
                       return std::unique_ptr<TrainableNet>(std::move(net));
                     });
  }

 private:
  // Visits the parts in layout order: head, encoder, exits, decoder, tail.
  template <typename JitFn, typename NnFn>
  void ForEachPart(JitFn&& jit, NnFn&& nn) {
    jit(model_.head, "head.");
    nn(*model_.encoder, "encoder.");
    for (size_t i = 0; i < model_.exits.size(); ++i) {
      nn(*model_.exits[i], "exit" + std::to_string(i) + ".");
    }
    nn(*model_.decoder, "decoder.");
    jit(model_.tail, "tail.");
  }

  ImportedSplitModel model_;
};

}  // namespace

std::unique_ptr<TrainableNet> MakeTrainable(SplitVisionNet net, InputSpec input) {
  return std::make_unique<VisionTrainable>(std::move(net), std::move(input));
}

std::unique_ptr<TrainableNet> MakeTrainable(const VisionModelSpec& spec, InputSpec input) {
  return MakeTrainable(SplitVisionNet(spec), std::move(input));
}

Result<std::unique_ptr<TrainableNet>> LoadTorchScriptTrainable(const std::filesystem::path& path,
                                                               const InputSpec& input) {
  CLEAVE_RETURN_IF_ERROR(input.Validate().WithContext(path.string()));
  TorchScriptModel::Options options;
  options.input_shape = {input.channels, input.height, input.width};
  CLEAVE_ASSIGN_OR_RETURN(TorchScriptModel model, TorchScriptModel::Load(path, options));
  const int64_t classes = static_cast<int64_t>(input.class_names.size());
  CLEAVE_ASSIGN_OR_RETURN(
      torch::Tensor sample_out,
      model.Forward(torch::rand({2, input.channels, input.height, input.width}, torch::kFloat)));
  if (sample_out.dim() != 2 || sample_out.size(0) != 2 || sample_out.size(1) != classes) {
    std::string shape;
    for (int64_t d : sample_out.sizes()) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
    return Status::InvalidArgument(
        path.string() + ": forward must map [N, " + std::to_string(input.channels) + ", " +
        std::to_string(input.height) + ", " + std::to_string(input.width) + "] images to [N, " +
        std::to_string(classes) + "] logits for this data; it gave [" + shape + "] for N = 2");
  }
  CLEAVE_ASSIGN_OR_RETURN(torch::jit::Module module, model.CopyModule());
  return CallTorch(TorchSource::kOwnState, "preparing the TorchScript model for training",
                   [&]() -> std::unique_ptr<TrainableNet> {
                     for (const auto& parameter : module.named_parameters(true)) {
                       parameter.value.set_requires_grad(true);
                     }
                     SetJitMode(module, TrainableNet::Mode::kEval);
                     return std::make_unique<ScriptTrainable>(std::move(module), input);
                   });
}

Result<std::unique_ptr<TrainableNet>> MakeTrainable(ImportedSplitModel model) {
  if (!model.has_head || !model.has_tail || !model.encoder || !model.decoder) {
    return Status::InvalidArgument("training an imported model needs all of its parts");
  }
  return CallTorch(TorchSource::kOwnState, "preparing the imported model for training",
                   [&]() -> std::unique_ptr<TrainableNet> {
                     for (torch::jit::Module* m : {&model.head, &model.tail}) {
                       for (const auto& parameter : m->named_parameters(true)) {
                         parameter.value.set_requires_grad(true);
                       }
                     }
                     model.int8_head = nullptr;
                     auto net = std::make_unique<ImportedTrainable>(std::move(model));
                     net->SetMode(TrainableNet::Mode::kEval);
                     return net;
                   });
}

Result<std::unique_ptr<TrainableNet>> TrainableFromBundle(const Bundle& bundle) {
  if (bundle.kind() == kTorchScriptSplitKind) {
    ImportedBundleParts parts;
    parts.head_int8 = false;
    CLEAVE_ASSIGN_OR_RETURN(ImportedSplitModel model, ReadImportedBundle(bundle, parts));
    return MakeTrainable(std::move(model));
  }
  if (bundle.kind() == kVisionSplitKind) {
    VisionBundleParts parts;
    parts.head_int8 = false;
    CLEAVE_ASSIGN_OR_RETURN(VisionSplitModel model, ReadVisionBundle(bundle, parts));
    return MakeTrainable(std::move(model.net), std::move(model.input));
  }
  return Status::InvalidArgument("bundle " + bundle.dir().string() + " is of kind '" +
                                 bundle.kind() + "': only vision-split and " +
                                 kTorchScriptSplitKind + " models can be trained");
}

bool IsTorchScriptPath(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == ".pt" || ext == ".pth" || ext == ".ptc";
}

}  // namespace cleave::split
