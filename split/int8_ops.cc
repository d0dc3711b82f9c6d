#include "split/int8_ops.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <set>

#include "split/torch_status.h"

namespace cleave::split::int8 {
namespace {

using ConvPacked = c10::intrusive_ptr<ConvPackedParamsBase<2>>;

// Dispatcher handles of the quantized kernels, looked up once.
struct QuantizedOps {
  c10::TypedOperatorHandle<ConvPacked(at::Tensor, c10::optional<at::Tensor>, torch::List<int64_t>,
                                      torch::List<int64_t>, torch::List<int64_t>, int64_t)>
      conv_prepack;
  c10::TypedOperatorHandle<at::Tensor(at::Tensor, const ConvPacked&, double, int64_t)> conv;
  c10::TypedOperatorHandle<at::Tensor(at::Tensor, const ConvPacked&, double, int64_t)> conv_relu;
  c10::TypedOperatorHandle<at::Tensor(at::Tensor, at::Tensor, double, int64_t)> add;
  c10::TypedOperatorHandle<at::Tensor(at::Tensor, at::Tensor, double, int64_t)> add_relu;
};

const QuantizedOps& Ops() {
  static const QuantizedOps ops = [] {
    auto& dispatcher = c10::Dispatcher::singleton();
    return QuantizedOps{
        dispatcher.findSchemaOrThrow("quantized::conv2d_prepack", "")
            .typed<ConvPacked(at::Tensor, c10::optional<at::Tensor>, torch::List<int64_t>,
                              torch::List<int64_t>, torch::List<int64_t>, int64_t)>(),
        dispatcher.findSchemaOrThrow("quantized::conv2d", "new")
            .typed<at::Tensor(at::Tensor, const ConvPacked&, double, int64_t)>(),
        dispatcher.findSchemaOrThrow("quantized::conv2d_relu", "new")
            .typed<at::Tensor(at::Tensor, const ConvPacked&, double, int64_t)>(),
        dispatcher.findSchemaOrThrow("quantized::add", "")
            .typed<at::Tensor(at::Tensor, at::Tensor, double, int64_t)>(),
        dispatcher.findSchemaOrThrow("quantized::add_relu", "")
            .typed<at::Tensor(at::Tensor, at::Tensor, double, int64_t)>()};
  }();
  return ops;
}

// Below this a weight channel is treated as (nearly) all zero; keeps the int32 bias the
// kernels derive (bias / (input_scale * weight_scale)) far from overflow.
constexpr float kMinWeightScale = 1e-6f;
constexpr float kMinActRange = 1e-6f;

QConv MakeConv(int in, int out, int kernel, int stride, bool relu) {
  QConv c;
  c.in_channels = in;
  c.out_channels = out;
  c.kernel = kernel;
  c.stride = stride;
  c.relu = relu;
  return c;
}

int AddAct(Int8HeadState& state, bool after_relu) {
  state.acts.emplace_back();
  state.act_after_relu.push_back(after_relu);
  return static_cast<int>(state.acts.size()) - 1;
}

torch::Tensor Preprocess(const Int8HeadState& state, const torch::Tensor& images) {
  return (images - state.mean_tensor) / state.std_tensor;
}

torch::Tensor ConvFloat(const QConv& c, const torch::Tensor& x) {
  torch::Tensor y = torch::conv2d(x, c.weight_float, c.bias, c.stride, c.kernel / 2);
  return c.relu ? torch::relu(y) : y;
}

// Global average pooling + linear on float activations.
torch::Tensor PoolLinear(const QLinear& fc, const torch::Tensor& x) {
  return torch::linear(x.mean({2, 3}), fc.weight_float, fc.bias);
}

at::QEngine EngineEnum(const std::string& engine) {
  if (engine == "onednn") return at::QEngine::ONEDNN;
  if (engine == "qnnpack") return at::QEngine::QNNPACK;
  return at::QEngine::NoQEngine;
}

void Prepack(QConv& c) {
  const torch::Tensor weight = at::_make_per_channel_quantized_tensor(
      c.weight_q, c.weight_scale.to(torch::kDouble), torch::zeros({c.out_channels}, torch::kLong),
      /*axis=*/0);
  const int64_t pad = c.kernel / 2;
  c.packed = Ops().conv_prepack.call(weight, c.bias, torch::List<int64_t>({c.stride, c.stride}),
                                     torch::List<int64_t>({pad, pad}), torch::List<int64_t>({1, 1}),
                                     /*groups=*/1);
}

torch::Tensor ConvQuantized(const Int8HeadState& state, const QConv& c, const torch::Tensor& x) {
  const ActQuant& out = state.acts[c.out_act];
  const auto& op = c.relu ? Ops().conv_relu : Ops().conv;
  return op.call(x, c.packed, out.scale, out.zero_point);
}

}  // namespace

ActQuant ChooseActQuant(float lo, float hi) {
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  if (hi - lo < kMinActRange) hi = lo + kMinActRange;  // a constant (e.g. all-zero) tensor
  ActQuant q;
  q.scale = (hi - lo) / kActQMax;
  q.zero_point = static_cast<int32_t>(
      std::clamp(std::nearbyint(-lo / q.scale), 0.0f, static_cast<float>(kActQMax)));
  return q;
}

Result<Int8HeadState> BuildSkeleton(const VisionModelSpec& spec, int end_block) {
  CLEAVE_RETURN_IF_ERROR(spec.Validate());
  const int num_blocks = static_cast<int>(spec.blocks.size());
  if (end_block < 1 || end_block > num_blocks) {
    return Status::InvalidArgument("int8 head: end_block " + std::to_string(end_block) +
                                   " outside [1, " + std::to_string(num_blocks) + "]");
  }
  Int8HeadState state;
  state.end_block = end_block;
  state.input_channels = spec.input_channels;
  state.image_size = spec.image_size;
  state.num_classes = spec.num_classes;
  state.input_mean = spec.input_mean;
  state.input_std = spec.input_std;
  state.mean_tensor = NormalizationTensor(spec.input_mean);
  state.std_tensor = NormalizationTensor(spec.input_std);
  state.input_act = AddAct(state, /*after_relu=*/false);
  for (int i = 0; i < end_block; ++i) {
    const BlockSpec& b = spec.blocks[i];
    QBlock block;
    if ((b.type == "conv" && (!b.batch_norm || b.padding >= 0)) || b.type == "maxpool" ||
        b.type == "linear") {
      return Status::Unimplemented("int8 head: block " + std::to_string(i) + " (" + b.type +
                                   ") is not supported by the int8 path; keep this model fp32");
    }
    if (b.type == "conv") {
      block.kind = QBlock::Kind::kConv;
      block.conv = MakeConv(b.in_channels, b.out_channels, b.kernel, b.stride, b.relu);
      block.conv.out_act = AddAct(state, b.relu);
    } else if (b.type == "fused_mb") {
      const int hidden = b.in_channels * b.expansion;
      block.kind = QBlock::Kind::kFusedMB;
      block.conv = MakeConv(b.in_channels, hidden, 3, b.stride, /*relu=*/true);
      block.conv.out_act = AddAct(state, true);
      block.project = MakeConv(hidden, b.out_channels, 1, 1, /*relu=*/false);
      block.project.out_act = AddAct(state, false);
      block.residual = b.stride == 1 && b.in_channels == b.out_channels;
      if (block.residual) block.add_act = AddAct(state, false);
    } else if (b.type == "res") {
      block.kind = QBlock::Kind::kRes;
      block.conv = MakeConv(b.in_channels, b.out_channels, 3, b.stride, /*relu=*/true);
      block.conv.out_act = AddAct(state, true);
      block.project = MakeConv(b.out_channels, b.out_channels, 3, 1, /*relu=*/false);
      block.project.out_act = AddAct(state, false);
      block.projection_shortcut = b.stride != 1 || b.in_channels != b.out_channels;
      if (block.projection_shortcut) {
        block.shortcut = MakeConv(b.in_channels, b.out_channels, 1, b.stride, /*relu=*/false);
        block.shortcut.out_act = AddAct(state, false);
      }
      block.residual = true;
      block.add_relu = b.relu;
      block.add_act = AddAct(state, b.relu);
    } else {
      block.kind = QBlock::Kind::kClassifier;
      block.fc.in_features = b.in_channels;
      block.fc.out_features = b.out_channels;
    }
    state.blocks.push_back(std::move(block));
    for (const ExitSpec& e : spec.exits) {
      if (e.after_block != i) continue;
      QExit exit;
      exit.after_block = i;
      exit.conv = MakeConv(b.out_channels, e.hidden_channels, 3, 2, /*relu=*/true);
      exit.conv.out_act = AddAct(state, true);
      exit.fc.in_features = e.hidden_channels;
      exit.fc.out_features = spec.num_classes;
      state.exits.push_back(std::move(exit));
    }
  }
  return state;
}

void ForEachConv(Int8HeadState& state, const std::function<void(QConv&)>& fn) {
  for (QBlock& b : state.blocks) {
    if (b.kind == QBlock::Kind::kClassifier) continue;
    fn(b.conv);
    if (b.kind == QBlock::Kind::kFusedMB || b.kind == QBlock::Kind::kRes) fn(b.project);
    if (b.kind == QBlock::Kind::kRes && b.projection_shortcut) fn(b.shortcut);
  }
  for (QExit& e : state.exits) fn(e.conv);
}

void ForEachLinear(Int8HeadState& state, const std::function<void(QLinear&)>& fn) {
  for (QBlock& b : state.blocks) {
    if (b.kind == QBlock::Kind::kClassifier) fn(b.fc);
  }
  for (QExit& e : state.exits) fn(e.fc);
}

void ForEachConv(const Int8HeadState& state, const std::function<void(const QConv&)>& fn) {
  ForEachConv(const_cast<Int8HeadState&>(state), [&](QConv& c) { fn(c); });
}

void ForEachLinear(const Int8HeadState& state, const std::function<void(const QLinear&)>& fn) {
  ForEachLinear(const_cast<Int8HeadState&>(state), [&](QLinear& l) { fn(l); });
}

torch::Tensor DequantizeWeight(const torch::Tensor& weight_q, const torch::Tensor& weight_scale) {
  std::vector<int64_t> shape(weight_q.dim(), 1);
  shape[0] = -1;
  return (weight_q.to(torch::kFloat) * weight_scale.view(shape)).contiguous();
}

void QuantizeWeights(torch::Tensor& weight_float, torch::Tensor& weight_q,
                     torch::Tensor& weight_scale) {
  const torch::Tensor flat = weight_float.flatten(1);
  weight_scale =
      std::get<0>(flat.abs().max(1)).div(kWeightQMax).clamp_min(kMinWeightScale).contiguous();
  weight_q = torch::round(flat / weight_scale.unsqueeze(1))
                 .clamp(-kWeightQMax, kWeightQMax)
                 .to(torch::kChar)
                 .view(weight_float.sizes())
                 .contiguous();
  weight_float = DequantizeWeight(weight_q, weight_scale);
}

void DequantizeAllWeights(Int8HeadState& state) {
  ForEachConv(state,
              [](QConv& c) { c.weight_float = DequantizeWeight(c.weight_q, c.weight_scale); });
  ForEachLinear(state,
                [](QLinear& l) { l.weight_float = DequantizeWeight(l.weight_q, l.weight_scale); });
}

SplitVisionNetImpl::Outputs ForwardFloat(const Int8HeadState& state, const torch::Tensor& images,
                                         const ActHook& hook) {
  SplitVisionNetImpl::Outputs out;
  torch::Tensor x = hook(state.input_act, Preprocess(state, images));
  size_t next_exit = 0;
  for (size_t i = 0; i < state.blocks.size(); ++i) {
    const QBlock& b = state.blocks[i];
    switch (b.kind) {
      case QBlock::Kind::kConv: x = hook(b.conv.out_act, ConvFloat(b.conv, x)); break;
      case QBlock::Kind::kFusedMB: {
        const torch::Tensor hidden = hook(b.conv.out_act, ConvFloat(b.conv, x));
        torch::Tensor y = hook(b.project.out_act, ConvFloat(b.project, hidden));
        x = b.residual ? hook(b.add_act, y + x) : y;
        break;
      }
      case QBlock::Kind::kRes: {
        const torch::Tensor hidden = hook(b.conv.out_act, ConvFloat(b.conv, x));
        const torch::Tensor y = hook(b.project.out_act, ConvFloat(b.project, hidden));
        const torch::Tensor shortcut =
            b.projection_shortcut ? hook(b.shortcut.out_act, ConvFloat(b.shortcut, x)) : x;
        const torch::Tensor sum = y + shortcut;
        x = hook(b.add_act, b.add_relu ? torch::relu(sum) : sum);
        break;
      }
      case QBlock::Kind::kClassifier: x = PoolLinear(b.fc, x); break;
    }
    for (; next_exit < state.exits.size() &&
           state.exits[next_exit].after_block == static_cast<int>(i);
         ++next_exit) {
      const QExit& e = state.exits[next_exit];
      out.exit_logits.push_back(PoolLinear(e.fc, hook(e.conv.out_act, ConvFloat(e.conv, x))));
    }
  }
  out.features = x;
  return out;
}

SplitVisionNetImpl::Outputs ForwardReference(const Int8HeadState& state,
                                             const torch::Tensor& images) {
  return ForwardFloat(state, images, [&state](int act, const torch::Tensor& x) {
    const ActQuant& q = state.acts[act];
    return at::fake_quantize_per_tensor_affine(x, q.scale, q.zero_point, 0, kActQMax);
  });
}

bool EngineSupported(const std::string& engine) {
  const at::QEngine wanted = EngineEnum(engine);
  if (wanted == at::QEngine::NoQEngine) return false;
  const auto& engines = at::globalContext().supportedQEngines();
  return std::find(engines.begin(), engines.end(), wanted) != engines.end();
}

QEngineGuard::QEngineGuard(const std::string& engine) : previous_(at::globalContext().qEngine()) {
  at::globalContext().setQEngine(EngineEnum(engine));
}

QEngineGuard::~QEngineGuard() {
  // The previous engine was valid when read; nothing sensible to do if it is not now.
  const Status restored = CallTorch(TorchSource::kOwnState, "restoring the quantized engine",
                                    [this] { at::globalContext().setQEngine(previous_); });
  static_cast<void>(restored);
}

void PrepackConvs(Int8HeadState& state) { ForEachConv(state, Prepack); }

void ClearPrepacked(Int8HeadState& state) {
  ForEachConv(state, [](QConv& c) { c.packed.reset(); });
}

SplitVisionNetImpl::Outputs ForwardQuantized(const Int8HeadState& state,
                                             const torch::Tensor& images) {
  SplitVisionNetImpl::Outputs out;
  const ActQuant& in = state.acts[state.input_act];
  torch::Tensor x =
      at::quantize_per_tensor(Preprocess(state, images).contiguous(at::MemoryFormat::ChannelsLast),
                              in.scale, in.zero_point, at::kQUInt8);
  torch::Tensor features;
  size_t next_exit = 0;
  for (size_t i = 0; i < state.blocks.size(); ++i) {
    const QBlock& b = state.blocks[i];
    switch (b.kind) {
      case QBlock::Kind::kConv: x = ConvQuantized(state, b.conv, x); break;
      case QBlock::Kind::kFusedMB: {
        torch::Tensor y = ConvQuantized(state, b.project, ConvQuantized(state, b.conv, x));
        if (b.residual) {
          const ActQuant& sum = state.acts[b.add_act];
          y = Ops().add.call(y, x, sum.scale, sum.zero_point);
        }
        x = y;
        break;
      }
      case QBlock::Kind::kRes: {
        const torch::Tensor y = ConvQuantized(state, b.project, ConvQuantized(state, b.conv, x));
        const torch::Tensor shortcut =
            b.projection_shortcut ? ConvQuantized(state, b.shortcut, x) : x;
        const ActQuant& sum = state.acts[b.add_act];
        x = (b.add_relu ? Ops().add_relu : Ops().add).call(y, shortcut, sum.scale, sum.zero_point);
        break;
      }
      case QBlock::Kind::kClassifier:
        features = PoolLinear(b.fc, x.dequantize());  // last block by spec validation
        break;
    }
    for (; next_exit < state.exits.size() &&
           state.exits[next_exit].after_block == static_cast<int>(i);
         ++next_exit) {
      const QExit& e = state.exits[next_exit];
      out.exit_logits.push_back(PoolLinear(e.fc, ConvQuantized(state, e.conv, x).dequantize()));
    }
  }
  out.features = features.defined() ? features : x.dequantize().contiguous();
  return out;
}

std::map<std::string, double> TimeEngines(const std::function<bool(const std::string&)>& select,
                                          const std::function<bool()>& run, int rounds, int runs) {
  std::vector<std::string> candidates = {"reference"};
  for (const char* engine : {"onednn", "qnnpack"}) {
    if (EngineSupported(engine)) candidates.push_back(engine);
  }
  std::map<std::string, double> best_ms;
  std::set<std::string> failed;
  for (int round = 0; round < rounds; ++round) {
    for (const std::string& engine : candidates) {
      if (failed.count(engine)) continue;
      if (!select(engine) || !run()) {  // also the warm-up run
        failed.insert(engine);
        continue;
      }
      double& ms =
          best_ms.try_emplace(engine, std::numeric_limits<double>::infinity()).first->second;
      for (int i = 0; i < runs; ++i) {
        const auto start = std::chrono::steady_clock::now();
        const bool ok = run();
        const auto stop = std::chrono::steady_clock::now();
        if (!ok) {
          failed.insert(engine);
          break;
        }
        ms = std::min(ms, std::chrono::duration<double, std::milli>(stop - start).count());
      }
    }
  }
  for (const std::string& engine : failed) best_ms.erase(engine);
  return best_ms;
}

bool AllPositiveFinite(const torch::Tensor& t) {
  return torch::isfinite(t).all().item<bool>() && (t > 0).all().item<bool>();
}

Status ReadActQuants(const torch::Tensor& scale, const torch::Tensor& zero_point,
                     const std::vector<bool>& zero_based, const std::string& what,
                     std::vector<ActQuant>& acts) {
  if (!AllPositiveFinite(scale)) return Status::DataLoss(what + ": invalid activation scales");
  for (size_t i = 0; i < acts.size(); ++i) {
    const int32_t zp = zero_point[static_cast<int64_t>(i)].item<uint8_t>();
    if (zero_based[i] && zp != 0) {
      return Status::DataLoss(what + ": activation " + std::to_string(i) +
                              " follows a fused ReLU but has a nonzero zero point");
    }
    acts[i] = {scale[static_cast<int64_t>(i)].item<float>(), zp};
  }
  return Status::Ok();
}

std::string FastestEngine(const std::map<std::string, double>& best_ms) {
  std::string best;
  for (const auto& [engine, ms] : best_ms) {
    if (best.empty() || ms < best_ms.at(best)) best = engine;
  }
  return best;
}

}  // namespace cleave::split::int8
