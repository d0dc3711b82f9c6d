// Building the int8 plan of an imported head from its frozen TorchScript graph
// (split/head_int8_plan.h). Running it is split/head_int8_run.cc.
#include "split/head_int8_plan.h"

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/freeze_module.h>
#include <torch/csrc/jit/passes/remove_dropout.h>
#include <torch/csrc/jit/passes/remove_mutation.h>
#include <zlib.h>

#include <cmath>
#include <unordered_map>
#include <unordered_set>
#include <utility>

namespace cleave::split::int8_graph {
namespace {

using torch::jit::Node;
using torch::jit::Value;

c10::Symbol QgSymbol(const char* qualified) { return c10::Symbol::fromQualString(qualified); }

bool QgIsTensor(const Value* v) { return v->type()->isSubtypeOf(*c10::TensorType::get()); }

// Ops that read only a tensor's metadata: they may see the int8 tensor itself, and they do
// not keep an op from merging into the one before it (scripted nn.BatchNorm2d checks its
// input's dim() before it normalizes).
bool QgReadsShapeOnly(const Node* n) {
  return n->kind() == c10::aten::size || n->kind() == c10::aten::dim ||
         n->kind() == QgSymbol("aten::numel");
}

// The only node reading `v`'s values (readers of its shape aside), or null when several do,
// none does or `v` is a graph output.
Node* QgSoleUser(const Value* v) {
  Node* sole = nullptr;
  for (const torch::jit::Use& use : v->uses()) {
    if (use.user->kind() == c10::prim::Return) return nullptr;
    if (QgReadsShapeOnly(use.user)) continue;
    if (sole != nullptr) return nullptr;
    sole = use.user;
  }
  return sole;
}

c10::optional<torch::Tensor> QgConstFloatTensor(const Value* v) {
  const c10::optional<c10::IValue> value = torch::jit::toIValue(v);
  if (!value || !value->isTensor()) return c10::nullopt;
  const torch::Tensor& t = value->toTensor();
  if (t.scalar_type() != torch::kFloat || !t.device().is_cpu() || t.layout() != torch::kStrided) {
    return c10::nullopt;
  }
  return t;
}

// A constant optional tensor: nullopt when not constant, an undefined tensor for None.
c10::optional<torch::Tensor> QgConstOptionalTensor(const Value* v) {
  const c10::optional<c10::IValue> value = torch::jit::toIValue(v);
  if (value && value->isNone()) return torch::Tensor();
  return QgConstFloatTensor(v);
}

c10::optional<std::vector<int64_t>> QgConstIntList(const Value* v, size_t size) {
  const c10::optional<c10::IValue> value = torch::jit::toIValue(v);
  if (!value || !value->isIntList()) return c10::nullopt;
  std::vector<int64_t> list = value->toIntVector();
  if (list.size() == 1) list.resize(size, list[0]);  // int[2] accepts one value for both
  if (list.size() != size) return c10::nullopt;
  return list;
}

c10::optional<double> QgConstNumber(const Value* v) {
  const c10::optional<c10::IValue> value = torch::jit::toIValue(v);
  if (!value) return c10::nullopt;
  if (value->isDouble()) return value->toDouble();
  if (value->isInt()) return static_cast<double>(value->toInt());
  return c10::nullopt;
}

c10::optional<bool> QgConstBool(const Value* v) {
  const c10::optional<c10::IValue> value = torch::jit::toIValue(v);
  if (!value || !value->isBool()) return c10::nullopt;
  return value->toBool();
}

std::string QgShape(c10::IntArrayRef sizes) {
  std::string text;
  for (const int64_t s : sizes) text += (text.empty() ? "" : "x") + std::to_string(s);
  return text;
}

std::string QgInts(const std::vector<int64_t>& values) {
  std::string text;
  for (const int64_t v : values) text += (text.empty() ? "" : ",") + std::to_string(v);
  return text;
}

// The name the report uses for a node's op: "sigmoid" for aten::sigmoid, "ns::op" otherwise.
std::string QgOpName(const Node* n) {
  const c10::Symbol kind = n->kind();
  if (kind.is_aten()) return kind.toUnqualString();
  return kind.toQualString();
}

// conv2d (or a traced non-transposed 2-D _convolution) with constant weights and arguments.
struct QgConvMatch {
  torch::Tensor weight, bias;  // bias undefined for none
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups = 1;
};

c10::optional<QgConvMatch> QgMatchConv(const Node* n) {
  const bool conv2d = n->kind() == c10::aten::conv2d && n->inputs().size() == 7;
  const bool traced = n->kind() == c10::aten::_convolution && n->inputs().size() >= 9;
  if (!conv2d && !traced) return c10::nullopt;
  if (traced && QgConstBool(n->input(6)) != c10::optional<bool>(false)) return c10::nullopt;
  QgConvMatch m;
  const c10::optional<torch::Tensor> weight = QgConstFloatTensor(n->input(1));
  const c10::optional<torch::Tensor> bias = QgConstOptionalTensor(n->input(2));
  auto stride = QgConstIntList(n->input(3), 2);
  auto padding = QgConstIntList(n->input(4), 2);  // str for padding='same': no match
  auto dilation = QgConstIntList(n->input(5), 2);
  const c10::optional<double> groups = QgConstNumber(n->input(traced ? 8 : 6));
  if (!weight || weight->dim() != 4 || !bias || !stride || !padding || !dilation || !groups) {
    return c10::nullopt;
  }
  if (bias->defined() && (bias->dim() != 1 || bias->size(0) != weight->size(0))) {
    return c10::nullopt;
  }
  m.weight = *weight;
  m.bias = *bias;
  m.stride = *stride;
  m.padding = *padding;
  m.dilation = *dilation;
  m.groups = static_cast<int64_t>(*groups);
  return m;
}

// Eval-mode aten::batch_norm with constant statistics and parameters.
struct QgBatchNormMatch {
  torch::Tensor weight, bias, mean, var;  // weight/bias filled with 1/0 when absent
  double eps = 0;
};

c10::optional<QgBatchNormMatch> QgMatchBatchNorm(const Node* n) {
  if (n->kind() != c10::aten::batch_norm || n->inputs().size() != 9) return c10::nullopt;
  if (QgConstBool(n->input(5)) != c10::optional<bool>(false)) return c10::nullopt;  // training
  const auto weight = QgConstOptionalTensor(n->input(1));
  const auto bias = QgConstOptionalTensor(n->input(2));
  const auto mean = QgConstFloatTensor(n->input(3));
  const auto var = QgConstFloatTensor(n->input(4));
  const auto eps = QgConstNumber(n->input(7));
  if (!weight || !bias || !mean || !var || !eps || mean->dim() != 1 ||
      var->sizes() != mean->sizes()) {
    return c10::nullopt;
  }
  QgBatchNormMatch m;
  m.mean = *mean;
  m.var = *var;
  m.weight = weight->defined() ? *weight : torch::ones_like(*mean);
  m.bias = bias->defined() ? *bias : torch::zeros_like(*mean);
  m.eps = *eps;
  if (m.weight.sizes() != m.mean.sizes() || m.bias.sizes() != m.mean.sizes()) return c10::nullopt;
  return m;
}

// relu, relu6 or hardtanh(0, b > 0) as the only reader of `v`: an activation to fuse.
struct QgClampMatch {
  Node* node = nullptr;
  FusedClamp clamp = FusedClamp::kNone;
  double max = 0;
};

QgClampMatch QgMatchClamp(const Value* v) {
  Node* user = QgSoleUser(v);
  if (user == nullptr || user->input(0) != v) return {};
  if (user->kind() == c10::aten::relu && user->inputs().size() == 1) {
    return {user, FusedClamp::kRelu, 0};
  }
  if (user->kind() == QgSymbol("aten::relu6") && user->inputs().size() == 1) {
    return {user, FusedClamp::kHardtanh, 6.0};
  }
  if (user->kind() == c10::aten::hardtanh && user->inputs().size() == 3) {
    const c10::optional<double> lo = QgConstNumber(user->input(1));
    const c10::optional<double> hi = QgConstNumber(user->input(2));
    if (lo && hi && *lo == 0.0 && *hi > 0.0) return {user, FusedClamp::kHardtanh, *hi};
  }
  return {};
}

std::string QgClampName(const QgClampMatch& c) {
  return c.clamp == FusedClamp::kRelu ? "relu(fused)" : "hardtanh(fused)";
}

std::string QgClampToken(const QgClampMatch& c) {
  if (c.clamp == FusedClamp::kNone) return "";
  if (c.clamp == FusedClamp::kRelu) return "+relu";
  return "+clamp(0," + std::to_string(c.max) + ")";
}

// Ops that compute a tensor from an int8 tensor without new values outside its range, which
// libtorch runs on quantized tensors keeping the input's scale and zero point.
bool QgKeepsScale(const Node* n) {
  static const std::unordered_set<c10::Symbol> kinds = {
      c10::aten::relu,       c10::aten::hardtanh,   QgSymbol("aten::relu6"),
      c10::aten::max_pool2d, c10::aten::avg_pool2d, c10::aten::adaptive_avg_pool2d,
      c10::aten::flatten,    c10::aten::reshape,    c10::aten::view,
      c10::aten::contiguous};
  return kinds.count(n->kind()) > 0;
}

// fp32 ops whose MACs the report counts.
bool QgCountsMacs(const Node* n) {
  const c10::Symbol k = n->kind();
  return k == c10::aten::conv1d || k == c10::aten::conv2d || k == c10::aten::conv3d ||
         k == c10::aten::_convolution || k == c10::aten::linear || k == c10::aten::matmul;
}

// conv -> max_pool2d -> BatchNorm [-> relu] becomes conv -> BatchNorm [-> relu] ->
// max_pool2d when every BatchNorm scale g / sqrt(v + eps) is positive, so the BatchNorm folds
// into the conv and the ReLU fuses. Exact: an increasing per-channel map (and ReLU) commutes
// with max, and float rounding is monotonic, so the same element wins every window.
// (Models pool first to make the BatchNorm cheaper in training, as the Fashion-MNIST example.)
void QgHoistBatchNormAbovePools(torch::jit::Graph& graph) {
  std::vector<Node*> pools;
  for (Node* n : graph.nodes()) {
    if (n->kind() == c10::aten::max_pool2d) pools.push_back(n);
  }
  for (Node* pool : pools) {
    Node* conv = pool->input(0)->node();
    Node* bn_node = QgSoleUser(pool->output());
    if (!QgMatchConv(conv) || QgSoleUser(conv->output()) != pool || bn_node == nullptr ||
        bn_node->input(0) != pool->output()) {
      continue;
    }
    const c10::optional<QgBatchNormMatch> bn = QgMatchBatchNorm(bn_node);
    if (!bn || !(bn->weight / torch::sqrt(bn->var + bn->eps) > 0).all().item<bool>()) continue;
    Node* last = bn_node;
    if (Node* relu = QgSoleUser(bn_node->output());
        relu != nullptr && relu->kind() == c10::aten::relu && relu->inputs().size() == 1) {
      last = relu;
    }
    for (Value* input : bn_node->inputs()) {  // its constants, wherever they are
      if (input != pool->output() && !input->node()->isBefore(conv)) {
        input->node()->moveBefore(conv);
      }
    }
    last->output()->replaceAllUsesWith(pool->output());
    bn_node->replaceInput(0, conv->output());
    pool->replaceInput(0, last->output());
    bn_node->moveAfter(conv);
    if (last != bn_node) last->moveAfter(bn_node);
    pool->moveAfter(last);
  }
}

uint32_t QgCrc(uint32_t crc, const void* data, size_t size) {
  return static_cast<uint32_t>(
      crc32(crc, static_cast<const Bytef*>(data), static_cast<uInt>(size)));
}

class QgPlanBuilder {
 public:
  explicit QgPlanBuilder(Int8GraphState& state) : s_(state) {}

  Status Build() {
    const std::shared_ptr<torch::jit::Graph>& graph = s_.graph;
    if (graph->inputs().size() != 2 || !QgIsTensor(graph->inputs()[1])) {
      return Status::Unimplemented("int8 graph head: forward must take exactly one tensor");
    }
    if (!graph->inputs()[0]->uses().empty()) {
      return Status::Unimplemented(
          "int8 graph head: the frozen forward still reads the module (an attribute freezing "
          "could not inline)");
    }
    if (graph->outputs().size() != 1 || !QgIsTensor(graph->outputs()[0])) {
      return Status::Unimplemented("int8 graph head: forward must return exactly one tensor");
    }
    crc_ = QgCrc(0, nullptr, 0);
    s_.input_slot = NewSlot();
    float_slot_[graph->inputs()[1]] = s_.input_slot;
    for (Node* n : graph->nodes()) {
      if (absorbed_.count(n)) continue;
      CLEAVE_RETURN_IF_ERROR(Visit(n));
    }
    s_.output_slot = FloatSlot(graph->outputs()[0]);
    s_.layout += "out;acts=" + std::to_string(s_.acts.size());
    s_.fp32_crc32 = crc_;
    return Status::Ok();
  }

 private:
  Status Visit(Node* n) {
    if (n->kind() == c10::prim::Constant) {
      const c10::optional<c10::IValue> value = torch::jit::toIValue(n->output());
      if (!value) return Status::Unimplemented("int8 graph head: a constant without a value");
      float_slot_[n->output()] = NewSlot(*value);
      return Status::Ok();
    }
    if (n->kind() == c10::prim::If) return VisitIf(n);
    if (!n->blocks().empty()) {
      return Status::Unimplemented("int8 graph head: the head uses control flow (" +
                                   std::string(n->kind().toQualString()) +
                                   "); export the head without loops or branches");
    }
    Fingerprint(n);
    if (TryConv(n) || TryLinear(n) || TryAdd(n) || TryBatchNorm(n) || TryHardswish(n) ||
        TryKeepScale(n)) {
      return Status::Ok();
    }
    return AddFloatOp(n);
  }

  // prim::If without outputs whose branches are empty or raise: an assertion (scripted
  // functional code checks input sizes this way). Anything else is control flow.
  Status VisitIf(Node* n) {
    bool raises[2] = {false, false};
    std::string message = "an assertion in the head's graph failed";
    bool assertion = n->outputs().empty() && n->blocks().size() == 2;
    for (size_t b = 0; assertion && b < 2; ++b) {
      const torch::jit::Block* block = n->blocks()[b];
      for (const Node* inner : block->nodes()) {
        if (inner->kind() != c10::prim::RaiseException) continue;
        raises[b] = true;
        const c10::optional<c10::IValue> text = torch::jit::toIValue(inner->input(0));
        if (text && text->isString()) message += ": " + text->toStringRef();
      }
      assertion = raises[b] || block->nodes().begin() == block->nodes().end();
    }
    if (!assertion) {
      return Status::Unimplemented(
          "int8 graph head: the head branches (prim::If with outputs or side effects); export "
          "the head without data-dependent control flow");
    }
    if (!raises[0] && !raises[1]) return Status::Ok();
    int8_graph::Step step;
    step.kind = StepKind::kAssert;
    step.inputs = {FloatSlot(n->input(0))};
    step.raise_if_true = raises[0];
    step.raise_if_false = raises[1];
    step.assert_message = message;
    step.node = n;
    AddStep(std::move(step), "assert");
    return Status::Ok();
  }

  bool TryConv(Node* n) {
    c10::optional<QgConvMatch> conv = QgMatchConv(n);
    if (!conv) return false;
    const int64_t out_channels = conv->weight.size(0);
    if (conv->groups < 1 || out_channels % conv->groups != 0) return false;
    QWeights w;
    w.weight_float = conv->weight.contiguous().clone();
    w.bias = conv->bias.defined() ? conv->bias.clone() : torch::zeros({out_channels});
    std::string token = "conv:" + QgShape(w.weight_float.sizes()) + ",s" + QgInts(conv->stride) +
                        ",p" + QgInts(conv->padding) + ",d" + QgInts(conv->dilation) + ",g" +
                        std::to_string(conv->groups);
    const int report = AddReport("conv2d", true);
    Value* result = n->output();
    std::vector<Value*> merged;  // values the step's output stands for, besides `result`
    if (Node* user = QgSoleUser(result)) {
      const c10::optional<QgBatchNormMatch> bn = QgMatchBatchNorm(user);
      if (bn && user->input(0) == result && bn->mean.size(0) == out_channels) {
        // Jacob et al. 2018, section 3.2: W' = W * g / sqrt(v + eps), b' = (b - m) * g /
        // sqrt(v + eps) + beta, with the running statistics (eval mode).
        const torch::Tensor scale = bn->weight / torch::sqrt(bn->var + bn->eps);
        w.weight_float = (w.weight_float * scale.view({-1, 1, 1, 1})).contiguous();
        w.bias = (w.bias - bn->mean) * scale + bn->bias;
        Absorb(user);
        AddReport("batch_norm(folded)", true);
        token += "+bn";
        merged.push_back(result);
        result = user->output();
      }
    }
    const QgClampMatch clamp = QgMatchClamp(result);
    int8_graph::Step step;
    step.kind = StepKind::kConv;
    step.inputs = {QuantSlot(n->input(0))};
    step.stride = conv->stride;
    step.padding = conv->padding;
    step.dilation = conv->dilation;
    step.groups = conv->groups;
    step.report_op = report;
    FinishProducer(std::move(step), std::move(w), clamp, result, token, std::move(merged));
    return true;
  }

  bool TryLinear(Node* n) {
    if (n->kind() != c10::aten::linear || n->inputs().size() != 3) return false;
    const c10::optional<torch::Tensor> weight = QgConstFloatTensor(n->input(1));
    const c10::optional<torch::Tensor> bias = QgConstOptionalTensor(n->input(2));
    if (!weight || weight->dim() != 2 || !bias) return false;
    if (bias->defined() && bias->sizes() != torch::IntArrayRef({weight->size(0)})) return false;
    QWeights w;
    w.weight_float = weight->contiguous().clone();
    w.bias = bias->defined() ? bias->clone() : torch::zeros({weight->size(0)});
    const int report = AddReport("linear", true);
    int8_graph::Step step;
    step.kind = StepKind::kLinear;
    step.inputs = {QuantSlot(n->input(0))};
    step.report_op = report;
    FinishProducer(std::move(step), std::move(w), QgMatchClamp(n->output()), n->output(),
                   "linear:" + QgShape(weight->sizes()));
    return true;
  }

  // add(a, b, alpha=1) of two tensors, one of them int8 already (an add of two float
  // tensors stays fp32: quantizing both only to add them gains nothing).
  bool TryAdd(Node* n) {
    if (n->kind() != c10::aten::add || n->inputs().size() != 3) return false;
    if (!QgIsTensor(n->input(0)) || !QgIsTensor(n->input(1))) return false;
    if (QgConstNumber(n->input(2)) != c10::optional<double>(1.0)) return false;
    if (!HasQuant(n->input(0)) && !HasQuant(n->input(1))) return false;
    AddReport("add", true);
    int8_graph::Step step;
    step.kind = StepKind::kAdd;
    step.inputs = {QuantSlot(n->input(0)), QuantSlot(n->input(1))};
    FinishProducer(std::move(step), c10::nullopt, QgMatchClamp(n->output()), n->output(), "add");
    return true;
  }

  // A BatchNorm that could not be folded (no conv right before it) on an int8 tensor.
  bool TryBatchNorm(Node* n) {
    const c10::optional<QgBatchNormMatch> bn = QgMatchBatchNorm(n);
    if (!bn || !HasQuant(n->input(0))) return false;
    AddReport("batch_norm", true);
    int8_graph::Step step;
    step.kind = StepKind::kBatchNorm;
    step.inputs = {QuantSlot(n->input(0))};
    step.bn_weight = bn->weight;
    step.bn_bias = bn->bias;
    step.bn_mean = bn->mean;
    step.bn_var = bn->var;
    step.bn_eps = bn->eps;
    FinishProducer(std::move(step), c10::nullopt, QgMatchClamp(n->output()), n->output(),
                   "bn:" + std::to_string(bn->mean.size(0)));
    return true;
  }

  bool TryHardswish(Node* n) {
    if (n->kind() != c10::aten::hardswish || n->inputs().size() != 1) return false;
    if (!HasQuant(n->input(0))) return false;
    AddReport("hardswish", true);
    int8_graph::Step step;
    step.kind = StepKind::kHardswish;
    step.inputs = {QuantSlot(n->input(0))};
    FinishProducer(std::move(step), c10::nullopt, QgClampMatch{}, n->output(), "hardswish");
    return true;
  }

  bool TryKeepScale(Node* n) {
    if (!QgKeepsScale(n) || n->outputs().size() != 1 || !HasQuant(n->input(0))) return false;
    for (size_t i = 1; i < n->inputs().size(); ++i) {
      if (QgIsTensor(n->input(i))) return false;
    }
    int8_graph::Step step;
    step.kind = StepKind::kKeepScale;
    step.node = n;
    step.operation = n->getOperation();
    step.view_needs_contiguous = n->kind() == c10::aten::view;
    const int in = QuantSlot(n->input(0));
    step.inputs = {in};
    for (size_t i = 1; i < n->inputs().size(); ++i) step.inputs.push_back(FloatSlot(n->input(i)));
    step.act = slot_act_[in];
    const int out = NewSlot();
    slot_act_[out] = step.act;
    step.outputs = {out};
    quant_slot_[n->output()] = out;
    AddReport(QgOpName(n), true);
    AddStep(std::move(step), std::string("keep:") + n->kind().toQualString());
    return true;
  }

  Status AddFloatOp(Node* n) {
    const c10::FunctionSchema* schema = n->maybeSchema();
    if (schema != nullptr && schema->is_mutable()) {
      return Status::Unimplemented("int8 graph head: " + std::string(n->kind().toQualString()) +
                                   " writes into a tensor in place where it cannot be made "
                                   "functional; use the out-of-place op");
    }
    int8_graph::Step step;
    step.kind = StepKind::kFloatOp;
    step.node = n;
    try {
      step.operation = n->getOperation();
    } catch (const c10::Error&) {
      return Status::Unimplemented("int8 graph head: " + std::string(n->kind().toQualString()) +
                                   " has no operator libtorch can run outside its interpreter");
    }
    for (Value* input : n->inputs()) {
      const bool keep_int8 = QgReadsShapeOnly(n) && HasQuant(input) && !float_slot_.count(input);
      step.inputs.push_back(keep_int8 ? quant_slot_.at(input) : FloatSlot(input));
    }
    bool tensor_out = false;
    for (Value* output : n->outputs()) {
      const int slot = NewSlot();
      float_slot_[output] = slot;
      step.outputs.push_back(slot);
      tensor_out = tensor_out || QgIsTensor(output);
    }
    if (tensor_out && !n->kind().is_prim()) {
      const int report = AddReport(QgOpName(n), false);
      if (QgCountsMacs(n)) step.report_op = report;
    }
    AddStep(std::move(step), std::string("f:") + n->kind().toQualString());
    return Status::Ok();
  }

  // Appends a step that makes a new int8 tensor (its own range), with `clamp` fused. Its
  // output is `result` (the clamp's output if one is fused); the `merged` values before it
  // (a conv's output before its folded BatchNorm) are read only by shape queries, which
  // the output serves as well.
  void FinishProducer(int8_graph::Step step, c10::optional<QWeights> weights,
                      const QgClampMatch& clamp, Value* result, std::string token,
                      std::vector<Value*> merged = {}) {
    if (clamp.node != nullptr) {
      merged.push_back(result);
      Absorb(clamp.node);
      AddReport(QgClampName(clamp), true);
      result = clamp.node->output();
      step.clamp = clamp.clamp;
      step.clamp_max = clamp.max;
    }
    if (weights) {
      step.weights = static_cast<int>(s_.weights.size());
      s_.weights.push_back(std::move(*weights));
    }
    step.act = NewAct(clamp.clamp != FusedClamp::kNone);
    const int out = NewSlot();
    slot_act_[out] = step.act;
    step.outputs = {out};
    quant_slot_[result] = out;
    for (Value* value : merged) quant_slot_[value] = out;
    AddStep(std::move(step), token + QgClampToken(clamp));
  }

  void Absorb(Node* n) {
    Fingerprint(n);
    absorbed_.insert(n);
  }

  // Folds the constants a node reads into the fp32 fingerprint, in graph order.
  void Fingerprint(const Node* n) {
    for (const Value* input : n->inputs()) {
      const c10::optional<c10::IValue> value = torch::jit::toIValue(input);
      if (!value) continue;
      if (value->isTensor()) {
        const torch::Tensor t = value->toTensor().contiguous();
        const std::vector<int64_t> sizes = t.sizes().vec();
        crc_ = QgCrc(crc_, sizes.data(), sizes.size() * sizeof(int64_t));
        crc_ = QgCrc(crc_, t.data_ptr(), t.numel() * t.element_size());
      } else if (value->isDouble()) {
        const double d = value->toDouble();
        crc_ = QgCrc(crc_, &d, sizeof d);
      } else if (value->isInt()) {
        const int64_t i = value->toInt();
        crc_ = QgCrc(crc_, &i, sizeof i);
      } else if (value->isIntList()) {
        const std::vector<int64_t> list = value->toIntVector();
        crc_ = QgCrc(crc_, list.data(), list.size() * sizeof(int64_t));
      } else {
        const std::string text = value->tagKind();
        crc_ = QgCrc(crc_, text.data(), text.size());
      }
    }
  }

  bool HasQuant(const Value* v) const { return quant_slot_.count(v) > 0; }

  // The int8 form of `v`, quantizing it (with a range of its own) if it has none yet.
  int QuantSlot(Value* v) {
    if (const auto it = quant_slot_.find(v); it != quant_slot_.end()) return it->second;
    int8_graph::Step step;
    step.kind = StepKind::kQuantize;
    step.inputs = {FloatSlot(v)};
    step.act = NewAct(false);
    const int out = NewSlot();
    slot_act_[out] = step.act;
    step.outputs = {out};
    quant_slot_[v] = out;
    ++s_.report.quantize_steps;
    AddStep(std::move(step), "q");
    return out;
  }

  // The float (or non-tensor) form of `v`, dequantizing it if it is int8 only.
  int FloatSlot(Value* v) {
    if (const auto it = float_slot_.find(v); it != float_slot_.end()) return it->second;
    int8_graph::Step step;
    step.kind = StepKind::kDequantize;
    step.inputs = {quant_slot_.at(v)};  // every value has a slot by graph order
    const int out = NewSlot();
    step.outputs = {out};
    float_slot_[v] = out;
    ++s_.report.dequantize_steps;
    AddStep(std::move(step), "dq");
    return out;
  }

  int NewSlot(c10::IValue initial = c10::IValue()) {
    s_.initial_slots.push_back(std::move(initial));
    slot_act_.push_back(-1);
    return static_cast<int>(s_.initial_slots.size()) - 1;
  }

  int NewAct(bool zero_based) {
    s_.acts.emplace_back();
    s_.act_zero_based.push_back(zero_based);
    return static_cast<int>(s_.acts.size()) - 1;
  }

  int AddReport(const std::string& kind, bool int8) {
    s_.report.ops.push_back(QuantizedOpInfo{kind, int8, 0});
    return static_cast<int>(s_.report.ops.size()) - 1;
  }

  void AddStep(int8_graph::Step step, const std::string& token) {
    s_.steps.push_back(std::move(step));
    s_.layout += token + ";";
  }

  Int8GraphState& s_;
  std::unordered_map<const Value*, int> float_slot_, quant_slot_;
  std::vector<int> slot_act_;  // per slot: the act of an int8 slot, -1 for the others
  std::unordered_set<const Node*> absorbed_;
  uint32_t crc_ = 0;
};

}  // namespace

Result<std::unique_ptr<Int8GraphState>> BuildPlan(const torch::jit::Module& head) {
  auto state = std::make_unique<Int8GraphState>();
  // A deep copy (tensors too): freezing turns attributes into constants that would
  // otherwise alias the caller's parameters, and eval() must not touch the caller's module.
  state->frozen = head.clone();
  state->frozen.eval();
  torch::jit::freeze_module_inplace(&state->frozen);
  state->graph = state->frozen.get_method("forward").graph();
  torch::jit::removeDropout(state->graph);
  torch::jit::RemoveListMutation(state->graph);
  torch::jit::RemoveTensorMutation(state->graph);
  torch::jit::ConstantPropagation(state->graph);
  torch::jit::EliminateDeadCode(state->graph);
  QgHoistBatchNormAbovePools(*state->graph);
  CLEAVE_RETURN_IF_ERROR(QgPlanBuilder(*state).Build());
  return state;
}

}  // namespace cleave::split::int8_graph
