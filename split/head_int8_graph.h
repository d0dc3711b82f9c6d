// Post-training int8 quantization of an imported TorchScript head (the edge side that
// TorchScriptModel::ExtractHead cuts off a user's model), built on the TorchScript IR.
//
// libtorch 1.13's C++ API has no FX graph-mode quantization, so this is a small graph-mode
// quantizer of its own. Quantize takes a deep copy of the head, freezes it
// (torch::jit::freeze_module: attributes become constants, methods are inlined), makes
// in-place ops functional and drops eval-mode dropout, then walks the graph once and builds
// an executable plan (split/head_int8_plan.h):
//
//   int8 (libtorch's quantized kernels)      conv2d (any stride/padding/dilation/groups,
//                                            BatchNorm folded, ReLU or ReLU6 fused), linear
//                                            (ReLU/ReLU6 fused), add of two tensors (ReLU
//                                            fused), BatchNorm that cannot be folded,
//                                            hardswish;
//   int8 when their input is int8            relu, hardtanh/ReLU6, max_pool2d, avg_pool2d,
//   (they keep their input's scale)          adaptive_avg_pool2d, flatten, reshape, view,
//                                            contiguous;
//   fp32 for everything else                 the op runs as the graph says, through its own
//                                            torch::jit::Operation (Node::getOperation()) on
//                                            a Stack, on dequantized inputs; its output is
//                                            quantized again only where an int8 op reads it.
//
// A BatchNorm (and a ReLU after it) that follows conv -> max_pool2d moves before the pool
// when all its scales are positive, which is exact (max commutes with increasing maps), and
// then folds into the conv. Shape queries (dim, size) do not keep ops from merging.
//
// Scheme (Jacob et al. 2018; Krishnamoorthi 2018): weights symmetric int8 per output channel
// (zero point 0, q in [-127, 127]) with fp32 biases, as split/int8_ops.h; activations
// per-tensor affine uint8. Quantize/dequantize placement follows Nagel et al. 2021 ("A White
// Paper on Neural Network Quantization", section 2.3): BatchNorm is folded into the conv
// before it, an activation function is fused into the op that produces its input (the
// quantizer sits after the ReLU, so ReLU outputs use the whole [0, 255] range), every
// int8 op that computes new values (conv, linear, add, standalone BatchNorm, hardswish)
// requantizes its output with its own observed range, and ops that only move or select
// values (pooling, flatten, ReLU on an int8 tensor) keep their input's quantization. A
// float tensor is quantized right before the first int8 op that reads it (the graph input,
// or the output of an fp32 island); an int8 tensor is dequantized before an fp32 op reads
// it and at the graph output.
//
// Activation ranges: min/max over the calibration inputs, widened to include 0 (so
// zero-padding is exact), as split/int8_calibration.h, where percentile and MSE clipping
// were measured on cleave's own head and did no better. Ranges are observed in fp32 with the
// fp32 (BN-folded) weights.
//
// Engines, as split/int8_head.h: "onednn" and "qnnpack" run libtorch's quantized kernels;
// "reference" runs the same plan in fp32 with dequantized weights and quantize-dequantize
// (fake-quant) at every quantization point, and is always available. The quantized engine
// is process-global libtorch state: Forward sets it for the call and restores it, so heads
// using different engines must not run concurrently. An Int8GraphHead serves one caller at
// a time; it owns its frozen copy of the head and keeps no reference to the module it was
// made from. A moved-from head answers FailedPrecondition.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/script.h>
#include <nlohmann/json.hpp>

#include "common/status.h"

namespace cleave::split {

// One op of the head's graph as the int8 plan runs it.
struct QuantizedOpInfo {
  // "conv2d", "linear", "add", "relu", "hardtanh", "hardswish", "max_pool2d", "avg_pool2d",
  // "adaptive_avg_pool2d", "flatten", "reshape", "view", "batch_norm"; "batch_norm(folded)",
  // "relu(fused)" and "hardtanh(fused)" for ops merged into the op before them; any other
  // aten op by its name without "aten::" ("sigmoid", "mul"), other namespaces in full
  // ("my_ops::gelu").
  std::string kind;
  bool int8 = false;  // ran on int8 tensors with libtorch's quantized kernels
  // Multiply-accumulates per input item (batch 1) of conv2d, linear and matmul ops, int8
  // or not, measured on the calibration inputs; 0 for every other op.
  int64_t macs = 0;
};

// Which ops ran in int8. `ops` lists every graph node that produces a tensor, except prim::
// nodes (constants, lists, tuples) and shape queries, in graph order.
struct HeadInt8Report {
  std::vector<QuantizedOpInfo> ops;
  double int8_ops_fraction = 0;   // ops with int8 == true / ops.size() (0 without ops)
  double int8_macs_fraction = 0;  // MACs of int8 ops / all MACs (0 without MACs)
  int quantize_steps = 0;         // float -> int8 conversions the plan inserted
  int dequantize_steps = 0;       // int8 -> float conversions, the output's included
  // {"ops": [{"kind", "int8", "macs"}...], "int8_ops_fraction", "int8_macs_fraction",
  //  "int8_ops", "total_ops", "int8_macs", "total_macs", "quantize_steps",
  //  "dequantize_steps"}
  nlohmann::json ToJson() const;
};

struct Int8GraphState;  // the frozen graph, the plan, weights and ranges (head_int8_plan.h)

class Int8GraphHead {
 public:
  // Quantizes `head`, a TorchScript module whose forward takes one float tensor [N, C, H, W]
  // (already in the form the model expects: if it normalizes, it does so itself) and
  // returns one tensor (a feature map or features). `head` is only read: its clone is put
  // in eval mode and frozen; the caller's module, its mode and its weights stay as they
  // were. `calibration_inputs` is float32 [N >= 1, C, H, W] on the CPU with finite values;
  // activation ranges are observed on it (64 items per forward), and its item shape
  // [C, H, W] becomes the only input shape Forward accepts.
  // Errors: InvalidArgument for calibration inputs of the wrong rank, dtype, device or
  // values, or when the head fails on them (its message names the failing op);
  // Unimplemented for a head the plan cannot run (control flow other than assertions,
  // several inputs or outputs, a non-tensor output, in-place ops that cannot be made
  // functional). The returned head uses the "reference" engine until SelectEngine.
  static Result<Int8GraphHead> Quantize(const torch::jit::Module& head,
                                        const torch::Tensor& calibration_inputs);

  // Same contract as head.forward(x): float32 in, float32 out (int8 outputs dequantized,
  // contiguous). `x` must be float32 [N >= 1, C, H, W] with the calibrated [C, H, W], on the
  // CPU, finite, else InvalidArgument; a failure inside the head's own ops (an assertion in
  // its graph) is InvalidArgument too. `x` is not modified. Never throws.
  // Not thread-safe: one caller at a time.
  Result<torch::Tensor> Forward(const torch::Tensor& x);

  // The ops of the plan and which ran int8 (fixed by Quantize; Deserialize restores it).
  const HeadInt8Report& report() const;
  // The [C, H, W] the head was calibrated on and accepts.
  const std::vector<int64_t>& input_shape() const;

  // Bytes of what Serialize stores beyond the fp32 head: int8 weights, fp32 per-channel
  // scales and biases of every int8 conv and linear, and one fp32 scale + one uint8 zero
  // point per activation quantization point. fp32 ops (and the statistics of standalone
  // BatchNorms) are read from the fp32 head and not counted.
  int64_t WeightBytes() const;

  // "onednn" | "qnnpack" | "reference" | "auto", as Int8Head::SelectEngine: "auto" times
  // each available engine on a batch-1 input and keeps the fastest; unknown names are
  // InvalidArgument; engines this libtorch lacks are Unavailable; a failed prepack falls
  // back to "reference" and returns its error. Every call prepacks the kernels afresh:
  // oneDNN's packed convs keep the primitive built for the first input shape they run and
  // rebuild it on every call with another (on the Fashion-MNIST example's head, batch 1
  // took 1.5-2x longer once batch 32 had run first). So the first Forward after
  // SelectEngine (also "auto", which ends with a fresh prepack) should have the batch size
  // the head will mostly serve.
  Status SelectEngine(const std::string& engine);
  const std::string& engine() const;  // "" for a moved-from head
  // Per-engine batch-1 latency (ms) measured by the last SelectEngine("auto").
  const std::map<std::string, double>& engine_timings_ms() const;

  // What a bundle stores next to the fp32 head: the int8 weights, per-channel weight scales,
  // biases, activation ranges and the report, so the edge neither recalibrates nor
  // requantizes. Format in split/head_int8_serialization.h (Cap'n Proto list of blobs, JSON
  // header, CRC-32, version 1).
  Result<std::string> Serialize() const;
  // Rebuilds the head from `bytes` and the fp32 head they were made from, which the plan's
  // fp32 ops and layout come from. Errors: DataLoss (not this format, truncated, corrupt,
  // checksum mismatch, invalid scales), VersionMismatch (another format version),
  // InvalidArgument (`head_fp32` is not the head the bytes were quantized from: another
  // graph or other weights). The result uses the "reference" engine until SelectEngine;
  // run with the same engine, it computes exactly what the serialized head computed.
  static Result<Int8GraphHead> Deserialize(const std::string& bytes,
                                           const torch::jit::Module& head_fp32);

  Int8GraphHead(Int8GraphHead&&) noexcept;
  Int8GraphHead& operator=(Int8GraphHead&&) noexcept;
  Int8GraphHead(const Int8GraphHead&) = delete;
  Int8GraphHead& operator=(const Int8GraphHead&) = delete;
  ~Int8GraphHead();

 private:
  explicit Int8GraphHead(std::unique_ptr<Int8GraphState> state);
  Status SelectFastestEngine();
  std::unique_ptr<Int8GraphState> state_;
};

}  // namespace cleave::split
