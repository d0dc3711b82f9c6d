#include "split/head_int8_graph.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <set>
#include <utility>

#include "split/head_int8_plan.h"
#include "split/head_int8_serialization.h"
#include "split/int8_ops.h"
#include "split/torch_status.h"

namespace cleave::split {
namespace {

constexpr int kGraphTimingRounds = 3;
constexpr int kGraphTimingRuns = 5;  // per round
constexpr uint64_t kGraphTimingSeed = 1234;

std::string GraphShapeText(c10::IntArrayRef sizes) {
  std::string text = "[";
  for (size_t i = 0; i < sizes.size(); ++i) text += (i ? ", " : "") + std::to_string(sizes[i]);
  return text + "]";
}

// float32 [N >= 1, C, H, W] on the CPU with finite values (and the given [C, H, W] if any).
Status CheckGraphInput(const torch::Tensor& x, const std::vector<int64_t>& item_shape,
                       const std::string& what) {
  if (!x.defined() || x.layout() != torch::kStrided || !x.device().is_cpu() ||
      x.scalar_type() != torch::kFloat) {
    return Status::InvalidArgument(what + " must be a dense float32 CPU tensor");
  }
  if (x.dim() != 4 || x.size(0) < 1) {
    return Status::InvalidArgument(what + " has shape " + GraphShapeText(x.sizes()) +
                                   "; expected [N >= 1, C, H, W]");
  }
  if (!item_shape.empty() && x.sizes().slice(1) != c10::IntArrayRef(item_shape)) {
    return Status::InvalidArgument(what + " has shape " + GraphShapeText(x.sizes()) +
                                   "; the head was calibrated on [N, " +
                                   GraphShapeText(item_shape).substr(1));
  }
  CLEAVE_ASSIGN_OR_RETURN(const bool finite, CallTorch(TorchSource::kExternalInput, what, [&] {
                            return torch::isfinite(x).all().item<bool>();
                          }));
  if (!finite) return Status::InvalidArgument(what + " has NaN or infinite values");
  return Status::Ok();
}

}  // namespace

nlohmann::json HeadInt8Report::ToJson() const {
  nlohmann::json list = nlohmann::json::array();
  int64_t int8_ops = 0, int8_macs = 0, total_macs = 0;
  for (const QuantizedOpInfo& op : ops) {
    list.push_back({{"kind", op.kind}, {"int8", op.int8}, {"macs", op.macs}});
    int8_ops += op.int8 ? 1 : 0;
    int8_macs += op.int8 ? op.macs : 0;
    total_macs += op.macs;
  }
  return {{"ops", std::move(list)},
          {"int8_ops_fraction", int8_ops_fraction},
          {"int8_macs_fraction", int8_macs_fraction},
          {"int8_ops", int8_ops},
          {"total_ops", static_cast<int64_t>(ops.size())},
          {"int8_macs", int8_macs},
          {"total_macs", total_macs},
          {"quantize_steps", quantize_steps},
          {"dequantize_steps", dequantize_steps}};
}

Int8GraphHead::Int8GraphHead(std::unique_ptr<Int8GraphState> state) : state_(std::move(state)) {}
Int8GraphHead::Int8GraphHead(Int8GraphHead&&) noexcept = default;
Int8GraphHead& Int8GraphHead::operator=(Int8GraphHead&&) noexcept = default;
Int8GraphHead::~Int8GraphHead() = default;

Result<Int8GraphHead> Int8GraphHead::Quantize(const torch::jit::Module& head,
                                              const torch::Tensor& calibration_inputs) {
  CLEAVE_RETURN_IF_ERROR(
      CheckGraphInput(calibration_inputs, {}, "int8 graph head: calibration inputs"));
  // The head and its calibration inputs are the user's: libtorch failures on them are
  // InvalidArgument (split/torch_status.h).
  return CallTorch(
      TorchSource::kExternalInput, "int8 graph head: quantize", [&]() -> Result<Int8GraphHead> {
        torch::NoGradGuard no_grad;
        CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<Int8GraphState> state, int8_graph::BuildPlan(head));
        state->input_shape = calibration_inputs.sizes().slice(1).vec();
        CLEAVE_RETURN_IF_ERROR(
            int8_graph::CalibrateAndQuantize(*state, calibration_inputs.contiguous()));
        return Int8GraphHead(std::move(state));
      });
}

Result<torch::Tensor> Int8GraphHead::Forward(const torch::Tensor& x) {
  if (!state_) return Status::FailedPrecondition("int8 graph head: moved-from head");
  CLEAVE_RETURN_IF_ERROR(CheckGraphInput(x, state_->input_shape, "int8 graph head: the input"));
  // The graph is the user's: a failure inside it (its own assertions) is InvalidArgument.
  return CallTorch(
      TorchSource::kExternalInput, "int8 graph head: forward (" + state_->engine + ")",
      [&]() -> torch::Tensor {
        torch::NoGradGuard no_grad;
        // No copy: the plan has no in-place ops (BuildPlan refuses them).
        const torch::Tensor input = x.contiguous();
        if (state_->engine == "reference") {
          return int8_graph::RunPlan(*state_, int8_graph::RunMode::kReference, input, nullptr)
              .contiguous();
        }
        int8::QEngineGuard engine(state_->engine);
        torch::Tensor out =
            int8_graph::RunPlan(*state_, int8_graph::RunMode::kQuantized, input, nullptr);
        return (out.is_quantized() ? out.dequantize() : out).contiguous();
      });
}

const HeadInt8Report& Int8GraphHead::report() const {
  static const HeadInt8Report kEmpty;
  return state_ ? state_->report : kEmpty;
}

const std::vector<int64_t>& Int8GraphHead::input_shape() const {
  static const std::vector<int64_t> kNone;
  return state_ ? state_->input_shape : kNone;
}

int64_t Int8GraphHead::WeightBytes() const {
  if (!state_) return 0;
  int64_t bytes = 0;
  for (const int8_graph::QWeights& w : state_->weights) {
    bytes += w.weight_q.numel() + 4 * (w.weight_scale.numel() + w.bias.numel());
  }
  // One float32 scale and one uint8 zero point per activation quantization point.
  return bytes + static_cast<int64_t>(state_->acts.size()) * 5;
}

Result<std::string> Int8GraphHead::Serialize() const {
  if (!state_) return Status::FailedPrecondition("int8 graph head: moved-from head");
  return CallTorch(TorchSource::kOwnState, "int8 graph head: serialize",
                   [&] { return int8_graph::SerializeGraphHead(*state_); });
}

Result<Int8GraphHead> Int8GraphHead::Deserialize(const std::string& bytes,
                                                 const torch::jit::Module& head_fp32) {
  // The plan comes from the caller's fp32 head (its failures are InvalidArgument); the
  // bytes from storage (DataLoss).
  Result<std::unique_ptr<Int8GraphState>> state =
      CallTorch(TorchSource::kExternalInput, "int8 graph head: the fp32 head",
                [&]() -> Result<std::unique_ptr<Int8GraphState>> {
                  torch::NoGradGuard no_grad;
                  return int8_graph::BuildPlan(head_fp32);
                });
  if (!state.ok()) return state.status();
  CLEAVE_RETURN_IF_ERROR(CallTorch(TorchSource::kStoredBytes, "int8 graph head bytes", [&] {
    return int8_graph::DeserializeGraphHead(bytes, **state);
  }));
  return Int8GraphHead(std::move(state).value());
}

Status Int8GraphHead::SelectEngine(const std::string& engine) {
  if (!state_) return Status::FailedPrecondition("int8 graph head: moved-from head");
  if (engine == "auto") return SelectFastestEngine();
  if (engine == "reference") {
    int8_graph::ClearPrepacked(*state_);
    state_->engine = engine;
    return Status::Ok();
  }
  if (engine != "onednn" && engine != "qnnpack") {
    return Status::InvalidArgument("int8 graph head: unknown engine '" + engine +
                                   "' (expected onednn, qnnpack, reference or auto)");
  }
  if (!int8::EngineSupported(engine)) {
    return Status::Unavailable("int8 graph head: this libtorch has no '" + engine + "' engine");
  }
  Status status = CallTorch(TorchSource::kOwnState, "int8 graph head: prepack for " + engine, [&] {
    int8::QEngineGuard guard(engine);
    int8_graph::PrepackKernels(*state_);
  });
  if (!status.ok()) {
    // Some kernels may be packed for `engine` now: fall back to the reference path.
    int8_graph::ClearPrepacked(*state_);
    state_->engine = "reference";
    return status.WithContext("falling back to the reference engine");
  }
  state_->engine = engine;
  return Status::Ok();
}

Status Int8GraphHead::SelectFastestEngine() {
  state_->engine_timings_ms.clear();
  std::vector<int64_t> shape{1};
  shape.insert(shape.end(), state_->input_shape.begin(), state_->input_shape.end());
  CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor probe,
                          CallTorch(TorchSource::kOwnState, "int8 graph head: timing input", [&] {
                            return torch::rand(shape,
                                               at::detail::createCPUGenerator(kGraphTimingSeed));
                          }));
  const std::map<std::string, double> best_ms =
      int8::TimeEngines([&](const std::string& engine) { return SelectEngine(engine).ok(); },
                        [&] { return Forward(probe).ok(); }, kGraphTimingRounds, kGraphTimingRuns);
  const std::string best = int8::FastestEngine(best_ms);
  state_->engine_timings_ms = best_ms;
  if (best.empty()) return Status::Internal("int8 graph head: no engine could run the head");
  return SelectEngine(best);
}

const std::string& Int8GraphHead::engine() const {
  static const std::string kNone;
  return state_ ? state_->engine : kNone;
}

const std::map<std::string, double>& Int8GraphHead::engine_timings_ms() const {
  static const std::map<std::string, double> kEmpty;
  return state_ ? state_->engine_timings_ms : kEmpty;
}

}  // namespace cleave::split
