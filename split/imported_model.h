// An imported split model (bundle kind "torchscript-split"): a user's TorchScript model cut in
// two (split/torchscript_model.h) with a learned bottleneck and early exits at the cut.
//
//   edge:  images -> normalize -> head (TorchScript) -> h --+-> exits (cleave ExitHead) -> logits
//                                                           +-> encoder -> features (wire)
//   cloud: features -> decoder -> tail (TorchScript) -> logits
//
// The bottleneck follows BottleFit (Matsubara et al., "BottleFit: Learning Compressed
// Representations in Deep Neural Networks for Effective and Efficient Split Computing",
// 2022): the encoder squeezes the head's C-channel map h to a few channels (3x3 conv, stride 1
// or 2, BatchNorm, no activation: the wire quantizer sees a signed, centred code), the decoder
// restores it (nearest upsampling back to h's size when strided, 3x3 conv + BatchNorm + ReLU,
// then a 1x1 conv with bias so any sign of h can be reproduced). Exits attach to h
// (BranchyNet, Teerapittayanon et al. 2016), as in cleave's own networks (ExitHead).
//
// Bundle files (listed with SHA-256 in manifest.json, split/bundle.h):
//   head.pt        TorchScript of the head (TorchScriptModel::ExtractHead): only edge weights
//   edge_fp32.pt   libtorch archive: encoder ("encoder.*") and exits ("exit<i>.*")
//   tail.pt        TorchScript of the tail (ExtractTail): only cloud weights
//   cloud_fp32.pt  libtorch archive: decoder ("decoder.*")
//   head_int8.bin  Int8GraphHead::Serialize of the head (split/head_int8_graph.h), optional
// manifest "model": {"name", "input" (InputSpec), "normalize" {"mean": [...], "std": [...]},
//   "source" {"file", "cut", "class"}, "head_output_shape" [C,H,W],
//   "bottleneck" {"channels", "stride"}, "exits" [{"hidden_channels"}...], "feature_shape" [b,h,w],
//   "exit_policy", "calibration", "wire" {...as vision-split}, "int8": null (or the int8 head's
//   description), "evaluation", "training", "files" {...}}
// Readers validate every field (the manifest is input) and load only what is asked for.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <torch/script.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/status.h"
#include "common/tensor_codec.h"
#include "split/bundle.h"
#include "split/exit_policy.h"
#include "split/head_int8_graph.h"
#include "split/input_spec.h"
#include "split/vision_model.h"

namespace cleave::split {

inline constexpr char kTorchScriptSplitKind[] = "torchscript-split";
inline constexpr char kImportedHeadFile[] = "head.pt";
inline constexpr char kImportedEdgeFile[] = "edge_fp32.pt";
inline constexpr char kImportedTailFile[] = "tail.pt";
inline constexpr char kImportedCloudFile[] = "cloud_fp32.pt";
inline constexpr char kImportedHeadInt8File[] = "head_int8.bin";

// The bottleneck encoder: [N, C, H, W] -> [N, b, ceil(H/s), ceil(W/s)].
class BottleneckEncoderImpl : public torch::nn::Module {
 public:
  BottleneckEncoderImpl(int in_channels, int bottleneck_channels, int stride);
  torch::Tensor forward(torch::Tensor h);
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
};
TORCH_MODULE(BottleneckEncoder);

// The bottleneck decoder: [N, b, h', w'] -> [N, C, H, W] (H, W given at construction).
class BottleneckDecoderImpl : public torch::nn::Module {
 public:
  BottleneckDecoderImpl(int bottleneck_channels, int out_channels, int out_height, int out_width);
  torch::Tensor forward(torch::Tensor z);
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  torch::nn::Conv2d project{nullptr};

 private:
  int out_height_, out_width_;
};
TORCH_MODULE(BottleneckDecoder);

// Everything a torchscript-split bundle describes. Copying shares the modules (handles).
struct ImportedSplitModel {
  std::string name = "imported";
  InputSpec input;
  std::vector<float> mean{0.0f}, std{1.0f};  // applied before the head: (x - mean) / std
  nlohmann::json source;                     // {"file", "cut", "class"}
  std::vector<int64_t> head_output_shape;    // [C, H, W] of h
  int bottleneck_channels = 2;
  int bottleneck_stride = 2;
  std::vector<int> exit_hidden;  // one per exit (all read h)
  torch::jit::Module head, tail;
  bool has_head = false, has_tail = false;  // which TorchScript parts are loaded
  BottleneckEncoder encoder{nullptr};
  BottleneckDecoder decoder{nullptr};
  std::vector<ExitHead> exits;
  // The head quantized to int8 where its ops allow (null when absent or not loaded).
  std::shared_ptr<Int8GraphHead> int8_head;
  wire::DType wire_dtype = wire::DType::kUInt4;
  wire::QuantParams wire_quant;
  ExitPolicy exit_policy;
  nlohmann::json calibration, int8_info, evaluation = nlohmann::json::object(),
                                         training = nlohmann::json::object();

  int num_classes() const { return static_cast<int>(input.class_names.size()); }
  // [b, ceil(H/s), ceil(W/s)].
  std::vector<uint32_t> FeatureShape() const;
  // Fresh encoder, decoder and exits for head_output_shape and the bottleneck settings.
  // InvalidArgument for a head output that is not a [C, H, W] map or bad settings.
  Status BuildBottleneck();

  // The paths (no grad unless the caller enables it; modules in whatever mode they are).
  torch::Tensor Normalize(const torch::Tensor& images) const;
  torch::Tensor RunHead(const torch::Tensor& images);  // normalize + fp32 head -> h
  // normalize + int8 head -> h (dequantized). FailedPrecondition without an int8 head.
  Result<torch::Tensor> RunHeadInt8(const torch::Tensor& images);
  torch::Tensor RunTail(const torch::Tensor& features);  // decoder + tail -> logits
};

// Writes `model` (all parts present) as a bundle at `dir`, atomically.
Status WriteImportedBundle(const std::filesystem::path& dir, const ImportedSplitModel& model);

// Which parts to load: the edge needs head + edge, the cloud tail + cloud (+ head + edge for
// the whole model, the "send the image" baseline).
struct ImportedBundleParts {
  bool head = true;
  bool head_int8 = false;  // needs `head` (the int8 head is read against the fp32 one)
  bool edge = true;
  bool tail = true;
  bool cloud = true;
};

// Reads a verified bundle of kind torchscript-split. Errors: InvalidArgument (wrong kind,
// malformed manifest), DataLoss (a weight file that fails to load or lacks a tensor),
// NotFound (a listed part missing). Modules are returned in eval mode.
Result<ImportedSplitModel> ReadImportedBundle(const Bundle& bundle,
                                              const ImportedBundleParts& parts);

}  // namespace cleave::split
