#include "split/vision_model.h"

#include <cmath>
#include <string>

namespace cleave::split {
namespace {

using nlohmann::json;

int OutSize(int size, int kernel, int stride, int pad) {
  return (size + 2 * pad - kernel) / stride + 1;
}

// A normalization vector as JSON: a number when it has one value, else an array.
json NormalizationJson(const std::vector<float>& values) {
  if (values.size() == 1) return values[0];
  return values;
}

// Reads a number or an array of numbers.
std::vector<float> NormalizationFromJson(const json& j) {
  if (j.is_array()) return j.get<std::vector<float>>();
  return {j.get<float>()};
}

int ConvPadding(const BlockSpec& b) { return b.padding >= 0 ? b.padding : b.kernel / 2; }

// Output spatial size of block `b` given its input size (1 once flattened).
int BlockOutSize(const BlockSpec& b, int size) {
  if (b.type == "conv") return OutSize(size, b.kernel, b.stride, ConvPadding(b));
  if (b.type == "fused_mb" || b.type == "res") return OutSize(size, 3, b.stride, 1);
  if (b.type == "maxpool") return OutSize(size, b.kernel, b.stride, 0);
  return 1;  // classifier, linear
}

}  // namespace

int BlockOutputSide(const BlockSpec& block, int in_size) { return BlockOutSize(block, in_size); }

json BlockSpecToJson(const BlockSpec& b) {
  json j = {{"type", b.type},
            {"role", b.role},
            {"in_channels", b.in_channels},
            {"out_channels", b.out_channels},
            {"kernel", b.kernel},
            {"stride", b.stride},
            {"expansion", b.expansion},
            {"relu", b.relu}};
  // Only when not the default, so manifests of earlier models stay byte-identical.
  if (!b.batch_norm) j["batch_norm"] = false;
  if (b.padding != -1) j["padding"] = b.padding;
  return j;
}

BlockSpec BlockSpecFromJson(const json& bj) {
  BlockSpec b;
  b.type = bj.at("type").get<std::string>();
  b.role = bj.value("role", std::string());
  b.in_channels = bj.at("in_channels").get<int>();
  b.out_channels = bj.at("out_channels").get<int>();
  b.kernel = bj.value("kernel", 3);
  b.stride = bj.value("stride", 1);
  b.expansion = bj.value("expansion", 2);
  b.relu = bj.value("relu", true);
  b.batch_norm = bj.value("batch_norm", true);
  b.padding = bj.value("padding", -1);
  return b;
}

json VisionModelSpec::ToJson() const {
  json blocks_json = json::array();
  for (const auto& b : blocks) blocks_json.push_back(BlockSpecToJson(b));
  json exits_json = json::array();
  for (const auto& e : exits) {
    exits_json.push_back({{"after_block", e.after_block}, {"hidden_channels", e.hidden_channels}});
  }
  return {{"input_channels", input_channels},
          {"image_size", image_size},
          {"num_classes", num_classes},
          {"input_mean", NormalizationJson(input_mean)},
          {"input_std", NormalizationJson(input_std)},
          {"blocks", blocks_json},
          {"exits", exits_json},
          {"split_after", split_after}};
}

Result<VisionModelSpec> VisionModelSpec::FromJson(const json& j) {
  VisionModelSpec s;
  try {
    s.input_channels = j.at("input_channels").get<int>();
    s.image_size = j.at("image_size").get<int>();
    s.num_classes = j.at("num_classes").get<int>();
    s.input_mean = NormalizationFromJson(j.at("input_mean"));
    s.input_std = NormalizationFromJson(j.at("input_std"));
    s.split_after = j.at("split_after").get<int>();
    for (const auto& bj : j.at("blocks")) s.blocks.push_back(BlockSpecFromJson(bj));
    for (const auto& ej : j.at("exits")) {
      s.exits.push_back({ej.at("after_block").get<int>(), ej.at("hidden_channels").get<int>()});
    }
  } catch (const json::exception& e) {
    return Status::InvalidArgument(std::string("malformed model spec: ") + e.what());
  }
  CLEAVE_RETURN_IF_ERROR(s.Validate());
  return s;
}

Status VisionModelSpec::Validate() const {
  if (input_channels <= 0 || image_size <= 0 || num_classes <= 1) {
    return Status::InvalidArgument(
        "model spec: input_channels, image_size must be > 0 and "
        "num_classes > 1");
  }
  if (input_channels > 64 || image_size > 4096 || num_classes > 100000) {
    return Status::InvalidArgument(
        "model spec: input_channels must be <= 64, image_size <= 4096, num_classes <= 100000");
  }
  for (const auto* values : {&input_mean, &input_std}) {
    const char* name = values == &input_mean ? "input_mean" : "input_std";
    if (values->size() != 1 && values->size() != static_cast<size_t>(input_channels)) {
      return Status::InvalidArgument(
          std::string("model spec: ") + name + " needs one value or one per input channel (" +
          std::to_string(input_channels) + "), not " + std::to_string(values->size()));
    }
    for (float v : *values) {
      if (!std::isfinite(v)) {
        return Status::InvalidArgument(std::string("model spec: ") + name + " must be finite");
      }
    }
  }
  for (float v : input_std) {
    if (!(v > 0.0f)) return Status::InvalidArgument("model spec: input_std must be > 0");
  }
  if (blocks.empty()) return Status::InvalidArgument("model spec: no blocks");
  int channels = input_channels;
  int size = image_size;
  bool flat = false;  // after a "linear" block the activations are [N, features]
  for (size_t i = 0; i < blocks.size(); ++i) {
    const BlockSpec& b = blocks[i];
    const std::string where = "model spec: block " + std::to_string(i);
    if (flat && b.type != "linear") {
      return Status::InvalidArgument(where + ": only linear blocks may follow a linear block");
    }
    if (b.type == "linear") {
      const int64_t features = flat ? channels : int64_t{channels} * size * size;
      if (b.in_channels != features) {
        return Status::InvalidArgument(where + " (linear) expects " +
                                       std::to_string(b.in_channels) +
                                       " input features but receives " + std::to_string(features));
      }
      if (b.out_channels <= 0 || b.out_channels > 65536) {
        return Status::InvalidArgument(where + ": out_channels out of range");
      }
      flat = true;
      channels = b.out_channels;
      size = 1;
      continue;
    }
    if (b.type == "maxpool" && b.out_channels != b.in_channels) {
      return Status::InvalidArgument(where + ": maxpool keeps the channel count");
    }
    if (b.in_channels != channels) {
      return Status::InvalidArgument(where + " expects " + std::to_string(b.in_channels) +
                                     " input channels but receives " + std::to_string(channels));
    }
    if (b.out_channels <= 0 || b.out_channels > 4096) {
      return Status::InvalidArgument(where + ": out_channels out of range");
    }
    if (b.stride < 1 || b.stride > 4) return Status::InvalidArgument(where + ": bad stride");
    if (b.type == "conv") {
      if (b.kernel < 1 || b.kernel > 7 || b.kernel % 2 == 0) {
        return Status::InvalidArgument(where + ": kernel must be odd and in [1,7]");
      }
      if (b.padding < -1 || b.padding > b.kernel / 2) {
        return Status::InvalidArgument(where + ": padding must be -1 (same) or in [0, kernel/2]");
      }
    } else if (b.type == "maxpool") {
      if (b.kernel < 1 || b.kernel > 4) {
        return Status::InvalidArgument(where + ": maxpool kernel must be in [1,4]");
      }
    } else if (b.type == "fused_mb") {
      if (b.expansion < 1 || b.expansion > 8) {
        return Status::InvalidArgument(where + ": expansion must be in [1,8]");
      }
    } else if (b.type == "res") {
      // The BasicBlock is fixed apart from its channels, stride and final ReLU: refuse
      // settings it would silently ignore.
      if (b.kernel != 3) return Status::InvalidArgument(where + ": res kernel must be 3");
      if (!b.batch_norm || b.padding != -1) {
        return Status::InvalidArgument(where +
                                       ": res always has BatchNorm and same padding (no "
                                       "batch_norm or padding setting)");
      }
    } else if (b.type == "classifier") {
      if (i + 1 != blocks.size()) {
        return Status::InvalidArgument(where + ": classifier must be the last block");
      }
      if (b.out_channels != num_classes) {
        return Status::InvalidArgument(where + ": classifier outputs must equal num_classes");
      }
    } else {
      return Status::InvalidArgument(where + ": unknown block type '" + b.type + "'");
    }
    channels = b.out_channels;
    size = BlockOutSize(b, size);
    if (size < 1) return Status::InvalidArgument(where + ": the feature map shrinks to nothing");
  }
  const BlockSpec& tail = blocks.back();
  const bool linear_head = tail.type == "linear" && !tail.relu && tail.out_channels == num_classes;
  if (tail.type != "classifier" && !linear_head) {
    return Status::InvalidArgument(
        "model spec: the last block must be a classifier (or a linear block with num_classes "
        "outputs and no ReLU)");
  }
  const int last = static_cast<int>(blocks.size()) - 1;
  for (const auto& e : exits) {
    if (e.after_block >= 0 && e.after_block < last &&
        (blocks[e.after_block].type == "linear" || blocks[e.after_block].type == "maxpool")) {
      return Status::InvalidArgument(
          "model spec: exits attach only to conv, fused_mb and res blocks");
    }
    if (e.after_block < 0 || e.after_block >= last) {
      return Status::InvalidArgument("model spec: exit after block " +
                                     std::to_string(e.after_block) + " is out of range");
    }
    if (e.hidden_channels <= 0) return Status::InvalidArgument("model spec: exit hidden <= 0");
  }
  if (split_after < -1 || split_after >= last) {
    return Status::InvalidArgument("model spec: split_after out of range");
  }
  return Status::Ok();
}

Result<VisionModelSpec> VisionModelSpec::ForInput(int channels, int size, int classes,
                                                  std::vector<float> mean,
                                                  std::vector<float> std) const {
  VisionModelSpec s = *this;
  s.input_channels = channels;
  s.image_size = size;
  s.num_classes = classes;
  s.input_mean = std::move(mean);
  s.input_std = std::move(std);
  if (!s.blocks.empty()) {
    if (s.blocks[0].type == "maxpool") s.blocks[0].out_channels = channels;
    s.blocks[0].in_channels = channels;
    BlockSpec& last = s.blocks.back();
    if (last.type == "classifier" || last.type == "linear") last.out_channels = classes;
    int map_channels = channels;
    int map_size = size;
    for (BlockSpec& b : s.blocks) {
      if (b.type == "linear") {
        b.in_channels = map_channels * (map_size > 0 ? map_size * map_size : 0);
        break;
      }
      map_channels = b.out_channels;
      map_size = BlockOutSize(b, map_size);
    }
  }
  Status valid = s.Validate();
  if (!valid.ok()) {
    return valid.WithContext("the model for " + std::to_string(channels) + "x" +
                             std::to_string(size) + "x" + std::to_string(size) + " inputs and " +
                             std::to_string(classes) + " classes");
  }
  return s;
}

int VisionModelSpec::OutputSize(int i) const {
  int size = image_size;
  for (int b = 0; b <= i; ++b) size = BlockOutSize(blocks[b], size);
  return size;
}

ConvBnActImpl::ConvBnActImpl(const BlockSpec& spec) : VisionBlockImpl(spec) {
  conv = register_module(
      "conv",
      torch::nn::Conv2d(torch::nn::Conv2dOptions(spec.in_channels, spec.out_channels, spec.kernel)
                            .stride(spec.stride)
                            .padding(ConvPadding(spec))
                            .bias(!spec.batch_norm)));
  if (spec.batch_norm) bn = register_module("bn", torch::nn::BatchNorm2d(spec.out_channels));
}

torch::Tensor ConvBnActImpl::forward(torch::Tensor x) {
  x = conv(x);
  if (bn) x = bn(x);
  return spec().relu ? torch::relu(x) : x;
}

FusedMBConvImpl::FusedMBConvImpl(const BlockSpec& spec) : VisionBlockImpl(spec) {
  const int hidden = spec.in_channels * spec.expansion;
  residual_ = spec.stride == 1 && spec.in_channels == spec.out_channels;
  expand_conv = register_module(
      "expand_conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(spec.in_channels, hidden, 3)
                                           .stride(spec.stride)
                                           .padding(1)
                                           .bias(false)));
  expand_bn = register_module("expand_bn", torch::nn::BatchNorm2d(hidden));
  project_conv = register_module(
      "project_conv",
      torch::nn::Conv2d(torch::nn::Conv2dOptions(hidden, spec.out_channels, 1).bias(false)));
  project_bn = register_module("project_bn", torch::nn::BatchNorm2d(spec.out_channels));
}

torch::Tensor FusedMBConvImpl::forward(torch::Tensor x) {
  torch::Tensor y = project_bn(project_conv(torch::relu(expand_bn(expand_conv(x)))));
  return residual_ ? y + x : y;
}

ResBlockImpl::ResBlockImpl(const BlockSpec& spec) : VisionBlockImpl(spec) {
  const auto conv3x3 = [](int in, int out, int stride) {
    return torch::nn::Conv2d(
        torch::nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false));
  };
  conv1 = register_module("conv1", conv3x3(spec.in_channels, spec.out_channels, spec.stride));
  bn1 = register_module("bn1", torch::nn::BatchNorm2d(spec.out_channels));
  conv2 = register_module("conv2", conv3x3(spec.out_channels, spec.out_channels, 1));
  bn2 = register_module("bn2", torch::nn::BatchNorm2d(spec.out_channels));
  if (spec.stride != 1 || spec.in_channels != spec.out_channels) {
    shortcut_conv = register_module(
        "shortcut_conv",
        torch::nn::Conv2d(torch::nn::Conv2dOptions(spec.in_channels, spec.out_channels, 1)
                              .stride(spec.stride)
                              .bias(false)));
    shortcut_bn = register_module("shortcut_bn", torch::nn::BatchNorm2d(spec.out_channels));
  }
}

torch::Tensor ResBlockImpl::forward(torch::Tensor x) {
  const torch::Tensor y = bn2(conv2(torch::relu(bn1(conv1(x)))));
  const torch::Tensor sum = y + (projection() ? shortcut_bn(shortcut_conv(x)) : x);
  return spec().relu ? torch::relu(sum) : sum;
}

torch::Tensor MaxPoolImpl::forward(torch::Tensor x) {
  return torch::max_pool2d(x, spec().kernel, spec().stride);
}

LinearBlockImpl::LinearBlockImpl(const BlockSpec& spec) : VisionBlockImpl(spec) {
  fc = register_module("fc", torch::nn::Linear(spec.in_channels, spec.out_channels));
}

torch::Tensor LinearBlockImpl::forward(torch::Tensor x) {
  x = fc(x.dim() > 2 ? torch::flatten(x, 1) : x);
  return spec().relu ? torch::relu(x) : x;
}

ClassifierImpl::ClassifierImpl(const BlockSpec& spec) : VisionBlockImpl(spec) {
  fc = register_module("fc", torch::nn::Linear(spec.in_channels, spec.out_channels));
}

torch::Tensor ClassifierImpl::forward(torch::Tensor x) {
  return fc(torch::flatten(torch::adaptive_avg_pool2d(x, {1, 1}), 1));
}

Result<FoldedConv> FoldBatchNorm(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn) {
  torch::NoGradGuard no_grad;
  const torch::Tensor w = conv->weight.detach();
  const int64_t out = w.size(0);
  const torch::Tensor conv_bias =
      conv->bias.defined() ? conv->bias.detach() : torch::zeros({out}, w.options());
  FoldedConv folded;
  if (!bn) {
    folded.weight = w.contiguous().clone();
    folded.bias = conv_bias.contiguous().clone();
  } else {
    const torch::Tensor mean = bn->running_mean, var = bn->running_var;
    if (!mean.defined() || !var.defined()) {
      return Status::FailedPrecondition("BatchNorm has no running statistics to fold");
    }
    const torch::Tensor gamma = bn->weight.defined() ? bn->weight.detach() : torch::ones({out});
    const torch::Tensor beta = bn->bias.defined() ? bn->bias.detach() : torch::zeros({out});
    const torch::Tensor inv_std = gamma / torch::sqrt(var.detach() + bn->options.eps());
    folded.weight = (w * inv_std.view({-1, 1, 1, 1})).contiguous();
    folded.bias = (beta + (conv_bias - mean.detach()) * inv_std).contiguous();
  }
  if (!torch::isfinite(folded.weight).all().item<bool>() ||
      !torch::isfinite(folded.bias).all().item<bool>()) {
    return Status::InvalidArgument("weights or BatchNorm statistics are not finite");
  }
  return folded;
}

ExitHeadImpl::ExitHeadImpl(const ExitSpec& spec, int in_channels, int num_classes) {
  conv = register_module(
      "conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, spec.hidden_channels, 3)
                                    .stride(2)
                                    .padding(1)
                                    .bias(false)));
  bn = register_module("bn", torch::nn::BatchNorm2d(spec.hidden_channels));
  fc = register_module("fc", torch::nn::Linear(spec.hidden_channels, num_classes));
}

torch::Tensor ExitHeadImpl::forward(torch::Tensor x) {
  x = torch::relu(bn(conv(x)));
  return fc(torch::flatten(torch::adaptive_avg_pool2d(x, {1, 1}), 1));
}

SplitVisionNetImpl::SplitVisionNetImpl(VisionModelSpec spec)
    : spec_(std::move(spec)),
      mean_(NormalizationTensor(spec_.input_mean)),
      std_(NormalizationTensor(spec_.input_std)) {
  int size = spec_.image_size;
  for (size_t i = 0; i < spec_.blocks.size(); ++i) {
    const BlockSpec& b = spec_.blocks[i];
    std::shared_ptr<VisionBlockImpl> block;
    if (b.type == "conv") {
      block = std::make_shared<ConvBnActImpl>(b);
    } else if (b.type == "fused_mb") {
      block = std::make_shared<FusedMBConvImpl>(b);
    } else if (b.type == "res") {
      block = std::make_shared<ResBlockImpl>(b);
    } else if (b.type == "maxpool") {
      block = std::make_shared<MaxPoolImpl>(b);
    } else if (b.type == "linear") {
      block = std::make_shared<LinearBlockImpl>(b);
    } else {
      block = std::make_shared<ClassifierImpl>(b);
    }
    size = BlockOutSize(b, size);
    blocks_.push_back(register_module("block" + std::to_string(i), block));
    block_out_size_.push_back(size);
  }
  for (size_t i = 0; i < spec_.exits.size(); ++i) {
    const ExitSpec& e = spec_.exits[i];
    exits_.push_back(
        register_module("exit" + std::to_string(i),
                        ExitHead(e, spec_.blocks[e.after_block].out_channels, spec_.num_classes)));
  }
}

torch::Tensor NormalizationTensor(const std::vector<float>& values) {
  return torch::tensor(values, torch::kFloat).view({1, static_cast<int64_t>(values.size()), 1, 1});
}

torch::Tensor SplitVisionNetImpl::Preprocess(const torch::Tensor& images) const {
  return (images - mean_) / std_;
}

torch::Tensor SplitVisionNetImpl::ForwardRange(torch::Tensor x, int begin, int end) {
  for (int i = begin; i < end; ++i) x = blocks_[i]->forward(x);
  return x;
}

torch::Tensor SplitVisionNetImpl::forward(torch::Tensor images) {
  return ForwardRange(Preprocess(images), 0, num_blocks());
}

SplitVisionNetImpl::Outputs SplitVisionNetImpl::ForwardWithExits(torch::Tensor images, int end) {
  Outputs out;
  torch::Tensor x = Preprocess(images);
  for (int i = 0; i < end; ++i) {
    x = blocks_[i]->forward(x);
    for (size_t e = 0; e < spec_.exits.size(); ++e) {
      if (spec_.exits[e].after_block == i) out.exit_logits.push_back(exits_[e]->forward(x));
    }
  }
  out.features = x;
  return out;
}

int64_t SplitVisionNetImpl::ParameterCount(int begin, int end, bool with_exits) const {
  int64_t total = 0;
  for (int i = begin; i < end; ++i) {
    for (const auto& p : blocks_[i]->parameters()) total += p.numel();
  }
  if (with_exits) {
    for (size_t e = 0; e < spec_.exits.size(); ++e) {
      const int at = spec_.exits[e].after_block;
      if (at >= begin && at < end) {
        for (const auto& p : exits_[e]->parameters()) total += p.numel();
      }
    }
  }
  return total;
}

int64_t SplitVisionNetImpl::MacCount(int begin, int end, bool with_exits) const {
  int64_t macs = 0;
  for (int i = begin; i < end; ++i) {
    const BlockSpec& b = spec_.blocks[i];
    const int64_t out = block_out_size_[i];
    const int64_t area = out * out;
    if (b.type == "conv") {
      macs += area * b.kernel * b.kernel * b.in_channels * b.out_channels;
    } else if (b.type == "fused_mb") {
      const int64_t hidden = int64_t{b.in_channels} * b.expansion;
      macs += area * 9 * b.in_channels * hidden + area * hidden * b.out_channels;
    } else if (b.type == "res") {
      macs += area * 9 * b.out_channels * (b.in_channels + b.out_channels);
      if (b.stride != 1 || b.in_channels != b.out_channels) {
        macs += area * b.in_channels * b.out_channels;  // the projection shortcut
      }
    } else if (b.type == "maxpool") {
      // comparisons, not multiply-accumulates
    } else if (b.type == "linear") {
      macs += int64_t{b.in_channels} * b.out_channels;
    } else {
      const int64_t in_size = i > 0 ? block_out_size_[i - 1] : spec_.image_size;
      macs += in_size * in_size * b.in_channels + int64_t{b.in_channels} * b.out_channels;
    }
    if (with_exits) {
      for (const auto& e : spec_.exits) {
        if (e.after_block != i) continue;
        const int64_t exit_size = (out - 1) / 2 + 1;
        macs += exit_size * exit_size * 9 * b.out_channels * e.hidden_channels +
                exit_size * exit_size * e.hidden_channels +
                int64_t{e.hidden_channels} * spec_.num_classes;
      }
    }
  }
  return macs;
}

}  // namespace cleave::split
