#include "split/vision_bundle.h"

#include <cmath>
#include <sstream>

#include "split/latency_profile.h"
#include "split/torch_status.h"
#include "split/wire_entropy.h"
#include "split/wire_quant.h"

namespace cleave::split {
namespace {

using nlohmann::json;

enum class Part { kHead, kExits, kTail };

constexpr size_t kMaxSplitPoints = 64;

const char* PartFile(Part part) {
  switch (part) {
    case Part::kHead: return kHeadFp32File;
    case Part::kExits: return kExitsFp32File;
    case Part::kTail: return kTailFp32File;
  }
  return kHeadFp32File;
}

// Which part a parameter/buffer name ("block3.conv.weight", "exit0.fc.bias") belongs to.
bool InPart(const std::string& name, Part part, int split_after) {
  if (name.rfind("exit", 0) == 0) return part == Part::kExits;
  if (name.rfind("block", 0) != 0) return false;
  const int block = std::atoi(name.c_str() + 5);
  return part == (block <= split_after ? Part::kHead : Part::kTail);
}

struct NamedTensor {
  std::string name;
  torch::Tensor tensor;
  bool is_buffer;
};

std::vector<NamedTensor> PartTensors(SplitVisionNetImpl& net, Part part) {
  std::vector<NamedTensor> out;
  const int split_after = net.spec().split_after;
  for (const auto& p : net.named_parameters(/*recurse=*/true)) {
    if (InPart(p.key(), part, split_after)) out.push_back({p.key(), p.value(), false});
  }
  for (const auto& b : net.named_buffers(/*recurse=*/true)) {
    if (InPart(b.key(), part, split_after)) out.push_back({b.key(), b.value(), true});
  }
  return out;
}

Result<std::string> SavePart(SplitVisionNetImpl& net, Part part) {
  return CallTorch(TorchSource::kOwnState, std::string("saving ") + PartFile(part), [&] {
    torch::serialize::OutputArchive archive;
    for (const NamedTensor& t : PartTensors(net, part)) {
      archive.write(t.name, t.tensor.detach(), t.is_buffer);
    }
    std::ostringstream out;
    archive.save_to(out);
    return out.str();
  });
}

// Loads one part into `net`, checking that every tensor is present with the right shape
// (InputArchive::read would silently resize).
Status LoadPart(const Bundle& bundle, SplitVisionNetImpl& net, Part part) {
  const std::string file = PartFile(part);
  if (!bundle.HasFile(file)) return Status::NotFound("bundle has no " + file);
  CLEAVE_ASSIGN_OR_RETURN(const std::string bytes, bundle.ReadVerified(file));
  torch::serialize::InputArchive archive;
  CLEAVE_RETURN_IF_ERROR(CallTorch(TorchSource::kStoredBytes,
                                   file + " is not a readable libtorch archive",
                                   [&] { archive.load_from(bytes.data(), bytes.size()); }));
  torch::NoGradGuard no_grad;
  for (NamedTensor& t : PartTensors(net, part)) {
    torch::Tensor stored;
    CLEAVE_ASSIGN_OR_RETURN(
        const bool found,
        CallTorch(TorchSource::kStoredBytes, file + ": tensor " + t.name + " unreadable",
                  [&] { return archive.try_read(t.name, stored, t.is_buffer); }));
    if (!found || !stored.defined()) return Status::DataLoss(file + " lacks tensor " + t.name);
    if (stored.sizes() != t.tensor.sizes() || stored.scalar_type() != t.tensor.scalar_type()) {
      return Status::DataLoss(file + ": tensor " + t.name + " has shape " +
                              c10::str(stored.sizes()) + " but the spec needs " +
                              c10::str(t.tensor.sizes()));
    }
    if (stored.is_floating_point() && !torch::isfinite(stored).all().item<bool>()) {
      return Status::DataLoss(file + ": tensor " + t.name + " has non-finite values");
    }
    t.tensor.copy_(stored);
  }
  return Status::Ok();
}

template <typename T>
Result<T> Field(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end()) return Status::InvalidArgument(std::string("missing key \"") + key + "\"");
  try {
    return it->get<T>();
  } catch (const json::exception& e) {
    return Status::InvalidArgument(std::string("key \"") + key + "\": " + e.what());
  }
}

Result<VisionSplitModel> ParseManifest(const json& m, const BundleFileReader& read) {
  if (!m.is_object()) return Status::InvalidArgument("\"model\" must be an object");
  VisionSplitModel model;
  CLEAVE_ASSIGN_OR_RETURN(model.name, Field<std::string>(m, "name"));
  if (model.name.empty()) return Status::InvalidArgument("\"name\" is empty");
  auto spec_json = m.find("spec");
  if (spec_json == m.end()) return Status::InvalidArgument("missing key \"spec\"");
  CLEAVE_ASSIGN_OR_RETURN(model.spec, VisionModelSpec::FromJson(*spec_json));
  CLEAVE_ASSIGN_OR_RETURN(const int split_after, Field<int>(m, "split_after"));
  if (split_after != model.spec.split_after || split_after < 0) {
    return Status::InvalidArgument("\"split_after\" " + std::to_string(split_after) +
                                   " disagrees with the spec or is not a split");
  }
  CLEAVE_ASSIGN_OR_RETURN(const std::vector<uint32_t> shape, FeatureShape(model.spec));
  CLEAVE_ASSIGN_OR_RETURN(const std::vector<uint32_t> stated,
                          Field<std::vector<uint32_t>>(m, "feature_shape"));
  if (stated != shape) return Status::InvalidArgument("\"feature_shape\" disagrees with the spec");

  auto policy_json = m.find("exit_policy");
  if (policy_json == m.end()) return Status::InvalidArgument("missing key \"exit_policy\"");
  CLEAVE_ASSIGN_OR_RETURN(model.exit_policy, ExitPolicy::FromJson(*policy_json));
  if (model.exit_policy.num_exits() != static_cast<int>(model.spec.exits.size())) {
    return Status::InvalidArgument(
        "exit policy has " + std::to_string(model.exit_policy.num_exits()) +
        " thresholds but the spec has " + std::to_string(model.spec.exits.size()) + " exits");
  }
  for (const ExitSpec& e : model.spec.exits) {
    if (e.after_block > split_after) {
      return Status::InvalidArgument("an exit sits after the split (block " +
                                     std::to_string(e.after_block) + ")");
    }
  }

  auto wire_json = m.find("wire");
  if (wire_json == m.end() || !wire_json->is_object()) {
    return Status::InvalidArgument("missing object \"wire\"");
  }
  CLEAVE_ASSIGN_OR_RETURN(const std::string dtype, Field<std::string>(*wire_json, "dtype"));
  CLEAVE_ASSIGN_OR_RETURN(model.wire_dtype, wire::ParseDType(dtype));
  CLEAVE_ASSIGN_OR_RETURN(const int axis, Field<int>(*wire_json, "channel_axis"));
  if (axis != 1) return Status::InvalidArgument("wire channel_axis must be 1");
  CLEAVE_ASSIGN_OR_RETURN(model.wire_quant.scale, Field<std::vector<float>>(*wire_json, "scale"));
  CLEAVE_ASSIGN_OR_RETURN(model.wire_quant.zero_point,
                          Field<std::vector<uint8_t>>(*wire_json, "zero_point"));
  CLEAVE_ASSIGN_OR_RETURN(model.wire_entropy, ReadWireEntropy(*wire_json, read));
  // The codec's own validator on a zero tensor, so a bundle never holds parameters a peer
  // would refuse (common/feature_coding.h), and the entropy model's fit.
  const wire::FeatureLayout layout{model.wire_dtype, shape, model.wire_quant, model.wire_entropy};
  CLEAVE_RETURN_IF_ERROR(layout.Validate().WithContext("\"wire\""));

  auto input_json = m.find("input");
  if (input_json == m.end()) {
    model.input = InputSpec::Legacy(model.spec);
  } else {
    CLEAVE_ASSIGN_OR_RETURN(model.input, InputSpec::FromJson(*input_json));
    CLEAVE_RETURN_IF_ERROR(model.input.CheckMatches(model.spec).WithContext("\"input\""));
  }

  auto splits = m.find("splits");
  if (splits != m.end()) {
    if (!splits->is_array()) return Status::InvalidArgument("\"splits\" must be an array");
    if (splits->size() > kMaxSplitPoints) {
      return Status::InvalidArgument("more than " + std::to_string(kMaxSplitPoints) +
                                     " split points");
    }
    for (size_t i = 0; i < splits->size(); ++i) {
      auto point = SplitPoint::FromJson((*splits)[i], model.spec, read);
      if (!point.ok()) {
        return point.status().WithContext("split point " + std::to_string(i + 1));
      }
      model.splits.push_back(std::move(point).value());
    }
  }
  auto profile = m.find("profile");
  if (profile != m.end() && !profile->is_null()) {
    CLEAVE_RETURN_IF_ERROR(LatencyProfile::FromJson(*profile, model).status());
    model.profile = *profile;
  }
  model.calibration = m.value("calibration", json());
  model.int8_info = m.value("int8", json());
  model.evaluation = m.value("evaluation", json::object());
  model.training = m.value("training", json::object());
  return model;
}

}  // namespace

Result<std::vector<uint32_t>> FeatureShape(const VisionModelSpec& spec) {
  if (spec.split_after < 0 || spec.split_after >= static_cast<int>(spec.blocks.size())) {
    return Status::InvalidArgument("model spec has no split point");
  }
  for (int i = 0; i <= spec.split_after; ++i) {
    const BlockSpec& b = spec.blocks[i];
    if (b.type == "classifier" || b.type == "linear") {
      return Status::InvalidArgument("split after a " + b.type + " block (features must be maps)");
    }
  }
  const int size = spec.OutputSize(spec.split_after);
  return std::vector<uint32_t>{static_cast<uint32_t>(spec.blocks[spec.split_after].out_channels),
                               static_cast<uint32_t>(size), static_cast<uint32_t>(size)};
}

wire::FeatureLayout SplitLayout(const VisionSplitModel& model, int split) {
  if (split > 0) return model.splits[static_cast<size_t>(split) - 1].Layout();
  auto shape = FeatureShape(model.spec);
  return {model.wire_dtype, shape.ok() ? *shape : std::vector<uint32_t>{}, model.wire_quant,
          model.wire_entropy};
}

std::string SplitBottleneckFile(size_t index) {
  return "split" + std::to_string(index) + "_fp32.pt";
}

Status WriteVisionBundle(const std::filesystem::path& dir, const VisionSplitModel& model) {
  if (!model.net) return Status::InvalidArgument("WriteVisionBundle: model has no network");
  CLEAVE_RETURN_IF_ERROR(model.spec.Validate());
  CLEAVE_ASSIGN_OR_RETURN(const std::vector<uint32_t> shape, FeatureShape(model.spec));
  const wire::FeatureLayout layout{model.wire_dtype, shape, model.wire_quant, model.wire_entropy};
  CLEAVE_RETURN_IF_ERROR(layout.Validate().WithContext("WriteVisionBundle: wire parameters"));
  if (model.exit_policy.num_exits() != static_cast<int>(model.spec.exits.size())) {
    return Status::InvalidArgument("WriteVisionBundle: exit policy/spec exit count mismatch");
  }

  BundleWriter writer(dir);
  json files = json::object();
  for (Part part : {Part::kHead, Part::kExits, Part::kTail}) {
    CLEAVE_ASSIGN_OR_RETURN(const std::string bytes, SavePart(*model.net.ptr(), part));
    CLEAVE_RETURN_IF_ERROR(writer.AddFile(PartFile(part), bytes));
  }
  files["head_fp32"] = kHeadFp32File;
  files["exits_fp32"] = kExitsFp32File;
  files["tail_fp32"] = kTailFp32File;
  json int8 = nullptr;
  if (model.int8_head) {
    CLEAVE_ASSIGN_OR_RETURN(const std::string bytes, model.int8_head->Serialize());
    CLEAVE_RETURN_IF_ERROR(writer.AddFile(kHeadInt8File, bytes));
    files["head_int8"] = kHeadInt8File;
    int8 = model.int8_info.is_object() ? model.int8_info : json::object();
    int8["file"] = kHeadInt8File;
    int8["weight_bytes"] = model.int8_head->WeightBytes();
  }
  if (model.wire_entropy) {
    CLEAVE_RETURN_IF_ERROR(writer.AddFile(kWireEntropyFile, model.wire_entropy->Serialize()));
    files["wire_entropy"] = kWireEntropyFile;
  }
  json splits = json::array();
  for (size_t i = 0; i < model.splits.size(); ++i) {
    const SplitPoint& point = model.splits[i];
    CLEAVE_RETURN_IF_ERROR(
        point.Validate(model.spec)
            .WithContext("WriteVisionBundle: split point " + std::to_string(i + 1)));
    const std::string entropy_file = "split" + std::to_string(i + 1) + "_entropy.cem";
    splits.push_back(point.ToJson(entropy_file));
    if (point.wire_entropy) {
      CLEAVE_RETURN_IF_ERROR(writer.AddFile(entropy_file, point.wire_entropy->Serialize()));
    }
    if (point.bottleneck) {
      CLEAVE_ASSIGN_OR_RETURN(const std::string bytes, SaveBottleneck(point));
      const std::string file = SplitBottleneckFile(i + 1);
      CLEAVE_RETURN_IF_ERROR(writer.AddFile(file, bytes));
      splits.back()["file"] = file;
      files["split" + std::to_string(i + 1) + "_fp32"] = file;
    }
  }
  // A model that never set its input (tests, older producers) is described as Legacy.
  const InputSpec input =
      model.input.class_names.empty() ? InputSpec::Legacy(model.spec) : model.input;
  CLEAVE_RETURN_IF_ERROR(input.Validate().WithContext("WriteVisionBundle"));
  CLEAVE_RETURN_IF_ERROR(input.CheckMatches(model.spec).WithContext("WriteVisionBundle"));
  const json manifest = {{"name", model.name},
                         {"spec", model.spec.ToJson()},
                         {"input", input.ToJson()},
                         {"split_after", model.spec.split_after},
                         {"feature_shape", shape},
                         {"exit_policy", model.exit_policy.ToJson()},
                         {"calibration", model.calibration},
                         {"wire", WireJsonWithEntropy(model.wire_dtype, model.wire_quant,
                                                      model.wire_entropy, kWireEntropyFile)},
                         {"int8", int8},
                         {"evaluation", model.evaluation},
                         {"training", model.training},
                         {"files", files}};
  json full = manifest;
  if (!splits.empty()) full["splits"] = splits;  // earlier manifests stay byte-identical
  if (!model.profile.is_null()) {
    CLEAVE_RETURN_IF_ERROR(LatencyProfile::FromJson(model.profile, model)
                               .status()
                               .WithContext("WriteVisionBundle: latency profile"));
    full["profile"] = model.profile;
  }
  return writer.Commit(kVisionSplitKind, full);
}

Result<VisionSplitModel> ReadVisionBundle(const Bundle& bundle, const VisionBundleParts& parts) {
  CLEAVE_RETURN_IF_ERROR(bundle.CheckKind(kVisionSplitKind));
  const BundleFileReader read = [&bundle](const std::string& file) -> Result<std::string> {
    if (!bundle.HasFile(file)) return Status::DataLoss("bundle lacks " + file);
    return bundle.ReadVerified(file);
  };
  auto parsed = ParseManifest(bundle.model(), read);
  if (!parsed.ok()) {
    return parsed.status().WithContext("bundle " + bundle.dir().string() + " manifest");
  }
  VisionSplitModel model = std::move(parsed).value();
  // The spec is the manifest's description of the model, refused like every other manifest
  // field (InvalidArgument), not stored tensor bytes.
  CLEAVE_RETURN_IF_ERROR(CallTorch(TorchSource::kExternalInput, "cannot build the network",
                                   [&] { model.net = SplitVisionNet(model.spec); }));
  const std::pair<bool, Part> wanted[] = {{parts.head_fp32, Part::kHead},
                                          {parts.exits_fp32, Part::kExits},
                                          {parts.tail_fp32, Part::kTail}};
  for (const auto& [want, part] : wanted) {
    if (want) CLEAVE_RETURN_IF_ERROR(LoadPart(bundle, *model.net, part));
  }
  model.net->eval();
  for (size_t i = 0; i < model.splits.size(); ++i) {
    SplitPoint& point = model.splits[i];
    if (!point.bottleneck) continue;
    const std::string file = SplitBottleneckFile(i + 1);
    if (!bundle.HasFile(file)) return Status::DataLoss("bundle lacks " + file);
    CLEAVE_ASSIGN_OR_RETURN(const std::string bytes, bundle.ReadVerified(file));
    BuildBottleneck(point);
    CLEAVE_RETURN_IF_ERROR(LoadBottleneck(point, bytes, file));
  }
  if (parts.head_int8) {
    if (!bundle.HasFile(kHeadInt8File)) {
      return Status::NotFound("bundle " + bundle.dir().string() + " has no " + kHeadInt8File +
                              " (train or re-split it with int8 enabled)");
    }
    CLEAVE_ASSIGN_OR_RETURN(const std::string bytes, bundle.ReadVerified(kHeadInt8File));
    auto head = Int8Head::Deserialize(bytes, model.spec);
    if (!head.ok()) return head.status().WithContext(kHeadInt8File);
    model.int8_head = std::make_shared<Int8Head>(std::move(head).value());
  }
  return model;
}

}  // namespace cleave::split
