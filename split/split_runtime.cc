#include "split/split_runtime.h"

#include "common/image_codec.h"
#include "split/imported_model.h"
#include "split/torch_status.h"

namespace cleave::split {
namespace {

std::string ShapeString(const std::vector<int64_t>& dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) out += (i ? "," : "") + std::to_string(dims[i]);
  return out + "]";
}

std::vector<int64_t> SpecImageShape(const VisionModelSpec& spec) {
  return {spec.input_channels, spec.image_size, spec.image_size};
}

}  // namespace

Status CheckBatch(const torch::Tensor& tensor, const std::vector<int64_t>& per_item,
                  const char* what) {
  std::vector<int64_t> want = {-1};
  want.insert(want.end(), per_item.begin(), per_item.end());
  const std::string want_text = "[N," + ShapeString(per_item).substr(1);
  if (!tensor.defined()) return Status::InvalidArgument(std::string(what) + " is empty");
  if (!tensor.is_floating_point()) {
    return Status::InvalidArgument(std::string(what) + " must be floating point");
  }
  const std::vector<int64_t> got = tensor.sizes().vec();
  bool ok = got.size() == want.size() && got[0] >= 1;
  for (size_t i = 1; ok && i < want.size(); ++i) ok = got[i] == want[i];
  if (!ok) {
    return Status::InvalidArgument(std::string(what) + " has shape " + ShapeString(got) +
                                   ", expected " + want_text + " with N >= 1");
  }
  // Every libtorch call below runs on checked inputs: a failure is ours (kOwnState).
  CLEAVE_ASSIGN_OR_RETURN(const bool finite,
                          CallTorch(TorchSource::kOwnState, std::string(what) + ": libtorch failed",
                                    [&] { return torch::isfinite(tensor).all().item<bool>(); }));
  if (!finite) return Status::InvalidArgument(std::string(what) + " contains NaN or infinity");
  return Status::Ok();
}

torch::Tensor ImagesToTensor(const uint8_t* pixels, int64_t n, int rows, int cols) {
  // from_blob does not take ownership; to(kFloat) copies before we return.
  return torch::from_blob(const_cast<uint8_t*>(pixels), {n, 1, rows, cols}, torch::kUInt8)
      .to(torch::kFloat)
      .div_(255.0);
}

torch::Tensor ImagesToTensor(const uint8_t* pixels, int64_t n, int channels, int rows, int cols) {
  return torch::from_blob(const_cast<uint8_t*>(pixels), {n, channels, rows, cols}, torch::kUInt8)
      .to(torch::kFloat)
      .div_(255.0);
}

Result<torch::Tensor> PrepareImageTensor(const PixelImage& image, const InputSpec& input) {
  std::vector<uint8_t> chw(static_cast<size_t>(input.bytes()));
  CLEAVE_RETURN_IF_ERROR(input.Prepare(image, chw.data()));
  return ImagesToTensor(chw.data(), 1, input.channels, input.height, input.width);
}

Result<InputSpec> ReadBundleInput(const Bundle& bundle) {
  if (bundle.kind() == kTorchScriptSplitKind) {
    ImportedBundleParts none;
    none.head = none.edge = none.tail = none.cloud = false;
    CLEAVE_ASSIGN_OR_RETURN(const ImportedSplitModel imported, ReadImportedBundle(bundle, none));
    return imported.input;
  }
  VisionBundleParts none;
  none.head_fp32 = none.exits_fp32 = none.tail_fp32 = none.head_int8 = false;
  CLEAVE_ASSIGN_OR_RETURN(const VisionSplitModel model, ReadVisionBundle(bundle, none));
  return model.input;
}

Result<torch::Tensor> DecodeImageTensor(std::string_view encoded, const InputSpec& input) {
  CLEAVE_ASSIGN_OR_RETURN(const PixelImage image, DecodeImagePixels(encoded, 0));
  return PrepareImageTensor(image, input);
}

namespace {

// The description a runtime object keeps of an imported bundle: the common fields of
// VisionSplitModel (name, input, wire, exit policy, reports), and a spec that holds only
// the input's channels, size and class count (there are no cleave blocks; net stays null).
VisionSplitModel DescribeImported(const ImportedSplitModel& imported) {
  VisionSplitModel d;
  d.name = imported.name;
  d.input = imported.input;
  d.spec.input_channels = imported.input.channels;
  d.spec.image_size = imported.input.height;
  d.spec.num_classes = imported.num_classes();
  d.wire_dtype = imported.wire_dtype;
  d.wire_quant = imported.wire_quant;
  d.exit_policy = imported.exit_policy;
  d.calibration = imported.calibration;
  d.int8_info = imported.int8_info;
  d.evaluation = imported.evaluation;
  d.training = imported.training;
  return d;
}

std::vector<int64_t> ImportedImageShape(const ImportedSplitModel& imported) {
  return {imported.input.channels, imported.input.height, imported.input.width};
}

// The whole fp32 split model of an imported bundle, without the wire: head, bottleneck,
// tail (what local_fp32 and the cloud's "send the image" baseline run).
torch::Tensor RunImportedWhole(ImportedSplitModel& imported, const torch::Tensor& images) {
  return imported.RunTail(imported.encoder->forward(imported.RunHead(images)));
}

}  // namespace

// ---------------------------------------------------------------------------- EdgeModel

Result<std::unique_ptr<EdgeModel>> EdgeModel::Load(const Bundle& bundle, const Options& options) {
  if (bundle.kind() == kTorchScriptSplitKind) {
    ImportedBundleParts parts;
    parts.tail = parts.cloud = false;
    parts.head_int8 = options.int8;
    CLEAVE_ASSIGN_OR_RETURN(ImportedSplitModel imported, ReadImportedBundle(bundle, parts));
    return FromImported(std::make_shared<ImportedSplitModel>(std::move(imported)), options);
  }
  VisionBundleParts parts;
  // Further split points run fp32 blocks on either side of the deployment split.
  const bool more_splits = bundle.model().contains("splits");
  parts.head_fp32 = !options.int8 || more_splits;
  parts.exits_fp32 = !options.int8 || more_splits;
  parts.tail_fp32 = more_splits;
  parts.head_int8 = options.int8;
  CLEAVE_ASSIGN_OR_RETURN(VisionSplitModel model, ReadVisionBundle(bundle, parts));
  return FromModel(std::move(model), options);
}

Result<std::unique_ptr<EdgeModel>> EdgeModel::FromModel(VisionSplitModel model,
                                                        const Options& options) {
  if (options.int8 ? model.int8_head == nullptr : model.net.is_empty()) {
    return Status::InvalidArgument(std::string("edge model: no ") +
                                   (options.int8 ? "int8 head" : "fp32 network") + " to run");
  }
  std::unique_ptr<EdgeModel> edge(new EdgeModel());
  CLEAVE_ASSIGN_OR_RETURN(edge->feature_shape_, FeatureShape(model.spec));
  if (options.int8) {
    CLEAVE_RETURN_IF_ERROR(model.int8_head->SelectEngine(options.int8_engine)
                               .WithContext("int8 engine '" + options.int8_engine + "'"));
  }
  edge->int8_ = options.int8;
  edge->model_ = std::move(model);
  return edge;
}

Result<std::unique_ptr<EdgeModel>> EdgeModel::FromImported(
    std::shared_ptr<ImportedSplitModel> imported, const Options& options) {
  if (imported == nullptr || imported->encoder.is_empty() ||
      (options.int8 ? imported->int8_head == nullptr : !imported->has_head)) {
    return Status::InvalidArgument(std::string("edge model: no ") +
                                   (options.int8 ? "int8 head" : "fp32 head") +
                                   " or no encoder to run");
  }
  if (options.int8) {
    CLEAVE_RETURN_IF_ERROR(imported->int8_head->SelectEngine(options.int8_engine)
                               .WithContext("int8 engine '" + options.int8_engine + "'"));
  }
  std::unique_ptr<EdgeModel> edge(new EdgeModel());
  edge->feature_shape_ = imported->FeatureShape();
  edge->model_ = DescribeImported(*imported);
  edge->int8_ = options.int8;
  edge->imported_ = std::move(imported);
  return edge;
}

std::string EdgeModel::engine() const {
  if (!int8_) return "fp32";
  return imported_ ? imported_->int8_head->engine() : model_.int8_head->engine();
}

int EdgeModel::num_exits() const {
  return imported_ ? static_cast<int>(imported_->exits.size())
                   : static_cast<int>(model_.spec.exits.size());
}

const ExitPolicy& EdgeModel::exit_policy(int split) const {
  return split == 0 ? model_.exit_policy : model_.splits[split - 1].exit_policy;
}
wire::DType EdgeModel::wire_dtype(int split) const {
  return split == 0 ? model_.wire_dtype : model_.splits[split - 1].wire_dtype;
}
const wire::QuantParams& EdgeModel::wire_quant(int split) const {
  return split == 0 ? model_.wire_quant : model_.splits[split - 1].wire_quant;
}
const std::vector<uint32_t>& EdgeModel::feature_shape(int split) const {
  return split == 0 ? feature_shape_ : model_.splits[split - 1].feature_shape;
}

wire::FeatureLayout EdgeModel::layout(int split) const {
  return {wire_dtype(split), feature_shape(split), wire_quant(split),
          split == 0 ? model_.wire_entropy : model_.splits[split - 1].wire_entropy};
}
uint16_t EdgeModel::layout_tag(int split) const {
  return wire::WireLayoutTag(layout(split), model_.name, split);
}

Result<EdgeHeadOutput> EdgeModel::Run(const torch::Tensor& images, int split) {
  if (split == 0) return Run(images);
  if (split < 0 || split >= num_splits()) {
    return Status::InvalidArgument("split point " + std::to_string(split) +
                                   " is not in the bundle (" + std::to_string(num_splits()) +
                                   " split points)");
  }
  CLEAVE_RETURN_IF_ERROR(CheckBatch(images, SpecImageShape(model_.spec), "edge input images"));
  return CallTorch(
      TorchSource::kOwnState, "edge head: libtorch failed", [&]() -> Result<EdgeHeadOutput> {
        torch::NoGradGuard no_grad;
        SplitVisionNetImpl::Outputs o = RunSplitHead(*model_.net, model_.splits[split - 1],
                                                     images.to(torch::kFloat).contiguous());
        EdgeHeadOutput out;
        out.exit_logits = std::move(o.exit_logits);
        out.features = o.features.contiguous();
        return out;
      });
}

Result<EdgeHeadOutput> EdgeModel::Run(const torch::Tensor& images) {
  if (imported_) {
    CLEAVE_RETURN_IF_ERROR(CheckBatch(images, ImportedImageShape(*imported_), "edge input images"));
    return CallTorch(TorchSource::kOwnState, "edge head: libtorch failed",
                     [&]() -> Result<EdgeHeadOutput> {
                       torch::NoGradGuard no_grad;
                       const torch::Tensor input = images.to(torch::kFloat).contiguous();
                       torch::Tensor h;
                       if (int8_) {
                         CLEAVE_ASSIGN_OR_RETURN(h, imported_->RunHeadInt8(input));
                       } else {
                         h = imported_->RunHead(input);
                       }
                       EdgeHeadOutput out;
                       for (auto& e : imported_->exits) out.exit_logits.push_back(e->forward(h));
                       out.features = imported_->encoder->forward(h).contiguous();
                       return out;
                     });
  }
  CLEAVE_RETURN_IF_ERROR(CheckBatch(images, SpecImageShape(model_.spec), "edge input images"));
  const auto run = [&]() -> Result<EdgeHeadOutput> {
    torch::NoGradGuard no_grad;
    const torch::Tensor input = images.to(torch::kFloat).contiguous();
    EdgeHeadOutput out;
    if (int8_) {
      CLEAVE_ASSIGN_OR_RETURN(SplitVisionNetImpl::Outputs o, model_.int8_head->Forward(input));
      out.exit_logits = std::move(o.exit_logits);
      out.features = std::move(o.features);
    } else {
      SplitVisionNetImpl::Outputs o = model_.net->ForwardWithExits(input, model_.head_end());
      out.exit_logits = std::move(o.exit_logits);
      out.features = std::move(o.features);
    }
    return out;
  };
  return CallTorch(TorchSource::kOwnState, "edge head: libtorch failed", run);
}

// --------------------------------------------------------------------------- CloudModel

Result<std::unique_ptr<CloudModel>> CloudModel::Load(const Bundle& bundle) {
  return Load(bundle, Options());
}

Result<std::unique_ptr<CloudModel>> CloudModel::Load(const Bundle& bundle, const Options& options) {
  if (bundle.kind() == kTorchScriptSplitKind) {
    // Every part: the tail for offloaded features, head + bottleneck for whole images. The
    // TorchScript tail runs in fp32 whatever options.precision asks (reported as fp32).
    CLEAVE_ASSIGN_OR_RETURN(ImportedSplitModel imported,
                            ReadImportedBundle(bundle, ImportedBundleParts()));
    std::unique_ptr<CloudModel> cloud(new CloudModel());
    cloud->feature_shape_ = imported.FeatureShape();
    cloud->model_ = DescribeImported(imported);
    cloud->imported_ = std::make_shared<ImportedSplitModel>(std::move(imported));
    return cloud;
  }
  VisionBundleParts parts;
  parts.exits_fp32 = false;
  CLEAVE_ASSIGN_OR_RETURN(VisionSplitModel model, ReadVisionBundle(bundle, parts));
  std::unique_ptr<CloudModel> cloud(new CloudModel());
  CLEAVE_ASSIGN_OR_RETURN(cloud->feature_shape_, FeatureShape(model.spec));
  const auto compile = [&] {
    return TailPlan::Compile(*model.net, model.head_end(), model.net->num_blocks(),
                             options.precision);
  };
  CLEAVE_ASSIGN_OR_RETURN(
      cloud->tail_, CallTorch(TorchSource::kOwnState, "cloud tail plan: libtorch failed", compile));
  for (const SplitPoint& point : model.splits) {
    const auto compile_point = [&] {
      return TailPlan::Compile(*model.net, point.resume, model.net->num_blocks(),
                               options.precision);
    };
    CLEAVE_ASSIGN_OR_RETURN(
        TailPlan plan,
        CallTorch(TorchSource::kOwnState, "cloud tail plan: libtorch failed", compile_point));
    cloud->split_tails_.push_back(std::move(plan));
  }
  cloud->model_ = std::move(model);
  return cloud;
}

Result<torch::Tensor> CloudModel::RunTail(const torch::Tensor& features) {
  const std::vector<int64_t> per_item(feature_shape_.begin(), feature_shape_.end());
  CLEAVE_RETURN_IF_ERROR(CheckBatch(features, per_item, "tail input features"));
  return CallTorch(TorchSource::kOwnState, "cloud tail: libtorch failed", [&] {
    torch::NoGradGuard no_grad;
    if (imported_) return imported_->RunTail(features.to(torch::kFloat).contiguous());
    return tail_.Run(features);
  });
}

const std::vector<uint32_t>& CloudModel::feature_shape(int split) const {
  return split == 0 ? feature_shape_ : model_.splits[split - 1].feature_shape;
}

wire::FeatureLayout CloudModel::layout(int split) const {
  if (split > 0) return model_.splits[split - 1].Layout();
  return {model_.wire_dtype, feature_shape_, model_.wire_quant, model_.wire_entropy};
}
uint16_t CloudModel::layout_tag(int split) const {
  return wire::WireLayoutTag(layout(split), model_.name, split);
}

Result<torch::Tensor> CloudModel::RunTail(const torch::Tensor& features, int split) {
  if (split == 0) return RunTail(features);
  if (split < 0 || split >= num_splits()) {
    return Status::InvalidArgument("split point " + std::to_string(split) +
                                   " is not served (the bundle has " +
                                   std::to_string(num_splits()) + ")");
  }
  const SplitPoint& point = model_.splits[split - 1];
  const std::vector<int64_t> per_item(point.feature_shape.begin(), point.feature_shape.end());
  CLEAVE_RETURN_IF_ERROR(CheckBatch(features, per_item, "tail input features"));
  return CallTorch(TorchSource::kOwnState, "cloud tail: libtorch failed", [&] {
    torch::NoGradGuard no_grad;
    return split_tails_[split - 1].Run(RunSplitDecoder(point, features.to(torch::kFloat)));
  });
}

Result<torch::Tensor> CloudModel::RunFull(const torch::Tensor& images) {
  CLEAVE_RETURN_IF_ERROR(CheckBatch(images, SpecImageShape(model_.spec), "cloud input images"));
  return CallTorch(TorchSource::kOwnState, "cloud full model: libtorch failed", [&] {
    torch::NoGradGuard no_grad;
    if (imported_) return RunImportedWhole(*imported_, images.to(torch::kFloat).contiguous());
    return model_.net->forward(images.to(torch::kFloat).contiguous());
  });
}

TailPrecision CloudModel::tail_precision() const {
  return imported_ ? TailPrecision::kFp32 : tail_.precision();
}

// --------------------------------------------------------------------------- LocalModel

Result<std::unique_ptr<LocalModel>> LocalModel::Load(const Bundle& bundle) {
  if (bundle.kind() == kTorchScriptSplitKind) {
    CLEAVE_ASSIGN_OR_RETURN(ImportedSplitModel imported,
                            ReadImportedBundle(bundle, ImportedBundleParts()));
    std::unique_ptr<LocalModel> local(new LocalModel());
    local->model_ = DescribeImported(imported);
    local->imported_ = std::make_shared<ImportedSplitModel>(std::move(imported));
    return local;
  }
  VisionBundleParts parts;
  parts.exits_fp32 = false;
  CLEAVE_ASSIGN_OR_RETURN(VisionSplitModel model, ReadVisionBundle(bundle, parts));
  std::unique_ptr<LocalModel> local(new LocalModel());
  local->model_ = std::move(model);
  return local;
}

Result<torch::Tensor> LocalModel::Run(const torch::Tensor& images) {
  CLEAVE_RETURN_IF_ERROR(CheckBatch(images, SpecImageShape(model_.spec), "input images"));
  return CallTorch(TorchSource::kOwnState, "local model: libtorch failed", [&] {
    torch::NoGradGuard no_grad;
    if (imported_) return RunImportedWhole(*imported_, images.to(torch::kFloat).contiguous());
    return model_.net->forward(images.to(torch::kFloat).contiguous());
  });
}

}  // namespace cleave::split
