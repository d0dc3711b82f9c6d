// Internals of Int8GraphHead (split/head_int8_graph.h): the plan built from a frozen
// TorchScript graph, and the three ways of running it. Not a public API: only the
// split/head_int8_*.cc files include this.
//
// A plan is a list of steps over numbered slots. A slot holds one value of the graph in one
// representation: a float tensor or any other IValue (a constant, an int list), or a uint8
// quantized tensor whose parameters are `acts[act]`. A graph value has at most one slot of
// each kind; the builder adds a kQuantize step where an int8 op reads a float value and a
// kDequantize step where an fp32 op (or the graph output) reads an int8 value, each once
// per value. Steps run in graph order; ops the builder merges into the step before them
// (a BatchNorm folded into its conv, a ReLU fused into its producer) have no step.
//
// The three runs (RunPlan):
//   kCalibrate  fp32 with the fp32 (BN-folded) weights, no quantization; the observer sees
//               every activation quantization point and the MACs of every conv/linear.
//   kReference  fp32 with the dequantized weights and fake-quant (quantize-dequantize) at
//               every quantization point: the "reference" engine.
//   kQuantized  libtorch's quantized kernels, reached through the dispatcher, under the
//               engine the caller set (int8::QEngineGuard) and prepacked for (PrepackKernels).
// Functions here throw c10::Error on libtorch failures; head_int8_graph.cc turns them into
// Status values.
#pragma once

#include <ATen/native/quantized/PackedParams.h>
#include <torch/csrc/jit/ir/ir.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/script.h>

#include "common/status.h"
#include "split/head_int8_graph.h"
#include "split/int8_ops.h"

namespace cleave::split {
namespace int8_graph {

enum class StepKind {
  kQuantize,    // float slot -> int8 slot with its own range
  kDequantize,  // int8 slot -> float slot (contiguous)
  kConv,        // int8 conv2d (BatchNorm folded), new range
  kLinear,      // int8 linear, new range
  kAdd,         // int8 add of two int8 tensors, new range
  kBatchNorm,   // int8 BatchNorm not after a conv (quantized::batch_norm), new range
  kHardswish,   // int8 hardswish (quantized::hardswish), new range
  kKeepScale,   // the node's own op on an int8 tensor; output keeps the input's range
  kFloatOp,     // the node's own op on float tensors / IValues
  kAssert,      // a prim::If whose taken branch raises: an assertion of the head's graph
};

// An activation merged into the op before it. The op's output range then starts at 0, so
// its zero point is 0 and uint8's lower clamp (q = 0) is exactly the ReLU; for hardtanh(0,
// b), observed ranges never exceed b, so the upper clamp (q = 255) is at most b.
enum class FusedClamp { kNone, kRelu, kHardtanh };

// Weights of an int8 conv or linear.
struct QWeights {
  torch::Tensor weight_q;      // int8 [out, in/groups, kh, kw] or [out, in]   (serialized)
  torch::Tensor weight_scale;  // float32 [out], symmetric per output channel (serialized)
  torch::Tensor bias;          // float32 [out], zeros when the op had none    (serialized)
  // Derived, not serialized: fp32 (BN-folded) weights during calibration, the dequantized
  // int8 weights afterwards; and the kernels prepacked for the selected engine.
  torch::Tensor weight_float;
  c10::intrusive_ptr<ConvPackedParamsBase<2>> conv_packed;
  c10::intrusive_ptr<LinearPackedParamsBase> linear_packed;
};

struct Step {
  StepKind kind = StepKind::kFloatOp;
  std::vector<int> inputs;   // slots read
  std::vector<int> outputs;  // slots written
  int act = -1;              // int8 output's quantization point (index into acts)
  FusedClamp clamp = FusedClamp::kNone;
  double clamp_max = 0;  // kHardtanh: the upper bound b
  int weights = -1;      // kConv, kLinear: index into Int8GraphState::weights
  std::vector<int64_t> stride, padding, dilation;     // kConv
  int64_t groups = 1;                                 // kConv
  torch::Tensor bn_weight, bn_bias, bn_mean, bn_var;  // kBatchNorm (fp32, from the graph)
  double bn_eps = 0;
  // kKeepScale, kFloatOp: the graph node and its operation; kAssert: the prim::If.
  torch::jit::Node* node = nullptr;
  // Its call operator is not const; running it changes no state of the plan.
  mutable torch::jit::Operation operation = nullptr;
  bool view_needs_contiguous = false;  // kKeepScale aten::view: int8 tensors are NHWC
  bool raise_if_true = false, raise_if_false = false;  // kAssert
  std::string assert_message;                          // kAssert
  int report_op = -1;  // index into report.ops whose MACs this step measures, or -1
};

}  // namespace int8_graph

struct Int8GraphState {
  // The frozen copy of the head. It owns the graph the steps' nodes point into.
  torch::jit::Module frozen;
  std::shared_ptr<torch::jit::Graph> graph;
  std::vector<c10::IValue> initial_slots;  // constants filled in, every other slot None
  int input_slot = -1;
  int output_slot = -1;
  std::vector<int8_graph::Step> steps;
  std::vector<int8_graph::QWeights> weights;  // in step order
  std::vector<int8::ActQuant> acts;           // every activation quantization point
  std::vector<bool> act_zero_based;           // the point follows a fused clamp: zero point 0
  std::vector<int64_t> input_shape;           // [C, H, W] of the calibration inputs
  HeadInt8Report report;
  // The plan as text (steps, weight shapes, fusions) and the CRC-32 of the frozen graph's
  // tensor constants: together they identify the fp32 head the plan was built from.
  std::string layout;
  uint32_t fp32_crc32 = 0;
  std::string engine = "reference";
  std::map<std::string, double> engine_timings_ms;
};

namespace int8_graph {

// Clones `head`, puts the clone in eval mode, freezes it, makes it functional and builds
// the plan: weights in fp32 (BN folded), no ranges yet (acts default), report kinds set.
// Unimplemented for graphs the plan cannot run (see head_int8_graph.h).
Result<std::unique_ptr<Int8GraphState>> BuildPlan(const torch::jit::Module& head);

enum class RunMode { kCalibrate, kReference, kQuantized };

// What kCalibrate reports: every activation quantization point's value, and the MACs
// (per input item) of conv and linear steps, int8 or fp32.
struct PlanObserver {
  std::function<void(int act, const torch::Tensor& value)> on_activation;
  std::function<void(int report_op, int64_t macs)> on_macs;
};

// Runs the plan on `x` ([N, C, H, W] float, already validated) and returns the output
// (float; the caller makes it contiguous). `observer` may be null except in kCalibrate.
torch::Tensor RunPlan(const Int8GraphState& state, RunMode mode, const torch::Tensor& x,
                      const PlanObserver* observer);

// Observes activation ranges and MACs on `inputs` (64 items per run), sets acts and the
// report's MACs and fractions, then quantizes the weights (weight_float becomes the
// dequantized weights). InvalidArgument if an activation is not finite.
Status CalibrateAndQuantize(Int8GraphState& state, const torch::Tensor& inputs);

// Recomputes weight_float from weight_q and weight_scale (after deserialization).
void DequantizeAllWeights(Int8GraphState& state);
// Prepacks every int8 conv and linear for the engine currently set (under a QEngineGuard).
void PrepackKernels(Int8GraphState& state);
void ClearPrepacked(Int8GraphState& state);

// Fills the report's int8_* fractions from its ops and the steps' conversion counts.
void FinishReport(Int8GraphState& state);

}  // namespace int8_graph
}  // namespace cleave::split
