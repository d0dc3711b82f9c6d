// Internals of Int8Head (split/int8_head.h): the quantized layer structures and the two ways
// of running them. Not a public API: only the split/int8_*.cc files include this, and
// split/head_int8_*.cc, which share its weight quantization, activation parameters and engine
// handling.
//
// Quantization scheme (Jacob et al. 2018): every conv has BatchNorm folded in, int8 weights
// symmetric per output channel (zero point 0, q in [-127, 127]) and an fp32 bias; every
// activation quantization point is per-tensor affine uint8, x ~ (q - zero_point) * scale.
// The points are: the preprocessed input, each conv output (after its ReLU when it has one,
// so ReLU outputs always have zero point 0), and each residual sum (after the ReLU of a "res"
// block). A "res" block's projection shortcut is a conv like the others; its identity
// shortcut adds the block's (already quantized) input. The exit (and classifier)
// tail, global average pooling + linear, reads the dequantized conv output, averages in fp32
// and applies int8 per-channel weights with an fp32 output: it is <0.1% of the head's MACs
// and requantizing the logits to uint8 would flip top-1 whenever two logits are closer than
// one quantization step.
//
// Engine facts measured on this libtorch 1.13 (Debian): both QNNPACK and oneDNN accept
// per-channel qint8 conv weights and any input/output zero point; quantized::add and the
// uint8 input quantization behave identically on both. oneDNN's quantized::conv2d_relu
// ignores a nonzero output zero point (it clamps at q = 0, i.e. at x = -zp * scale, not at
// x = 0): harmless here because ReLU outputs always get zero point 0, which calibration
// guarantees and the deserializer checks. Against the reference path, oneDNN matches to
// ~0.03% relative error, QNNPACK to ~0.3% (its requantization rounds differently).
//
// Functions here throw c10::Error on libtorch failures; int8_head.cc turns them into Status.
#pragma once

#include <ATen/native/quantized/PackedParams.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "common/status.h"
#include "split/vision_model.h"

namespace cleave::split {
namespace int8 {

inline constexpr int kWeightQMax = 127;  // symmetric int8 weights use [-127, 127]
inline constexpr int kActQMax = 255;     // uint8 activations use [0, 255]

// Per-tensor affine uint8 activation parameters: x ~ (q - zero_point) * scale.
struct ActQuant {
  float scale = 1.0f;
  int32_t zero_point = 0;
};

// Parameters covering [lo, hi] widened to include 0 (so zero is exact, as padding needs).
ActQuant ChooseActQuant(float lo, float hi);

// A conv with BatchNorm folded in; padding is kernel / 2, dilation 1, groups 1.
struct QConv {
  int in_channels = 0;
  int out_channels = 0;
  int kernel = 3;
  int stride = 1;
  bool relu = false;
  int out_act = -1;            // index into Int8HeadState::acts
  torch::Tensor weight_q;      // int8 [out, in, k, k]
  torch::Tensor weight_scale;  // float [out]
  torch::Tensor bias;          // float [out]
  // Derived, not serialized: fp32 weights the float path runs with (folded fp32 during
  // calibration, dequantized int8 afterwards) and the kernels prepacked for the engine.
  torch::Tensor weight_float;
  c10::intrusive_ptr<ConvPackedParamsBase<2>> packed;
};

// Global average pooling + linear with int8 per-output-channel weights and fp32 output.
struct QLinear {
  int in_features = 0;
  int out_features = 0;
  torch::Tensor weight_q;      // int8 [out, in]
  torch::Tensor weight_scale;  // float [out]
  torch::Tensor bias;          // float [out]
  torch::Tensor weight_float;  // derived, as in QConv
};

struct QBlock {
  enum class Kind { kConv, kFusedMB, kRes, kClassifier };
  Kind kind = Kind::kConv;
  // kConv: the conv; kFusedMB: the 3x3 expansion (with ReLU); kRes: the first 3x3 (with ReLU).
  QConv conv;
  // kFusedMB: the 1x1 projection; kRes: the second 3x3 (both without ReLU).
  QConv project;
  // kRes with a projection shortcut: the 1x1 conv with the block's stride (no ReLU).
  QConv shortcut;
  bool residual = false;             // kFusedMB: adds its input; kRes: always
  bool projection_shortcut = false;  // kRes: the shortcut is `shortcut`, not the input
  bool add_relu = false;             // kRes: ReLU after the sum (quantized::add_relu)
  int add_act = -1;                  // a residual sum's quantization point
  QLinear fc;                        // kClassifier
};

struct QExit {
  int after_block = 0;
  QConv conv;  // 3x3 stride 2 + BN + ReLU
  QLinear fc;
};

}  // namespace int8

struct Int8HeadState {
  int end_block = 0;
  std::string layout;  // the spec fields the head depends on, checked by Deserialize
  int input_channels = 1;
  int image_size = 28;
  int num_classes = 10;
  std::vector<float> input_mean{0.0f};  // as VisionModelSpec
  std::vector<float> input_std{1.0f};
  torch::Tensor mean_tensor, std_tensor;  // NormalizationTensor of the two
  int input_act = 0;
  std::vector<int8::ActQuant> acts;  // every activation quantization point
  std::vector<bool> act_after_relu;  // acts[i] is a ReLU output (zero point must be 0)
  std::vector<int8::QBlock> blocks;  // blocks [0, end_block)
  std::vector<int8::QExit> exits;    // ordered as ForwardWithExits emits their logits
  std::string engine = "reference";
  std::map<std::string, double> engine_timings_ms;
};

namespace int8 {

// The layer structure of blocks [0, end_block) of `spec` and their exits, without weights.
// InvalidArgument when end_block is outside [1, number of blocks] or the spec is invalid.
Result<Int8HeadState> BuildSkeleton(const VisionModelSpec& spec, int end_block);

// Calls `fn` on every conv / linear of the head in canonical (serialization) order: blocks in
// order (a Fused-MBConv's expansion then projection; a res block's conv1, conv2, then its
// projection shortcut if any), then the exits.
void ForEachConv(Int8HeadState& state, const std::function<void(QConv&)>& fn);
void ForEachLinear(Int8HeadState& state, const std::function<void(QLinear&)>& fn);
void ForEachConv(const Int8HeadState& state, const std::function<void(const QConv&)>& fn);
void ForEachLinear(const Int8HeadState& state, const std::function<void(const QLinear&)>& fn);

// The fp32 weights `weight_q` (int8 [out, ...]) with per-output-channel `weight_scale` encode.
torch::Tensor DequantizeWeight(const torch::Tensor& weight_q, const torch::Tensor& weight_scale);
// Quantizes `weight_float` ([out, ...]) to symmetric per-output-channel int8 and replaces
// `weight_float` with the dequantized weights.
void QuantizeWeights(torch::Tensor& weight_float, torch::Tensor& weight_q,
                     torch::Tensor& weight_scale);
// Recomputes every weight_float from weight_q and weight_scale.
void DequantizeAllWeights(Int8HeadState& state);

// Called at each activation quantization point with its index; returns what flows on.
using ActHook = std::function<torch::Tensor(int act, const torch::Tensor& x)>;

// Runs the head in fp32 with `weight_float`, calling `hook` at every quantization point.
// With dequantized weights and a fake-quant hook this is the "reference" engine.
SplitVisionNetImpl::Outputs ForwardFloat(const Int8HeadState& state, const torch::Tensor& images,
                                         const ActHook& hook);
// The reference engine: ForwardFloat with quantize-dequantize at every point.
SplitVisionNetImpl::Outputs ForwardReference(const Int8HeadState& state,
                                             const torch::Tensor& images);

// Whether this libtorch has the quantized engine ("onednn" | "qnnpack").
bool EngineSupported(const std::string& engine);

// Times an int8 head under each engine this libtorch has ("reference", then "onednn" and
// "qnnpack" when supported) and returns each working engine's best time in ms. `select`
// switches the head to an engine and `run` runs it once (false = failed; that engine is
// dropped). Engines take turns (`rounds` rounds of `runs` timed runs, after a warm-up run
// each turn) and each keeps its best run: on a shared machine a burst of other work then
// inflates some runs of every engine instead of all runs of whichever engine was timed.
std::map<std::string, double> TimeEngines(const std::function<bool(const std::string&)>& select,
                                          const std::function<bool()>& run, int rounds, int runs);
// Whether every value of `t` is finite and > 0 (scales read from bytes).
bool AllPositiveFinite(const torch::Tensor& t);
// Activation quantization points read back from bytes (`scale` float [K], `zero_point`
// uint8 [K], K = acts.size()), checked: DataLoss starting with `what` for a scale that is
// not finite and positive, or a nonzero zero point where `zero_based[i]` (the point follows a
// fused ReLU/clamp, which the kernels apply at q = 0: x = 0 only with zero point 0).
Status ReadActQuants(const torch::Tensor& scale, const torch::Tensor& zero_point,
                     const std::vector<bool>& zero_based, const std::string& what,
                     std::vector<ActQuant>& acts);
// The fastest engine of TimeEngines' result; "" when it is empty.
std::string FastestEngine(const std::map<std::string, double>& best_ms);
// Sets libtorch's global quantized engine for the guard's lifetime, then restores it.
class QEngineGuard {
 public:
  explicit QEngineGuard(const std::string& engine);
  ~QEngineGuard();
  QEngineGuard(const QEngineGuard&) = delete;
  QEngineGuard& operator=(const QEngineGuard&) = delete;

 private:
  at::QEngine previous_;
};

// Prepacks every conv for the engine currently set (call under a QEngineGuard).
void PrepackConvs(Int8HeadState& state);
// Drops prepacked kernels (reference engine).
void ClearPrepacked(Int8HeadState& state);
// Runs the head with libtorch's quantized kernels. Precondition: PrepackConvs ran under the
// same engine that is set now.
SplitVisionNetImpl::Outputs ForwardQuantized(const Int8HeadState& state,
                                             const torch::Tensor& images);

}  // namespace int8
}  // namespace cleave::split
