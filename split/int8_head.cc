#include "split/int8_head.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <limits>
#include <set>
#include <utility>
#include <vector>

#include "split/int8_calibration.h"
#include "split/int8_ops.h"
#include "split/int8_serialization.h"
#include "split/torch_status.h"

namespace cleave::split {
namespace {

using int8::QConv;
using int8::QLinear;

constexpr int kTimingRounds = 3;
constexpr int kTimingRuns = 5;  // per round

Status ValidateImages(const torch::Tensor& images, const Int8HeadState& state,
                      const std::string& what) {
  if (!images.defined() || images.dim() != 4 || images.size(0) < 1 ||
      images.size(1) != state.input_channels || images.size(2) != state.image_size ||
      images.size(3) != state.image_size) {
    return Status::InvalidArgument(
        what + ": expected images [N>=1, " + std::to_string(state.input_channels) + ", " +
        std::to_string(state.image_size) + ", " + std::to_string(state.image_size) + "]");
  }
  if (images.scalar_type() != torch::kFloat || images.device() != torch::kCPU) {
    return Status::InvalidArgument(what + ": images must be float32 CPU tensors");
  }
  if (!torch::isfinite(images).all().item<bool>()) {
    return Status::InvalidArgument(what + ": images contain NaN or infinity");
  }
  return Status::Ok();
}

// BatchNorm (eval semantics: running statistics) folded into the preceding conv.
Status FoldConvBn(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn, QConv& out,
                  const std::string& where) {
  const torch::Tensor w = conv->weight.detach();
  if (w.dim() != 4 || w.sizes() != torch::IntArrayRef({out.out_channels, out.in_channels,
                                                       out.kernel, out.kernel})) {
    return Status::InvalidArgument(where + ": conv weight shape does not match the spec");
  }
  Result<FoldedConv> folded = FoldBatchNorm(conv, bn);
  if (!folded.ok()) return folded.status().WithContext(where);
  out.weight_float = std::move(folded->weight);
  out.bias = std::move(folded->bias);
  return Status::Ok();
}

Status CopyLinear(const torch::nn::Linear& fc, QLinear& out, const std::string& where) {
  const torch::Tensor w = fc->weight.detach();
  if (w.sizes() != torch::IntArrayRef({out.out_features, out.in_features})) {
    return Status::InvalidArgument(where + ": linear weight shape does not match the spec");
  }
  out.weight_float = w.contiguous().clone();
  out.bias = fc->bias.defined() ? fc->bias.detach().clone() : torch::zeros({out.out_features});
  return Status::Ok();
}

// Copies the (BN-folded) fp32 weights of blocks [0, end_block) and their exits into `state`.
Status LoadFloatWeights(SplitVisionNetImpl& net, Int8HeadState& state) {
  for (int i = 0; i < state.end_block; ++i) {
    const std::string where = "int8 head: block " + std::to_string(i);
    int8::QBlock& qb = state.blocks[i];
    VisionBlockImpl& block = net.block(i);
    if (auto* conv = dynamic_cast<ConvBnActImpl*>(&block);
        conv && qb.kind == int8::QBlock::Kind::kConv) {
      CLEAVE_RETURN_IF_ERROR(FoldConvBn(conv->conv, conv->bn, qb.conv, where));
    } else if (auto* mb = dynamic_cast<FusedMBConvImpl*>(&block);
               mb && qb.kind == int8::QBlock::Kind::kFusedMB) {
      CLEAVE_RETURN_IF_ERROR(FoldConvBn(mb->expand_conv, mb->expand_bn, qb.conv, where));
      CLEAVE_RETURN_IF_ERROR(FoldConvBn(mb->project_conv, mb->project_bn, qb.project, where));
    } else if (auto* res = dynamic_cast<ResBlockImpl*>(&block);
               res && qb.kind == int8::QBlock::Kind::kRes &&
               res->projection() == qb.projection_shortcut) {
      CLEAVE_RETURN_IF_ERROR(FoldConvBn(res->conv1, res->bn1, qb.conv, where));
      CLEAVE_RETURN_IF_ERROR(FoldConvBn(res->conv2, res->bn2, qb.project, where));
      if (qb.projection_shortcut) {
        CLEAVE_RETURN_IF_ERROR(
            FoldConvBn(res->shortcut_conv, res->shortcut_bn, qb.shortcut, where));
      }
    } else if (auto* cls = dynamic_cast<ClassifierImpl*>(&block);
               cls && qb.kind == int8::QBlock::Kind::kClassifier) {
      CLEAVE_RETURN_IF_ERROR(CopyLinear(cls->fc, qb.fc, where));
    } else {
      return Status::InvalidArgument(where + ": module type does not match the spec");
    }
  }
  // Same order as BuildSkeleton: by block, then spec order.
  size_t slot = 0;
  for (int i = 0; i < state.end_block; ++i) {
    for (int e = 0; e < net.num_exits(); ++e) {
      if (net.spec().exits[e].after_block != i) continue;
      if (slot >= state.exits.size()) return Status::Internal("int8 head: exit count mismatch");
      const std::string where = "int8 head: exit " + std::to_string(e);
      ExitHead& head = net.exit(e);
      CLEAVE_RETURN_IF_ERROR(FoldConvBn(head->conv, head->bn, state.exits[slot].conv, where));
      CLEAVE_RETURN_IF_ERROR(CopyLinear(head->fc, state.exits[slot].fc, where));
      ++slot;
    }
  }
  if (slot != state.exits.size()) return Status::Internal("int8 head: exit count mismatch");
  return Status::Ok();
}

}  // namespace

Int8Head::Int8Head(std::unique_ptr<Int8HeadState> state) : state_(std::move(state)) {}
Int8Head::Int8Head(Int8Head&&) noexcept = default;
Int8Head& Int8Head::operator=(Int8Head&&) noexcept = default;
Int8Head::~Int8Head() = default;

Result<Int8Head> Int8Head::Quantize(SplitVisionNetImpl& net, int end_block,
                                    const torch::Tensor& calibration_images) {
  return CallTorch(TorchSource::kOwnState, "int8 head: quantize", [&]() -> Result<Int8Head> {
    torch::NoGradGuard no_grad;
    CLEAVE_ASSIGN_OR_RETURN(Int8HeadState skeleton, int8::BuildSkeleton(net.spec(), end_block));
    auto state = std::make_unique<Int8HeadState>(std::move(skeleton));
    state->layout = int8::LayoutString(net.spec(), end_block);
    CLEAVE_RETURN_IF_ERROR(
        ValidateImages(calibration_images, *state, "int8 head: calibration images"));
    CLEAVE_RETURN_IF_ERROR(LoadFloatWeights(net, *state));
    // Ranges are observed on the fp32 (BN-folded) activations, then weights are quantized.
    CLEAVE_RETURN_IF_ERROR(int8::CalibrateActivations(*state, calibration_images));
    int8::ForEachConv(*state, [](QConv& c) {
      int8::QuantizeWeights(c.weight_float, c.weight_q, c.weight_scale);
    });
    int8::ForEachLinear(*state, [](QLinear& l) {
      int8::QuantizeWeights(l.weight_float, l.weight_q, l.weight_scale);
    });
    return Int8Head(std::move(state));
  });
}

Result<SplitVisionNetImpl::Outputs> Int8Head::Forward(const torch::Tensor& images) {
  if (!state_) return Status::FailedPrecondition("int8 head: moved-from head");
  CLEAVE_RETURN_IF_ERROR(ValidateImages(images, *state_, "int8 head: forward"));
  return CallTorch(TorchSource::kOwnState, "int8 head: forward (" + state_->engine + ")",
                   [&]() -> Result<SplitVisionNetImpl::Outputs> {
                     torch::NoGradGuard no_grad;
                     const torch::Tensor x = images.contiguous();
                     if (state_->engine == "reference") return int8::ForwardReference(*state_, x);
                     int8::QEngineGuard engine(state_->engine);
                     return int8::ForwardQuantized(*state_, x);
                   });
}

Result<std::string> Int8Head::Serialize() const {
  if (!state_) return Status::FailedPrecondition("int8 head: moved-from head");
  return CallTorch(TorchSource::kOwnState, "int8 head: serialize",
                   [&] { return int8::SerializeHead(*state_); });
}

Result<Int8Head> Int8Head::Deserialize(const std::string& bytes, const VisionModelSpec& spec) {
  return CallTorch(TorchSource::kStoredBytes, "int8 head bytes", [&]() -> Result<Int8Head> {
    CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<Int8HeadState> state,
                            int8::DeserializeHead(bytes, spec));
    return Int8Head(std::move(state));
  });
}

int64_t Int8Head::WeightBytes() const {
  if (!state_) return 0;
  int64_t bytes = 0;
  auto add = [&bytes](const torch::Tensor& w, const torch::Tensor& scale, const torch::Tensor& b) {
    bytes += w.numel() * 1 + scale.numel() * 4 + b.numel() * 4;
  };
  int8::ForEachConv(*state_, [&](const QConv& c) { add(c.weight_q, c.weight_scale, c.bias); });
  int8::ForEachLinear(*state_, [&](const QLinear& l) { add(l.weight_q, l.weight_scale, l.bias); });
  // One float32 scale and one uint8 zero point per activation quantization point.
  return bytes + static_cast<int64_t>(state_->acts.size()) * 5;
}

Status Int8Head::SelectEngine(const std::string& engine) {
  if (!state_) return Status::FailedPrecondition("int8 head: moved-from head");
  if (engine == "auto") return SelectFastestEngine();
  if (engine == "reference") {
    int8::ClearPrepacked(*state_);
    state_->engine = engine;
    return Status::Ok();
  }
  if (engine != "onednn" && engine != "qnnpack") {
    return Status::InvalidArgument("int8 head: unknown engine '" + engine +
                                   "' (expected onednn, qnnpack, reference or auto)");
  }
  if (!int8::EngineSupported(engine)) {
    return Status::Unavailable("int8 head: this libtorch has no '" + engine + "' engine");
  }
  Status status = CallTorch(TorchSource::kOwnState, "int8 head: prepack for " + engine, [&] {
    int8::QEngineGuard guard(engine);
    int8::PrepackConvs(*state_);
    return Status::Ok();
  });
  if (!status.ok()) {
    // Some convs may hold kernels packed for `engine` now: fall back to the reference path.
    int8::ClearPrepacked(*state_);
    state_->engine = "reference";
    return status.WithContext("falling back to the reference engine");
  }
  state_->engine = engine;
  return Status::Ok();
}

Status Int8Head::SelectFastestEngine() {
  state_->engine_timings_ms.clear();
  torch::Tensor probe;
  CLEAVE_RETURN_IF_ERROR(CallTorch(TorchSource::kOwnState, "int8 head: timing input", [&] {
    probe = torch::rand({1, state_->input_channels, state_->image_size, state_->image_size},
                        at::make_generator<at::CPUGeneratorImpl>(/*seed=*/1234));
    return Status::Ok();
  }));
  const std::map<std::string, double> best_ms =
      int8::TimeEngines([&](const std::string& engine) { return SelectEngine(engine).ok(); },
                        [&] { return Forward(probe).ok(); }, kTimingRounds, kTimingRuns);
  const std::string best = int8::FastestEngine(best_ms);
  state_->engine_timings_ms = best_ms;
  if (best.empty()) return Status::Internal("int8 head: no engine could run the head");
  return SelectEngine(best);
}

const std::string& Int8Head::engine() const {
  static const std::string kNone;
  return state_ ? state_->engine : kNone;
}

const std::map<std::string, double>& Int8Head::engine_timings_ms() const {
  static const std::map<std::string, double> kEmpty;
  return state_ ? state_->engine_timings_ms : kEmpty;
}

}  // namespace cleave::split
