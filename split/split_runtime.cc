#include "split/split_runtime.h"

#include "common/image_codec.h"
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

Result<torch::Tensor> DecodeImageTensor(std::string_view encoded, const InputSpec& input) {
  CLEAVE_ASSIGN_OR_RETURN(const PixelImage image, DecodeImagePixels(encoded, 0));
  return PrepareImageTensor(image, input);
}

// ---------------------------------------------------------------------------- EdgeModel

Result<std::unique_ptr<EdgeModel>> EdgeModel::Load(const Bundle& bundle, const Options& options) {
  VisionBundleParts parts;
  parts.head_fp32 = !options.int8;
  parts.exits_fp32 = !options.int8;
  parts.tail_fp32 = false;
  parts.head_int8 = options.int8;
  CLEAVE_ASSIGN_OR_RETURN(VisionSplitModel model, ReadVisionBundle(bundle, parts));
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

std::string EdgeModel::engine() const { return int8_ ? model_.int8_head->engine() : "fp32"; }

Result<EdgeHeadOutput> EdgeModel::Run(const torch::Tensor& images) {
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
  cloud->model_ = std::move(model);
  return cloud;
}

Result<torch::Tensor> CloudModel::RunTail(const torch::Tensor& features) {
  const std::vector<int64_t> per_item(feature_shape_.begin(), feature_shape_.end());
  CLEAVE_RETURN_IF_ERROR(CheckBatch(features, per_item, "tail input features"));
  return CallTorch(TorchSource::kOwnState, "cloud tail: libtorch failed", [&] {
    torch::NoGradGuard no_grad;
    return tail_.Run(features);
  });
}

Result<torch::Tensor> CloudModel::RunFull(const torch::Tensor& images) {
  CLEAVE_RETURN_IF_ERROR(CheckBatch(images, SpecImageShape(model_.spec), "cloud input images"));
  return CallTorch(TorchSource::kOwnState, "cloud full model: libtorch failed", [&] {
    torch::NoGradGuard no_grad;
    return model_.net->forward(images.to(torch::kFloat).contiguous());
  });
}

// --------------------------------------------------------------------------- LocalModel

Result<std::unique_ptr<LocalModel>> LocalModel::Load(const Bundle& bundle) {
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
    return model_.net->forward(images.to(torch::kFloat).contiguous());
  });
}

}  // namespace cleave::split
