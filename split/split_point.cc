#include "split/split_point.h"

#include <sstream>

#include "split/torch_status.h"
#include "split/wire_entropy.h"
#include "split/wire_quant.h"

namespace cleave::split {
namespace {

using nlohmann::json;

bool IsMapBlock(const BlockSpec& b) { return b.type != "classifier" && b.type != "linear"; }

std::string ShapeText(const std::vector<uint32_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

struct BottleneckTensor {
  std::string name;
  torch::Tensor tensor;
  bool is_buffer;
};

std::vector<BottleneckTensor> BottleneckTensors(const SplitBottleneck& b) {
  std::vector<BottleneckTensor> out;
  for (const auto& [prefix, net] :
       {std::pair<std::string, std::shared_ptr<ConvBnActImpl>>{"encoder.", b.encoder_net},
        {"decoder.", b.decoder_net}}) {
    for (const auto& p : net->named_parameters(true))
      out.push_back({prefix + p.key(), p.value(), false});
    for (const auto& t : net->named_buffers(true))
      out.push_back({prefix + t.key(), t.value(), true});
  }
  return out;
}

}  // namespace

Result<std::vector<uint32_t>> BlockOutputShape(const VisionModelSpec& spec, int block) {
  if (block < 0 || block >= static_cast<int>(spec.blocks.size())) {
    return Status::InvalidArgument("block " + std::to_string(block) + " is not in the network (" +
                                   std::to_string(spec.blocks.size()) + " blocks)");
  }
  for (int i = 0; i <= block; ++i) {
    if (!IsMapBlock(spec.blocks[i])) {
      return Status::InvalidArgument("block " + std::to_string(block) +
                                     " comes after a flattening block (features must be maps)");
    }
  }
  const auto side = static_cast<uint32_t>(spec.OutputSize(block));
  return std::vector<uint32_t>{static_cast<uint32_t>(spec.blocks[block].out_channels), side, side};
}

int SplitPoint::NumExits(const VisionModelSpec& spec) const {
  int n = 0;
  for (const ExitSpec& e : spec.exits) n += e.after_block <= after ? 1 : 0;
  return n;
}

Status SplitPoint::Validate(const VisionModelSpec& spec) const {
  const int blocks = static_cast<int>(spec.blocks.size());
  CLEAVE_ASSIGN_OR_RETURN(const std::vector<uint32_t> cut, BlockOutputShape(spec, after));
  if (after >= blocks - 1) {
    return Status::InvalidArgument("\"after\" " + std::to_string(after) +
                                   " leaves nothing for the cloud");
  }
  std::vector<uint32_t> expected = cut;
  if (!bottleneck) {
    if (resume != after + 1) {
      return Status::InvalidArgument("\"resume\" must be after + 1 without a bottleneck");
    }
  } else {
    if (resume <= after || resume >= blocks) {
      return Status::InvalidArgument("\"resume\" " + std::to_string(resume) +
                                     " must lie in (after, last block]");
    }
    const BlockSpec& enc = bottleneck->encoder;
    const BlockSpec& dec = bottleneck->decoder;
    if (enc.type != "conv" || dec.type != "conv") {
      return Status::InvalidArgument("a bottleneck is an encoder and a decoder of type \"conv\"");
    }
    if (enc.in_channels != static_cast<int>(cut[0]) || enc.out_channels < 1 ||
        dec.in_channels != enc.out_channels || dec.stride != 1 ||
        dec.out_channels != spec.blocks[resume - 1].out_channels || enc.kernel < 1 ||
        dec.kernel < 1 || enc.stride < 1) {
      return Status::InvalidArgument("the bottleneck does not chain: the encoder must read block " +
                                     std::to_string(after) + "'s " + std::to_string(cut[0]) +
                                     " channels and the decoder (stride 1) write block " +
                                     std::to_string(resume - 1) + "'s " +
                                     std::to_string(spec.blocks[resume - 1].out_channels));
    }
    CLEAVE_ASSIGN_OR_RETURN(const std::vector<uint32_t> restored,
                            BlockOutputShape(spec, resume - 1));
    const int code_side = BlockOutputSide(enc, static_cast<int>(cut[1]));
    if (code_side < 1 || BlockOutputSide(dec, code_side) != static_cast<int>(restored[1])) {
      return Status::InvalidArgument(
          "the bottleneck's decoder does not restore block " + std::to_string(resume - 1) + "'s " +
          std::to_string(restored[1]) + "x" + std::to_string(restored[2]) + " map");
    }
    expected = {static_cast<uint32_t>(enc.out_channels), static_cast<uint32_t>(code_side),
                static_cast<uint32_t>(code_side)};
  }
  if (feature_shape != expected) {
    return Status::InvalidArgument("\"feature_shape\" " + ShapeText(feature_shape) +
                                   " disagrees with the network (" + ShapeText(expected) + ")");
  }
  // The codec's own validator (on a zero tensor) and the entropy model's fit.
  CLEAVE_RETURN_IF_ERROR(Layout().Validate().WithContext("\"wire\""));
  if (exit_policy.num_exits() != NumExits(spec)) {
    return Status::InvalidArgument("\"exit_policy\" has " +
                                   std::to_string(exit_policy.num_exits()) + " thresholds but " +
                                   std::to_string(NumExits(spec)) + " exits answer before the cut");
  }
  return Status::Ok();
}

json SplitPoint::ToJson(const std::string& entropy_file) const {
  json j = {{"after", after},
            {"resume", resume},
            {"feature_shape", feature_shape},
            {"wire", WireJsonWithEntropy(wire_dtype, wire_quant, wire_entropy, entropy_file)},
            {"exit_policy", exit_policy.ToJson()},
            {"calibration", calibration}};
  if (bottleneck) {
    j["encoder"] = BlockSpecToJson(bottleneck->encoder);
    j["decoder"] = BlockSpecToJson(bottleneck->decoder);
  }
  return j;
}

Result<SplitPoint> SplitPoint::FromJson(
    const json& j, const VisionModelSpec& spec,
    const std::function<Result<std::string>(const std::string&)>& read) {
  if (!j.is_object()) return Status::InvalidArgument("a split point must be an object");
  SplitPoint p;
  try {
    p.after = j.at("after").get<int>();
    p.resume = j.at("resume").get<int>();
    p.feature_shape = j.at("feature_shape").get<std::vector<uint32_t>>();
    if (p.feature_shape.size() != 3) {
      return Status::InvalidArgument("\"feature_shape\" must be [C, H, W]");
    }
    const json& w = j.at("wire");
    CLEAVE_ASSIGN_OR_RETURN(p.wire_dtype, wire::ParseDType(w.at("dtype").get<std::string>()));
    if (w.at("channel_axis").get<int>() != 1) {
      return Status::InvalidArgument("wire channel_axis must be 1");
    }
    p.wire_quant.scale = w.at("scale").get<std::vector<float>>();
    p.wire_quant.zero_point = w.at("zero_point").get<std::vector<uint8_t>>();
    CLEAVE_ASSIGN_OR_RETURN(p.wire_entropy, ReadWireEntropy(w, read));
    if (j.contains("encoder") != j.contains("decoder")) {
      return Status::InvalidArgument("a bottleneck needs both \"encoder\" and \"decoder\"");
    }
    if (j.contains("encoder")) {
      p.bottleneck = SplitBottleneck{BlockSpecFromJson(j.at("encoder")),
                                     BlockSpecFromJson(j.at("decoder")), nullptr, nullptr};
    }
    p.calibration = j.value("calibration", json());
  } catch (const json::exception& e) {
    return Status::InvalidArgument(std::string("malformed split point: ") + e.what());
  }
  auto policy = j.find("exit_policy");
  if (policy == j.end()) return Status::InvalidArgument("missing key \"exit_policy\"");
  CLEAVE_ASSIGN_OR_RETURN(p.exit_policy, ExitPolicy::FromJson(*policy));
  CLEAVE_RETURN_IF_ERROR(p.Validate(spec));
  return p;
}

Result<SplitPoint> SplitPoint::Plain(const VisionModelSpec& spec, int after, wire::DType dtype) {
  SplitPoint p;
  p.after = after;
  p.resume = after + 1;
  p.wire_dtype = dtype;
  CLEAVE_ASSIGN_OR_RETURN(p.feature_shape, BlockOutputShape(spec, after));
  const int exits = p.NumExits(spec);
  p.exit_policy = ExitPolicy(ExitCriterion::kMaxSoftmax,
                             std::vector<double>(static_cast<size_t>(exits), kExitDisabled));
  if (dtype == wire::DType::kUInt8 || dtype == wire::DType::kUInt4) {
    // Placeholder parameters (unit scale); calibration replaces them.
    p.wire_quant.scale.assign(p.feature_shape[0], 1.0f);
    p.wire_quant.zero_point.assign(p.feature_shape[0], 0);
  }
  CLEAVE_RETURN_IF_ERROR(p.Validate(spec));
  return p;
}

void BuildBottleneck(SplitPoint& point) {
  if (!point.bottleneck) return;
  point.bottleneck->encoder_net = std::make_shared<ConvBnActImpl>(point.bottleneck->encoder);
  point.bottleneck->decoder_net = std::make_shared<ConvBnActImpl>(point.bottleneck->decoder);
  point.bottleneck->encoder_net->eval();
  point.bottleneck->decoder_net->eval();
}

SplitVisionNetImpl::Outputs RunSplitHead(SplitVisionNetImpl& net, const SplitPoint& point,
                                         const torch::Tensor& images) {
  SplitVisionNetImpl::Outputs out = net.ForwardWithExits(images, point.after + 1);
  if (point.bottleneck) out.features = point.bottleneck->encoder_net->forward(out.features);
  return out;
}

torch::Tensor RunSplitDecoder(const SplitPoint& point, const torch::Tensor& features) {
  if (!point.bottleneck) return features;
  return point.bottleneck->decoder_net->forward(features);
}

Result<std::string> SaveBottleneck(const SplitPoint& point) {
  if (!point.bottleneck || !point.bottleneck->encoder_net) {
    return Status::InvalidArgument("the split point has no built bottleneck to save");
  }
  return CallTorch(TorchSource::kOwnState, "saving a split point's bottleneck", [&] {
    torch::serialize::OutputArchive archive;
    for (const BottleneckTensor& t : BottleneckTensors(*point.bottleneck)) {
      archive.write(t.name, t.tensor.detach(), t.is_buffer);
    }
    std::ostringstream out;
    archive.save_to(out);
    return out.str();
  });
}

Status LoadBottleneck(SplitPoint& point, const std::string& bytes, const std::string& file) {
  if (!point.bottleneck)
    return Status::InvalidArgument(file + ": the split point has no bottleneck");
  if (!point.bottleneck->encoder_net) BuildBottleneck(point);
  torch::serialize::InputArchive archive;
  CLEAVE_RETURN_IF_ERROR(CallTorch(TorchSource::kStoredBytes,
                                   file + " is not a readable libtorch archive",
                                   [&] { archive.load_from(bytes.data(), bytes.size()); }));
  torch::NoGradGuard no_grad;
  for (BottleneckTensor& b : BottleneckTensors(*point.bottleneck)) {
    const std::string& name = b.name;
    torch::Tensor& t = b.tensor;
    torch::Tensor stored;
    CLEAVE_ASSIGN_OR_RETURN(
        const bool found,
        CallTorch(TorchSource::kStoredBytes, file + ": tensor " + name + " unreadable",
                  [&] { return archive.try_read(name, stored, b.is_buffer); }));
    if (!found || !stored.defined()) return Status::DataLoss(file + " lacks tensor " + name);
    if (stored.sizes() != t.sizes() || stored.scalar_type() != t.scalar_type()) {
      return Status::DataLoss(file + ": tensor " + name + " has the wrong shape");
    }
    if (stored.is_floating_point() && !torch::isfinite(stored).all().item<bool>()) {
      return Status::DataLoss(file + ": tensor " + name + " has non-finite values");
    }
    t.copy_(stored);
  }
  return Status::Ok();
}

}  // namespace cleave::split
