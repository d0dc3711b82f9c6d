#include "split/imported_model.h"

#include <sstream>

#include "split/torch_status.h"
#include "split/wire_quant.h"

namespace cleave::split {
namespace {

using nlohmann::json;

constexpr int kMaxBottleneckChannels = 256;
constexpr int kMaxExitHidden = 1024;

struct ImportedTensor {
  std::string name;
  torch::Tensor tensor;
  bool is_buffer;
};

void CollectModule(const std::string& prefix, torch::nn::Module& module,
                   std::vector<ImportedTensor>& out) {
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    out.push_back({prefix + "." + p.key(), p.value(), false});
  }
  for (const auto& b : module.named_buffers(/*recurse=*/true)) {
    out.push_back({prefix + "." + b.key(), b.value(), true});
  }
}

std::vector<ImportedTensor> EdgeTensors(const ImportedSplitModel& model) {
  std::vector<ImportedTensor> out;
  CollectModule("encoder", *model.encoder.ptr(), out);
  for (size_t i = 0; i < model.exits.size(); ++i) {
    CollectModule("exit" + std::to_string(i), *model.exits[i].ptr(), out);
  }
  return out;
}

std::vector<ImportedTensor> CloudTensors(const ImportedSplitModel& model) {
  std::vector<ImportedTensor> out;
  CollectModule("decoder", *model.decoder.ptr(), out);
  return out;
}

Result<std::string> SaveArchive(const std::vector<ImportedTensor>& tensors, const char* file) {
  return CallTorch(TorchSource::kOwnState, std::string("saving ") + file, [&] {
    torch::serialize::OutputArchive archive;
    for (const ImportedTensor& t : tensors) archive.write(t.name, t.tensor.detach(), t.is_buffer);
    std::ostringstream out;
    archive.save_to(out);
    return out.str();
  });
}

// Loads `file` into `tensors`, checking presence and shape of every tensor.
Status LoadArchive(const Bundle& bundle, const char* file,
                   const std::vector<ImportedTensor>& tensors) {
  if (!bundle.HasFile(file)) return Status::NotFound(std::string("bundle has no ") + file);
  CLEAVE_ASSIGN_OR_RETURN(const std::string bytes, bundle.ReadVerified(file));
  torch::serialize::InputArchive archive;
  CLEAVE_RETURN_IF_ERROR(CallTorch(TorchSource::kStoredBytes,
                                   std::string(file) + " is not a readable libtorch archive",
                                   [&] { archive.load_from(bytes.data(), bytes.size()); }));
  torch::NoGradGuard no_grad;
  for (const ImportedTensor& t : tensors) {
    torch::Tensor stored;
    CLEAVE_ASSIGN_OR_RETURN(
        const bool found, CallTorch(TorchSource::kStoredBytes,
                                    std::string(file) + ": tensor " + t.name + " unreadable",
                                    [&] { return archive.try_read(t.name, stored, t.is_buffer); }));
    if (!found || !stored.defined()) {
      return Status::DataLoss(std::string(file) + " lacks tensor " + t.name);
    }
    if (stored.sizes() != t.tensor.sizes() || stored.scalar_type() != t.tensor.scalar_type()) {
      return Status::DataLoss(std::string(file) + ": tensor " + t.name + " has the wrong shape");
    }
    t.tensor.copy_(stored);
  }
  return Status::Ok();
}

Result<std::string> SaveScript(const torch::jit::Module& module, const char* file) {
  return CallTorch(TorchSource::kOwnState, std::string("saving ") + file, [&] {
    std::ostringstream out;
    module.save(out);
    return out.str();
  });
}

Result<torch::jit::Module> LoadScript(const Bundle& bundle, const char* file) {
  if (!bundle.HasFile(file)) return Status::NotFound(std::string("bundle has no ") + file);
  CLEAVE_ASSIGN_OR_RETURN(const std::string bytes, bundle.ReadVerified(file));
  return CallTorch(TorchSource::kStoredBytes,
                   std::string(file) + " is not a readable TorchScript archive", [&] {
                     std::istringstream in(bytes);
                     torch::jit::Module module = torch::jit::load(in, torch::kCPU);
                     module.eval();
                     return module;
                   });
}

torch::Tensor ChannelTensor(const std::vector<float>& values) {
  return torch::tensor(values, torch::kFloat).view({1, static_cast<int64_t>(values.size()), 1, 1});
}

Status CheckNormalization(const std::vector<float>& values, int channels, const char* name,
                          bool positive) {
  if (values.size() != 1 && values.size() != static_cast<size_t>(channels)) {
    return Status::InvalidArgument(std::string("normalize.") + name +
                                   " needs one value or one per channel");
  }
  for (float v : values) {
    if (!std::isfinite(v) || (positive && !(v > 0.0f))) {
      return Status::InvalidArgument(std::string("normalize.") + name + " must be finite" +
                                     (positive ? " and > 0" : ""));
    }
  }
  return Status::Ok();
}

// The manifest's description (everything but the weights).
Result<ImportedSplitModel> ParseImportedManifest(const json& m) {
  ImportedSplitModel model;
  try {
    model.name = m.at("name").get<std::string>();
    CLEAVE_ASSIGN_OR_RETURN(model.input, InputSpec::FromJson(m.at("input")));
    model.mean = m.at("normalize").at("mean").get<std::vector<float>>();
    model.std = m.at("normalize").at("std").get<std::vector<float>>();
    model.source = m.value("source", json::object());
    model.head_output_shape = m.at("head_output_shape").get<std::vector<int64_t>>();
    model.bottleneck_channels = m.at("bottleneck").at("channels").get<int>();
    model.bottleneck_stride = m.at("bottleneck").at("stride").get<int>();
    for (const json& e : m.at("exits"))
      model.exit_hidden.push_back(e.at("hidden_channels").get<int>());
    CLEAVE_ASSIGN_OR_RETURN(model.exit_policy, ExitPolicy::FromJson(m.at("exit_policy")));
    const json& w = m.at("wire");
    CLEAVE_ASSIGN_OR_RETURN(model.wire_dtype, wire::ParseDType(w.at("dtype").get<std::string>()));
    if (w.at("channel_axis").get<int>() != 1) {
      return Status::InvalidArgument("wire channel_axis must be 1");
    }
    model.wire_quant.scale = w.at("scale").get<std::vector<float>>();
    model.wire_quant.zero_point = w.at("zero_point").get<std::vector<uint8_t>>();
  } catch (const json::exception& e) {
    return Status::InvalidArgument(std::string("malformed manifest: ") + e.what());
  }
  if (model.name.empty() || model.name.size() > 128) {
    return Status::InvalidArgument("name must be 1 to 128 bytes");
  }
  CLEAVE_RETURN_IF_ERROR(CheckNormalization(model.mean, model.input.channels, "mean", false));
  CLEAVE_RETURN_IF_ERROR(CheckNormalization(model.std, model.input.channels, "std", true));
  CLEAVE_RETURN_IF_ERROR(model.BuildBottleneck());
  const std::vector<uint32_t> shape = model.FeatureShape();
  if (model.wire_dtype != wire::DType::kUInt4 && model.wire_dtype != wire::DType::kUInt8) {
    return Status::InvalidArgument("wire dtype must be u4 or u8");
  }
  if (model.wire_quant.scale.size() != shape[0] || model.wire_quant.zero_point.size() != shape[0]) {
    return Status::InvalidArgument("wire parameters need one scale and zero point per channel");
  }
  for (float s : model.wire_quant.scale) {
    if (!std::isfinite(s) || !(s > 0.0f)) return Status::InvalidArgument("wire scales must be > 0");
  }
  if (model.exit_policy.num_exits() != static_cast<int>(model.exit_hidden.size())) {
    return Status::InvalidArgument("exit policy and exits disagree on the exit count");
  }
  model.calibration = m.value("calibration", json());
  model.int8_info = m.value("int8", json());
  model.evaluation = m.value("evaluation", json::object());
  model.training = m.value("training", json::object());
  return model;
}

}  // namespace

BottleneckEncoderImpl::BottleneckEncoderImpl(int in_channels, int bottleneck_channels, int stride) {
  conv = register_module(
      "conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, bottleneck_channels, 3)
                                    .stride(stride)
                                    .padding(1)
                                    .bias(false)));
  bn = register_module("bn", torch::nn::BatchNorm2d(bottleneck_channels));
}

torch::Tensor BottleneckEncoderImpl::forward(torch::Tensor h) { return bn(conv(h)); }

BottleneckDecoderImpl::BottleneckDecoderImpl(int bottleneck_channels, int out_channels,
                                             int out_height, int out_width)
    : out_height_(out_height), out_width_(out_width) {
  conv = register_module(
      "conv",
      torch::nn::Conv2d(
          torch::nn::Conv2dOptions(bottleneck_channels, out_channels, 3).padding(1).bias(false)));
  bn = register_module("bn", torch::nn::BatchNorm2d(out_channels));
  project = register_module(
      "project", torch::nn::Conv2d(torch::nn::Conv2dOptions(out_channels, out_channels, 1)));
}

torch::Tensor BottleneckDecoderImpl::forward(torch::Tensor z) {
  if (z.size(2) != out_height_ || z.size(3) != out_width_) {
    z = torch::nn::functional::interpolate(z,
                                           torch::nn::functional::InterpolateFuncOptions()
                                               .size(std::vector<int64_t>{out_height_, out_width_})
                                               .mode(torch::kNearest));
  }
  return project(torch::relu(bn(conv(z))));
}

std::vector<uint32_t> ImportedSplitModel::FeatureShape() const {
  if (head_output_shape.size() != 3) return {};
  const int64_t s = bottleneck_stride;
  return {static_cast<uint32_t>(bottleneck_channels),
          static_cast<uint32_t>((head_output_shape[1] + s - 1) / s),
          static_cast<uint32_t>((head_output_shape[2] + s - 1) / s)};
}

Status ImportedSplitModel::BuildBottleneck() {
  if (head_output_shape.size() != 3) {
    return Status::InvalidArgument(
        "the head's output must be a feature map [C, H, W] per image to insert a bottleneck; "
        "cut earlier (before flattening)");
  }
  for (int64_t d : head_output_shape) {
    if (d < 1 || d > 65536) return Status::InvalidArgument("head output shape out of range");
  }
  if (bottleneck_channels < 1 || bottleneck_channels > kMaxBottleneckChannels) {
    return Status::InvalidArgument("bottleneck channels must be in [1, 256]");
  }
  if (bottleneck_stride != 1 && bottleneck_stride != 2) {
    return Status::InvalidArgument("bottleneck stride must be 1 or 2");
  }
  if (input.Validate().ok() && num_classes() < 2) {
    return Status::InvalidArgument("the model needs at least two classes");
  }
  for (int hidden : exit_hidden) {
    if (hidden < 1 || hidden > kMaxExitHidden) {
      return Status::InvalidArgument("exit hidden channels must be in [1, 1024]");
    }
  }
  const int c = static_cast<int>(head_output_shape[0]);
  return CallTorch(TorchSource::kExternalInput, "cannot build the bottleneck", [&] {
    encoder = BottleneckEncoder(c, bottleneck_channels, bottleneck_stride);
    decoder = BottleneckDecoder(bottleneck_channels, c, static_cast<int>(head_output_shape[1]),
                                static_cast<int>(head_output_shape[2]));
    exits.clear();
    for (int hidden : exit_hidden) {
      ExitSpec spec;
      spec.hidden_channels = hidden;
      exits.emplace_back(spec, c, num_classes());
    }
  });
}

torch::Tensor ImportedSplitModel::Normalize(const torch::Tensor& images) const {
  return (images - ChannelTensor(mean)) / ChannelTensor(std);
}

torch::Tensor ImportedSplitModel::RunHead(const torch::Tensor& images) {
  return head.forward({Normalize(images)}).toTensor();
}

Result<torch::Tensor> ImportedSplitModel::RunHeadInt8(const torch::Tensor& images) {
  if (!int8_head) return Status::FailedPrecondition("the model has no int8 head");
  return int8_head->Forward(Normalize(images));
}

torch::Tensor ImportedSplitModel::RunTail(const torch::Tensor& features) {
  return tail.forward({decoder->forward(features)}).toTensor();
}

Status WriteImportedBundle(const std::filesystem::path& dir, const ImportedSplitModel& model) {
  if (!model.has_head || !model.has_tail || !model.encoder || !model.decoder) {
    return Status::InvalidArgument("WriteImportedBundle: the model lacks a part");
  }
  CLEAVE_RETURN_IF_ERROR(model.input.Validate().WithContext("WriteImportedBundle"));
  const std::vector<uint32_t> shape = model.FeatureShape();
  if (shape.empty() || model.wire_quant.scale.size() != shape[0]) {
    return Status::InvalidArgument("WriteImportedBundle: wire parameters do not fit the features");
  }
  if (model.exit_policy.num_exits() != static_cast<int>(model.exits.size())) {
    return Status::InvalidArgument("WriteImportedBundle: exit policy/exit count mismatch");
  }
  BundleWriter writer(dir);
  CLEAVE_ASSIGN_OR_RETURN(const std::string head, SaveScript(model.head, kImportedHeadFile));
  CLEAVE_RETURN_IF_ERROR(writer.AddFile(kImportedHeadFile, head));
  CLEAVE_ASSIGN_OR_RETURN(const std::string tail, SaveScript(model.tail, kImportedTailFile));
  CLEAVE_RETURN_IF_ERROR(writer.AddFile(kImportedTailFile, tail));
  CLEAVE_ASSIGN_OR_RETURN(const std::string edge,
                          SaveArchive(EdgeTensors(model), kImportedEdgeFile));
  CLEAVE_RETURN_IF_ERROR(writer.AddFile(kImportedEdgeFile, edge));
  CLEAVE_ASSIGN_OR_RETURN(const std::string cloud,
                          SaveArchive(CloudTensors(model), kImportedCloudFile));
  CLEAVE_RETURN_IF_ERROR(writer.AddFile(kImportedCloudFile, cloud));
  json files = {{"head", kImportedHeadFile},
                {"edge", kImportedEdgeFile},
                {"tail", kImportedTailFile},
                {"cloud", kImportedCloudFile}};
  json int8 = nullptr;
  if (model.int8_head) {
    CLEAVE_ASSIGN_OR_RETURN(const std::string bytes, model.int8_head->Serialize());
    CLEAVE_RETURN_IF_ERROR(writer.AddFile(kImportedHeadInt8File, bytes));
    files["head_int8"] = kImportedHeadInt8File;
    int8 = model.int8_info.is_object() ? model.int8_info : json::object();
    int8["file"] = kImportedHeadInt8File;
    int8["weight_bytes"] = model.int8_head->WeightBytes();
    int8["report"] = model.int8_head->report().ToJson();
  }
  json exits = json::array();
  for (int hidden : model.exit_hidden) exits.push_back({{"hidden_channels", hidden}});
  const json manifest = {
      {"name", model.name},
      {"input", model.input.ToJson()},
      {"normalize", {{"mean", model.mean}, {"std", model.std}}},
      {"source", model.source},
      {"head_output_shape", model.head_output_shape},
      {"bottleneck",
       {{"channels", model.bottleneck_channels}, {"stride", model.bottleneck_stride}}},
      {"exits", exits},
      {"feature_shape", shape},
      {"exit_policy", model.exit_policy.ToJson()},
      {"calibration", model.calibration},
      {"wire", WireManifestJson(model.wire_dtype, model.wire_quant)},
      {"int8", int8},
      {"evaluation", model.evaluation},
      {"training", model.training},
      {"files", files}};
  return writer.Commit(kTorchScriptSplitKind, manifest);
}

Result<ImportedSplitModel> ReadImportedBundle(const Bundle& bundle,
                                              const ImportedBundleParts& parts) {
  CLEAVE_RETURN_IF_ERROR(bundle.CheckKind(kTorchScriptSplitKind));
  Result<ImportedSplitModel> parsed = ParseImportedManifest(bundle.model());
  if (!parsed.ok()) {
    return parsed.status().WithContext("bundle " + bundle.dir().string() + " manifest");
  }
  ImportedSplitModel model = std::move(parsed).value();
  if (parts.head) {
    CLEAVE_ASSIGN_OR_RETURN(model.head, LoadScript(bundle, kImportedHeadFile));
    model.has_head = true;
  }
  if (parts.tail) {
    CLEAVE_ASSIGN_OR_RETURN(model.tail, LoadScript(bundle, kImportedTailFile));
    model.has_tail = true;
  }
  if (parts.edge) {
    CLEAVE_RETURN_IF_ERROR(LoadArchive(bundle, kImportedEdgeFile, EdgeTensors(model)));
  }
  if (parts.head_int8) {
    if (!parts.head) return Status::InvalidArgument("reading the int8 head needs the fp32 head");
    if (!bundle.HasFile(kImportedHeadInt8File)) {
      return Status::NotFound("bundle " + bundle.dir().string() + " has no " +
                              kImportedHeadInt8File + " (import it again with int8 enabled)");
    }
    CLEAVE_ASSIGN_OR_RETURN(const std::string bytes, bundle.ReadVerified(kImportedHeadInt8File));
    Result<Int8GraphHead> head = Int8GraphHead::Deserialize(bytes, model.head);
    if (!head.ok()) return head.status().WithContext(kImportedHeadInt8File);
    model.int8_head = std::make_shared<Int8GraphHead>(std::move(head).value());
  }
  if (parts.cloud) {
    CLEAVE_RETURN_IF_ERROR(LoadArchive(bundle, kImportedCloudFile, CloudTensors(model)));
  }
  model.encoder->eval();
  model.decoder->eval();
  for (auto& e : model.exits) e->eval();
  return model;
}

}  // namespace cleave::split
