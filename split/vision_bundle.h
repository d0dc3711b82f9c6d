// Vision split-model bundles (kind "vision-split"): write a trained split model, read it back.
//
// Files (all listed with SHA-256 in manifest.json, see split/bundle.h):
//   head_fp32.pt   fp32 parameters and BN buffers of blocks [0, split_after] (libtorch archive)
//   exits_fp32.pt  fp32 exit heads
//   tail_fp32.pt   fp32 blocks (split_after, N): decoder, rest of the network, classifier
//   head_int8.bin  Int8Head::Serialize of blocks [0, split_after] + exits (optional)
// manifest "model" object:
//   {"name", "spec" (VisionModelSpec JSON), "input" (InputSpec JSON: what the network takes,
//    how images are converted to it, class names; absent in older bundles),
//    "split_after", "feature_shape" [C,H,W],
//    "exit_policy" {"criterion","thresholds"}, "calibration" (CalibrationResult JSON or null),
//    "wire" {"dtype","channel_axis":1,"scale":[..],"zero_point":[..]},
//    "int8" {"file","weight_bytes","engine","engine_timings_ms",...} or null,
//    "evaluation" {...accuracies...}, "training" {...options...}, "files" {part -> file name},
//    "splits" [...] (further split points, split/split_point.h; absent when there are none),
//    "profile" {...} (per-block latencies, split/latency_profile.h; absent in older bundles)}
//   split<i>_fp32.pt  the learned bottleneck of further split point i (1-based), if it has one
//   wire_entropy.cem, split<i>_entropy.cem  entropy models of the wire features (named by the
//                  "wire" objects with their fingerprints; split/wire_entropy.h)
// Readers validate every field (the manifest is input, hence hostile) and load only the
// parts asked for, so the edge never reads the tail and the cloud never reads int8 weights.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/status.h"
#include "common/tensor_codec.h"
#include "split/bundle.h"
#include "split/exit_policy.h"
#include "split/input_spec.h"
#include "split/int8_head.h"
#include "split/split_point.h"
#include "split/vision_model.h"

namespace cleave::split {

inline constexpr char kVisionSplitKind[] = "vision-split";
inline constexpr char kHeadFp32File[] = "head_fp32.pt";
inline constexpr char kExitsFp32File[] = "exits_fp32.pt";
inline constexpr char kTailFp32File[] = "tail_fp32.pt";
inline constexpr char kHeadInt8File[] = "head_int8.bin";
inline constexpr char kWireEntropyFile[] = "wire_entropy.cem";

// Everything a vision-split bundle describes. Plain data: copying shares `net` and
// `int8_head` (both are handles).
struct VisionSplitModel {
  std::string name = "fmnist";
  VisionModelSpec spec;  // spec.split_after is the deployment split (>= 0)
  // Matches spec (channels, size, classes). Read: Legacy(spec) when the manifest has none;
  // written as Legacy(spec) when class_names is empty.
  InputSpec input;
  // fp32 network; parts not loaded keep their initial values (see VisionBundleParts).
  SplitVisionNet net{nullptr};
  std::shared_ptr<Int8Head> int8_head;  // null when absent or not loaded
  wire::DType wire_dtype = wire::DType::kUInt4;
  wire::QuantParams wire_quant;  // one (scale, zero point) per feature channel
  // Entropy model of the quantized features ("wire" {"entropy"}), or null: packed bytes.
  std::shared_ptr<const EntropyModel> wire_entropy;
  ExitPolicy exit_policy;
  nlohmann::json calibration;  // CalibrationResult::ToJson(), or null
  nlohmann::json int8_info;    // engine, engine_timings_ms, weight_bytes, ... or null
  nlohmann::json evaluation;   // accuracies measured by the producer
  nlohmann::json training;     // options the model was trained with
  // Further split points (indices 1, 2, ...; index 0 is the deployment split described by the
  // fields above). Their bottlenecks are built and loaded by ReadVisionBundle.
  std::vector<SplitPoint> splits;
  // Per-block latencies measured when the bundle was made (split/latency_profile.h), or null.
  nlohmann::json profile;

  // Blocks the edge runs: [0, head_end()).
  int head_end() const { return spec.split_after + 1; }
};

// Per-image feature shape [C, H, W] after block spec.split_after (InvalidArgument when the
// spec has no split or splits after a non-spatial block).
Result<std::vector<uint32_t>> FeatureShape(const VisionModelSpec& spec);

// What both ends know of the features at split point `split` (0 = the deployment split).
// Precondition: split <= model.splits.size() and FeatureShape(model.spec) is OK for split 0.
wire::FeatureLayout SplitLayout(const VisionSplitModel& model, int split);

// The file holding the bottleneck of further split point `index` (1-based).
std::string SplitBottleneckFile(size_t index);

// Writes `model` as a bundle at `dir` atomically (replacing an older bundle there only once
// the new one is complete). Requires model.net; writes head_int8.bin iff model.int8_head.
Status WriteVisionBundle(const std::filesystem::path& dir, const VisionSplitModel& model);

// Which weight files to read. Unread parts of `net` keep their random initial values.
struct VisionBundleParts {
  bool head_fp32 = true;
  bool exits_fp32 = true;
  bool tail_fp32 = true;
  bool head_int8 = false;
};

// Reads a verified bundle. Errors: InvalidArgument (wrong kind, malformed or inconsistent
// manifest), DataLoss (a weight file that fails its hash, lacks a tensor or has the wrong
// shape), NotFound (a requested part the bundle does not have). The network is returned in
// eval() mode.
Result<VisionSplitModel> ReadVisionBundle(const Bundle& bundle, const VisionBundleParts& parts);

}  // namespace cleave::split
