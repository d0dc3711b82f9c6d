// Test support: writes a small, untrained but complete vision-split bundle (TinySplit spec,
// random weights, int8 head, u4 wire parameters, one exit) in well under a second, so edge
// and cloud tests exercise real bundles without training.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

#include <torch/torch.h>

#include "common/status.h"
#include "split/bundle.h"
#include "split/exit_policy.h"
#include "split/int8_head.h"
#include "split/vision_bundle.h"
#include "split/vision_model.h"
#include "split/wire_quant.h"

namespace cleave::testing {

// A fresh temporary directory path unique to this process and `name` (not created).
inline std::filesystem::path TempPath(const std::string& name) {
  static int counter = 0;
  return std::filesystem::temp_directory_path() /
         ("cleave_" + name + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
}

// Random images in [0,1], [n,1,28,28].
inline torch::Tensor RandomImages(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::rand({n, 1, 28, 28});
}

// Writes the tiny bundle to `dir` with exit threshold `threshold` (max-softmax).
inline Status WriteTinyBundle(const std::filesystem::path& dir, double threshold = 0.5) {
  torch::manual_seed(7);
  split::VisionSplitModel model;
  model.name = "fmnist";
  model.spec = split::VisionModelSpec::TinySplit();
  model.net = split::SplitVisionNet(model.spec);
  model.net->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor calibration = RandomImages(64, 11);
  CLEAVE_ASSIGN_OR_RETURN(split::Int8Head head,
                          split::Int8Head::Quantize(*model.net, model.head_end(), calibration));
  model.int8_head = std::make_shared<split::Int8Head>(std::move(head));
  const torch::Tensor features =
      model.net->ForwardRange(model.net->Preprocess(calibration), 0, model.head_end());
  auto [lo, hi] = split::ChooseWireRanges(features, wire::DType::kUInt4);
  model.wire_dtype = wire::DType::kUInt4;
  model.wire_quant = split::RangesToQuantParams(lo, hi, wire::DType::kUInt4);
  CLEAVE_ASSIGN_OR_RETURN(
      model.exit_policy, split::ExitPolicy::Create(split::ExitCriterion::kMaxSoftmax, {threshold}));
  return split::WriteVisionBundle(dir, model);
}

// A second version of the bundle at `from`, written to `to`: every parameter scaled by 1.5
// and shifted by 0.05, so its replies differ from the original's (hot-reload tests).
inline Status WriteShiftedBundle(const std::filesystem::path& from,
                                 const std::filesystem::path& to) {
  CLEAVE_ASSIGN_OR_RETURN(Bundle bundle, Bundle::Open(from));
  split::VisionBundleParts parts;
  parts.head_int8 = true;
  CLEAVE_ASSIGN_OR_RETURN(split::VisionSplitModel model, split::ReadVisionBundle(bundle, parts));
  torch::NoGradGuard no_grad;
  for (torch::Tensor& p : model.net->parameters()) p.mul_(1.5).add_(0.05);
  return split::WriteVisionBundle(to, model);
}

}  // namespace cleave::testing
