// More than one place to cut a vision-split network (issue 19). Besides the deployment split
// (the spec's split_after, with the bottleneck the network was trained with), a bundle may
// carry further split points, so the edge can choose per request how much to compute before
// it sends (Neurosurgeon, Kang et al. 2017; SPINN, Laskaridis et al. 2020).
//
// A split point cuts the backbone after block `after`. The edge runs blocks [0, after] (and
// the exits attached there), then the point's own encoder if it has one, and sends the
// result; the cloud runs the point's decoder if it has one, then blocks [resume, N).
//   - Without a bottleneck, resume = after + 1 and the features are the backbone's own
//     activation: head then tail is exactly the whole model (up to the wire's quantization).
//   - With one (BottleFit, Matsubara et al. 2022), an encoder/decoder pair learned against the
//     frozen backbone squeezes block `after`'s output and restores block `resume - 1`'s.
// Split index 0 is always the deployment split (VisionSplitModel's own fields); the points
// here are indices 1, 2, ... in manifest order. Their wire quantization is calibrated per
// point, and so are their exit thresholds (only the exits before the cut answer there).
//
// Manifest: "splits": [{"after", "resume", "encoder" (BlockSpec JSON or absent), "decoder",
// "feature_shape", "wire" {...}, "exit_policy", "calibration", "file" (bottleneck weights)}].
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/entropy_model.h"
#include "common/feature_coding.h"
#include "common/status.h"
#include "common/tensor_codec.h"
#include "split/exit_policy.h"
#include "split/vision_model.h"

namespace cleave::split {

// The learned encoder/decoder of a split point: two "conv" blocks.
struct SplitBottleneck {
  BlockSpec encoder;                                        // reads block `after`'s output
  BlockSpec decoder;                                        // writes what block `resume` reads
  std::shared_ptr<ConvBnActImpl> encoder_net, decoder_net;  // null until built
};

struct SplitPoint {
  int after = 0;
  int resume = 1;
  std::optional<SplitBottleneck> bottleneck;
  std::vector<uint32_t> feature_shape;  // per image [C, H, W] on the wire
  wire::DType wire_dtype = wire::DType::kUInt8;
  wire::QuantParams wire_quant;  // one (scale, zero point) per channel; empty for f32/f16
  // Entropy model of the quantized features (u8/u4), or null: packed bytes on the wire.
  std::shared_ptr<const EntropyModel> wire_entropy;
  ExitPolicy exit_policy;      // thresholds of the exits with after_block <= after
  nlohmann::json calibration;  // CalibrationResult JSON of this point, or null

  // How many of the spec's exits answer before this cut (the first ones: exits are ordered
  // by the block they read).
  int NumExits(const VisionModelSpec& spec) const;
  // What both ends know of this point's features (common/feature_coding.h).
  wire::FeatureLayout Layout() const {
    return {wire_dtype, feature_shape, wire_quant, wire_entropy};
  }
  // `entropy_file`: the bundle file its entropy model is written to (when it has one).
  nlohmann::json ToJson(const std::string& entropy_file = "") const;
  // Checks the point against `spec`: the cut is a spatial block, resume follows (after + 1
  // without a bottleneck; after < resume <= the classifier with one), the bottleneck chains
  // (encoder reads block after's channels, decoder writes block resume-1's), the feature
  // shape and wire parameters agree, the policy has NumExits thresholds. InvalidArgument
  // naming the field otherwise. Builds nothing.
  // `read` reads the bundle's files (for the entropy model; may be empty when the point names
  // none).
  static Result<SplitPoint> FromJson(
      const nlohmann::json& json, const VisionModelSpec& spec,
      const std::function<Result<std::string>(const std::string&)>& read = {});
  Status Validate(const VisionModelSpec& spec) const;

  // A plain cut after block `after` (no bottleneck) with `dtype` on the wire and no
  // quantization parameters yet (float dtypes need none); exit thresholds never exit.
  static Result<SplitPoint> Plain(const VisionModelSpec& spec, int after, wire::DType dtype);
};

// Per-image output shape [C, H, W] of block `block` (InvalidArgument for a flattened block or
// a block past the classifier).
Result<std::vector<uint32_t>> BlockOutputShape(const VisionModelSpec& spec, int block);

// Builds the bottleneck modules of `point` (no-op without one); weights start random.
void BuildBottleneck(SplitPoint& point);

// The edge side of `point` on `net` (eval mode, no grad): images [N,C,S,S] in [0,1] ->
// (exit logits of the exits before the cut, features [N, feature_shape...] float). Throws
// c10::Error like libtorch.
SplitVisionNetImpl::Outputs RunSplitHead(SplitVisionNetImpl& net, const SplitPoint& point,
                                         const torch::Tensor& images);
// The cloud side without the backbone tail: the decoder (identity without a bottleneck).
torch::Tensor RunSplitDecoder(const SplitPoint& point, const torch::Tensor& features);

// Bottleneck weights as a libtorch archive ("encoder.conv.weight", ...), and back (every
// tensor present, right shape, finite: DataLoss otherwise).
Result<std::string> SaveBottleneck(const SplitPoint& point);
Status LoadBottleneck(SplitPoint& point, const std::string& bytes, const std::string& file);

}  // namespace cleave::split
