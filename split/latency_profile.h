// Per-block latency profiles of a vision-split model, measured when a bundle is made (`cleave
// train`, `cleave split`) and stored in its manifest ("profile"), so an offload policy can
// predict what each split point costs on either side without running it first (Neurosurgeon,
// Kang et al. 2017, predicts per-layer latency for the same reason; here we measure it).
//
// Every figure is the median over `repeats` runs after warm-up, in milliseconds, on the
// machine that made the bundle (named in `cpu`). A gateway or a cloud node of another CPU
// runs at another speed: the policy scales the profile by what it measures live (the edge its
// own head time, the cloud's replies their compute time).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "split/vision_bundle.h"

namespace cleave::split {

struct LatencyProfile {
  std::string cpu;                      // the model name of the measuring CPU
  int threads = 1;                      // libtorch intra-op threads during the measurement
  std::vector<double> block_fp32_ms;    // each block as a module at batch 1 (edge fp32 path)
  std::vector<double> block_plan_ms;    // each block as a TailPlan at batch 1 (cloud)
  std::vector<double> block_plan32_ms;  // the same at batch 32, per image
  std::vector<double> exit_ms;          // each exit head at batch 1
  double int8_head_ms = 0;              // the deployment split's int8 head + exits (0: none)
  std::vector<double> encoder_ms;       // per further split point: its encoder (0: none)
  std::vector<double> decoder_ms;       // per further split point: its decoder (0: none)

  nlohmann::json ToJson() const;
  // InvalidArgument for a malformed profile or one that does not match `model` (block,
  // exit and split point counts; every figure finite and >= 0).
  static Result<LatencyProfile> FromJson(const nlohmann::json& json, const VisionSplitModel& model);

  // Predicted edge milliseconds per image of split point `split` (0 = deployment split): the
  // blocks before the cut, the exits there and the encoder; the int8 head's time for split 0
  // when `int8` and it was measured. Precondition: split < 1 + model.splits.size().
  double EdgeMs(const VisionSplitModel& model, int split, bool int8) const;
  // Predicted cloud milliseconds of one request alone (batch 1) or per image in a batch of
  // 32, for split point `split`: its decoder and the blocks from its resume block on.
  double CloudMs(const VisionSplitModel& model, int split, bool batched) const;
};

// Measures `model` (every fp32 part loaded; the int8 head when model.int8_head) with the
// calling thread's libtorch settings. Errors only from libtorch (as Internal).
Result<LatencyProfile> MeasureLatencyProfile(VisionSplitModel& model, int repeats = 30);

// Measures `model` and stores the profile in model.profile (what WriteVisionBundle writes).
Status AttachLatencyProfile(VisionSplitModel& model, int repeats = 30);

// This machine's CPU model name (/proc/cpuinfo "model name"), "unknown" when unreadable.
std::string CpuModelName();

}  // namespace cleave::split
