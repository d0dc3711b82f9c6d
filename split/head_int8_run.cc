// Running the int8 plan of an imported head (split/head_int8_plan.h): calibration,
// the fake-quant reference engine and libtorch's quantized kernels.
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "split/head_int8_plan.h"

namespace cleave::split::int8_graph {
namespace {

using QgConvPacked = c10::intrusive_ptr<ConvPackedParamsBase<2>>;
using QgLinearPacked = c10::intrusive_ptr<LinearPackedParamsBase>;

constexpr int64_t kQgCalibrationChunk = 64;  // items per calibration run, bounds memory

// Dispatcher handles of the quantized kernels, looked up once. Conv and add are called
// unboxed with the signatures split/int8_ops.cc uses; the others boxed, since an unboxed call
// must name the kernel's exact C++ signature (const Tensor& or Tensor), which libtorch does
// not publish, and the boxing costs nothing next to the kernels.
struct QgKernels {
  c10::TypedOperatorHandle<QgConvPacked(at::Tensor, c10::optional<at::Tensor>, torch::List<int64_t>,
                                        torch::List<int64_t>, torch::List<int64_t>, int64_t)>
      conv_prepack;
  c10::TypedOperatorHandle<at::Tensor(at::Tensor, const QgConvPacked&, double, int64_t)> conv;
  c10::TypedOperatorHandle<at::Tensor(at::Tensor, const QgConvPacked&, double, int64_t)> conv_relu;
  c10::TypedOperatorHandle<at::Tensor(at::Tensor, at::Tensor, double, int64_t)> add;
  c10::TypedOperatorHandle<at::Tensor(at::Tensor, at::Tensor, double, int64_t)> add_relu;
  c10::OperatorHandle linear_prepack, linear, linear_relu, batch_norm, batch_norm_relu, hardswish;
};

const QgKernels& QgKernelHandles() {
  static const QgKernels kernels = [] {
    auto& d = c10::Dispatcher::singleton();
    using Conv = at::Tensor(at::Tensor, const QgConvPacked&, double, int64_t);
    using Add = at::Tensor(at::Tensor, at::Tensor, double, int64_t);
    return QgKernels{
        d.findSchemaOrThrow("quantized::conv2d_prepack", "")
            .typed<QgConvPacked(at::Tensor, c10::optional<at::Tensor>, torch::List<int64_t>,
                                torch::List<int64_t>, torch::List<int64_t>, int64_t)>(),
        d.findSchemaOrThrow("quantized::conv2d", "new").typed<Conv>(),
        d.findSchemaOrThrow("quantized::conv2d_relu", "new").typed<Conv>(),
        d.findSchemaOrThrow("quantized::add", "").typed<Add>(),
        d.findSchemaOrThrow("quantized::add_relu", "").typed<Add>(),
        d.findSchemaOrThrow("quantized::linear_prepack", ""),
        d.findSchemaOrThrow("quantized::linear", ""),
        d.findSchemaOrThrow("quantized::linear_relu", ""),
        d.findSchemaOrThrow("quantized::batch_norm", ""),
        d.findSchemaOrThrow("quantized::batch_norm_relu", ""),
        d.findSchemaOrThrow("quantized::hardswish", "")};
  }();
  return kernels;
}

// Calls `op` with `arguments` and returns its first result.
c10::IValue QgCallBoxed(const c10::OperatorHandle& op, torch::jit::Stack arguments) {
  op.callBoxed(arguments);
  TORCH_CHECK(!arguments.empty(), "int8 graph head: ", op.schema().name(), " returned nothing");
  return std::move(arguments[0]);
}

torch::Tensor QgFakeQuant(const torch::Tensor& x, const int8::ActQuant& q) {
  return at::fake_quantize_per_tensor_affine(x, q.scale, q.zero_point, 0, int8::kActQMax);
}

torch::Tensor QgApplyClamp(const Step& step, const torch::Tensor& x) {
  switch (step.clamp) {
    case FusedClamp::kRelu: return torch::relu(x);
    case FusedClamp::kHardtanh: return torch::clamp(x, 0.0, step.clamp_max);
    case FusedClamp::kNone: break;
  }
  return x;
}

// MACs per item of an fp32 conv / linear / matmul (report only).
int64_t QgFloatOpMacs(const torch::jit::Node* node, const torch::jit::Stack& inputs,
                      const torch::Tensor& out, int64_t batch) {
  if (batch < 1 || inputs.size() < 2 || !inputs[0].isTensor() || !inputs[1].isTensor()) return 0;
  const torch::Tensor& a = inputs[0].toTensor();
  const torch::Tensor& w = inputs[1].toTensor();
  const int64_t per_item = out.numel() / batch;
  if (node->kind() == c10::aten::linear || node->kind() == c10::aten::matmul) {
    return a.dim() > 0 ? per_item * a.size(-1) : 0;
  }
  if (w.dim() < 2 || w.size(0) == 0) return 0;
  if (node->kind() == c10::aten::_convolution && inputs.size() > 6 && inputs[6].isBool() &&
      inputs[6].toBool()) {
    return a.numel() / batch * (w.numel() / w.size(0));  // transposed: per input element
  }
  return per_item * (w.numel() / w.size(0));
}

// The fp32 computation of a step that makes a new int8 tensor (calibration and reference).
torch::Tensor QgProducerFloat(const Int8GraphState& s, const Step& step,
                              const std::vector<c10::IValue>& slots) {
  const torch::Tensor x = slots[step.inputs[0]].toTensor();
  torch::Tensor y;
  switch (step.kind) {
    case StepKind::kConv: {
      const QWeights& w = s.weights[step.weights];
      y = torch::conv2d(x, w.weight_float, w.bias, step.stride, step.padding, step.dilation,
                        step.groups);
      break;
    }
    case StepKind::kLinear: {
      const QWeights& w = s.weights[step.weights];
      y = torch::linear(x, w.weight_float, w.bias);
      break;
    }
    case StepKind::kAdd: y = x + slots[step.inputs[1]].toTensor(); break;
    case StepKind::kBatchNorm:
      y = torch::batch_norm(x, step.bn_weight, step.bn_bias, step.bn_mean, step.bn_var,
                            /*training=*/false, 0.0, step.bn_eps, /*cudnn_enabled=*/false);
      break;
    case StepKind::kHardswish: y = torch::hardswish(x); break;
    default: TORCH_CHECK(false, "int8 graph head: not a producing step");
  }
  return QgApplyClamp(step, y);
}

torch::Tensor QgProducerQuantized(const Int8GraphState& s, const Step& step,
                                  const std::vector<c10::IValue>& slots) {
  const QgKernels& k = QgKernelHandles();
  const int8::ActQuant& out = s.acts[step.act];
  const torch::Tensor x = slots[step.inputs[0]].toTensor();
  // A fused hardtanh(0, b) is the plain kernel: zero point 0 clamps at 0 and the range, never
  // above b, clamps at the top. A fused ReLU uses the _relu kernels (also zero point 0).
  const bool relu = step.clamp == FusedClamp::kRelu;
  switch (step.kind) {
    case StepKind::kConv: {
      const QWeights& w = s.weights[step.weights];
      TORCH_CHECK(w.conv_packed, "int8 graph head: conv not prepacked for this engine");
      return (relu ? k.conv_relu : k.conv).call(x, w.conv_packed, out.scale, out.zero_point);
    }
    case StepKind::kLinear: {
      const QWeights& w = s.weights[step.weights];
      TORCH_CHECK(w.linear_packed, "int8 graph head: linear not prepacked for this engine");
      return QgCallBoxed(relu ? k.linear_relu : k.linear,
                         {x, w.linear_packed, static_cast<double>(out.scale),
                          static_cast<int64_t>(out.zero_point)})
          .toTensor();
    }
    case StepKind::kAdd:
      return (relu ? k.add_relu : k.add)
          .call(x, slots[step.inputs[1]].toTensor(), out.scale, out.zero_point);
    case StepKind::kBatchNorm:
      return QgCallBoxed(relu ? k.batch_norm_relu : k.batch_norm,
                         {x, step.bn_weight, step.bn_bias, step.bn_mean, step.bn_var, step.bn_eps,
                          static_cast<double>(out.scale), static_cast<int64_t>(out.zero_point)})
          .toTensor();
    case StepKind::kHardswish:
      return QgCallBoxed(k.hardswish,
                         {x, static_cast<double>(out.scale), static_cast<int64_t>(out.zero_point)})
          .toTensor();
    default: TORCH_CHECK(false, "int8 graph head: not a producing step");
  }
}

// Runs a node's own operation on `slots[inputs]` and returns what it pushed.
torch::jit::Stack QgRunOperation(const Step& step, const std::vector<c10::IValue>& slots,
                                 torch::jit::Stack* inputs_copy) {
  torch::jit::Stack stack;
  stack.reserve(step.inputs.size());
  for (const int slot : step.inputs) stack.push_back(slots[slot]);
  if (step.view_needs_contiguous) stack[0] = stack[0].toTensor().contiguous();
  if (inputs_copy != nullptr) *inputs_copy = stack;
  step.operation(stack);
  TORCH_CHECK(stack.size() == step.outputs.size(),
              "int8 graph head: ", step.node->kind().toQualString(), " returned ", stack.size(),
              " values, expected ", step.outputs.size());
  return stack;
}

}  // namespace

torch::Tensor RunPlan(const Int8GraphState& s, RunMode mode, const torch::Tensor& x,
                      const PlanObserver* observer) {
  TORCH_CHECK(mode != RunMode::kCalibrate || observer != nullptr,
              "int8 graph head: calibration needs an observer");
  const int64_t batch = x.size(0);
  std::vector<c10::IValue> slots = s.initial_slots;
  slots[s.input_slot] = x;
  for (const Step& step : s.steps) {
    switch (step.kind) {
      case StepKind::kQuantize: {
        const torch::Tensor in = slots[step.inputs[0]].toTensor();
        const int8::ActQuant& q = s.acts[step.act];
        if (mode == RunMode::kCalibrate) {
          observer->on_activation(step.act, in);
          slots[step.outputs[0]] = in;
        } else if (mode == RunMode::kReference) {
          slots[step.outputs[0]] = QgFakeQuant(in, q);
        } else {
          // NHWC is oneDNN's and QNNPACK's layout: the kernels then reorder nothing.
          const torch::Tensor nhwc =
              in.dim() == 4 ? in.contiguous(at::MemoryFormat::ChannelsLast) : in.contiguous();
          slots[step.outputs[0]] =
              at::quantize_per_tensor(nhwc, q.scale, q.zero_point, at::kQUInt8);
        }
        break;
      }
      case StepKind::kDequantize: {
        const torch::Tensor in = slots[step.inputs[0]].toTensor();
        // fp32 ops get the contiguous (NCHW) tensors the graph would have given them: view
        // and friends depend on strides.
        slots[step.outputs[0]] =
            mode == RunMode::kQuantized ? in.dequantize().contiguous() : in.contiguous();
        break;
      }
      case StepKind::kConv:
      case StepKind::kLinear:
      case StepKind::kAdd:
      case StepKind::kBatchNorm:
      case StepKind::kHardswish: {
        if (mode == RunMode::kQuantized) {
          slots[step.outputs[0]] = QgProducerQuantized(s, step, slots);
          break;
        }
        torch::Tensor y = QgProducerFloat(s, step, slots);
        if (mode == RunMode::kCalibrate) {
          observer->on_activation(step.act, y);
          if (step.report_op >= 0 && batch > 0) {
            const QWeights& w = s.weights[step.weights];
            observer->on_macs(
                step.report_op,
                y.numel() / batch * (w.weight_float.numel() / w.weight_float.size(0)));
          }
        } else {
          y = QgFakeQuant(y, s.acts[step.act]);
        }
        slots[step.outputs[0]] = std::move(y);
        break;
      }
      case StepKind::kKeepScale: {
        torch::jit::Stack out = QgRunOperation(step, slots, nullptr);
        torch::Tensor y = out[0].toTensor();
        // Average pooling rounds to its input's grid in int8; fake-quant does the same.
        if (mode == RunMode::kReference) y = QgFakeQuant(y, s.acts[step.act]);
        slots[step.outputs[0]] = std::move(y);
        break;
      }
      case StepKind::kFloatOp: {
        torch::jit::Stack inputs;
        const bool count = mode == RunMode::kCalibrate && step.report_op >= 0;
        torch::jit::Stack out = QgRunOperation(step, slots, count ? &inputs : nullptr);
        if (count && out[0].isTensor()) {
          observer->on_macs(step.report_op,
                            QgFloatOpMacs(step.node, inputs, out[0].toTensor(), batch));
        }
        for (size_t i = 0; i < out.size(); ++i) slots[step.outputs[i]] = std::move(out[i]);
        break;
      }
      case StepKind::kAssert: {
        const bool cond = slots[step.inputs[0]].toBool();
        TORCH_CHECK(!(cond ? step.raise_if_true : step.raise_if_false), step.assert_message);
        break;
      }
    }
  }
  return slots[s.output_slot].toTensor();
}

Status CalibrateAndQuantize(Int8GraphState& s, const torch::Tensor& inputs) {
  struct Range {
    float lo = std::numeric_limits<float>::infinity();
    float hi = -std::numeric_limits<float>::infinity();
    bool non_finite = false;  // NaN would slip through min/max
  };
  std::vector<Range> ranges(s.acts.size());
  std::vector<int64_t> macs(s.report.ops.size(), -1);
  PlanObserver observer;
  observer.on_activation = [&ranges](int act, const torch::Tensor& value) {
    if (value.numel() == 0) return;
    const auto [lo_tensor, hi_tensor] = torch::aminmax(value.detach());
    const float lo = lo_tensor.item<float>(), hi = hi_tensor.item<float>();
    ranges[act].non_finite = ranges[act].non_finite || !std::isfinite(lo) || !std::isfinite(hi);
    ranges[act].lo = std::min(ranges[act].lo, lo);
    ranges[act].hi = std::max(ranges[act].hi, hi);
  };
  observer.on_macs = [&macs](int op, int64_t value) {
    if (macs[op] < 0) macs[op] = value;  // per item: the first chunk says it
  };
  const int64_t n = inputs.size(0);
  for (int64_t start = 0; start < n; start += kQgCalibrationChunk) {
    (void)RunPlan(s, RunMode::kCalibrate,
                  inputs.slice(0, start, std::min(n, start + kQgCalibrationChunk)), &observer);
  }
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (ranges[i].non_finite || !std::isfinite(ranges[i].lo) || !std::isfinite(ranges[i].hi)) {
      return Status::InvalidArgument(
          "int8 graph head: calibration produced empty or non-finite activations (check the "
          "head's weights and the calibration inputs)");
    }
    // After a fused ReLU/ReLU6 the range starts at 0 (values are >= 0 anyway), so the zero
    // point is 0 and the kernels' clamp at q = 0 is the activation.
    s.acts[i] = int8::ChooseActQuant(s.act_zero_based[i] ? 0.0f : ranges[i].lo, ranges[i].hi);
  }
  for (size_t op = 0; op < macs.size(); ++op)
    s.report.ops[op].macs = std::max<int64_t>(0, macs[op]);
  for (QWeights& w : s.weights) int8::QuantizeWeights(w.weight_float, w.weight_q, w.weight_scale);
  FinishReport(s);
  return Status::Ok();
}

void DequantizeAllWeights(Int8GraphState& s) {
  for (QWeights& w : s.weights) w.weight_float = int8::DequantizeWeight(w.weight_q, w.weight_scale);
}

void PrepackKernels(Int8GraphState& s) {
  const QgKernels& k = QgKernelHandles();
  for (const Step& step : s.steps) {
    if (step.kind != StepKind::kConv && step.kind != StepKind::kLinear) continue;
    QWeights& w = s.weights[step.weights];
    const int64_t out = w.weight_q.size(0);
    const torch::Tensor weight = at::_make_per_channel_quantized_tensor(
        w.weight_q, w.weight_scale.to(torch::kDouble), torch::zeros({out}, torch::kLong),
        /*axis=*/0);
    if (step.kind == StepKind::kConv) {
      w.conv_packed = k.conv_prepack.call(weight, w.bias, torch::List<int64_t>(step.stride),
                                          torch::List<int64_t>(step.padding),
                                          torch::List<int64_t>(step.dilation), step.groups);
    } else {
      w.linear_packed =
          QgCallBoxed(k.linear_prepack, {weight, w.bias}).toCustomClass<LinearPackedParamsBase>();
    }
  }
}

void ClearPrepacked(Int8GraphState& s) {
  for (QWeights& w : s.weights) {
    w.conv_packed.reset();
    w.linear_packed.reset();
  }
}

void FinishReport(Int8GraphState& s) {
  HeadInt8Report& r = s.report;
  int64_t int8_ops = 0, int8_macs = 0, total_macs = 0;
  for (const QuantizedOpInfo& op : r.ops) {
    int8_ops += op.int8 ? 1 : 0;
    total_macs += op.macs;
    int8_macs += op.int8 ? op.macs : 0;
  }
  r.int8_ops_fraction = r.ops.empty() ? 0.0 : static_cast<double>(int8_ops) / r.ops.size();
  r.int8_macs_fraction = total_macs == 0 ? 0.0 : static_cast<double>(int8_macs) / total_macs;
}

}  // namespace cleave::split::int8_graph
