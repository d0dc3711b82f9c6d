// A splittable vision network for square images of any size and channel count.
//
// The network is a flat list of blocks, so it can be split after any block (Neurosurgeon-
// style): the edge runs blocks [0, k), the cloud runs [k, N). Blocks are
//   - "conv":     k x k convolution + BatchNorm (+ ReLU when `relu`);
//   - "fused_mb": Fused-MBConv (Tan & Le, "EfficientNetV2", 2021): a 3x3 expansion conv +
//                 BN + ReLU, then a 1x1 projection conv + BN, with a residual connection when
//                 stride is 1 and channels match. It is the MobileNetV2 inverted residual
//                 with the depthwise 3x3 + 1x1 expansion fused into one dense 3x3 conv. We
//                 chose it by measured time: on these CPUs, depthwise convs train ~3x slower
//                 per sample than the fused block despite fewer FLOPs (see docs/design.md);
//   - "res":      the ResNet BasicBlock (He et al., "Deep Residual Learning for Image
//                 Recognition", 2016): 3x3 conv (stride) + BN + ReLU, 3x3 conv + BN, plus a
//                 shortcut, then the sum (+ ReLU when `relu`). The shortcut is the identity when
//                 stride is 1 and channels match, else a 1x1 conv with the stride + BN
//                 ("projection shortcut", option B of the paper). Kernel is always 3;
//                 BatchNorm and "same" padding are part of the block;
//   - "classifier": global average pooling + linear layer to the class logits (last block);
//   - "maxpool":  k x k max pooling with the given stride (channels unchanged);
//   - "linear":   flatten + fully connected layer (+ ReLU when `relu`); its in_channels is
//                 the flattened size of its input (C x H x W). A "linear" without ReLU and
//                 with num_classes outputs may end the network instead of a classifier.
// "conv" may drop its BatchNorm (`batch_norm` false: the conv gets a bias) and use explicit
// padding, which the plain CNNs of the federated-learning literature need (SimpleCnn()).
// A learned bottleneck (BottleFit, Matsubara et al. 2022; SC2, Matsubara et al. 2022) is an
// "encoder" conv that squeezes channels and a "decoder" conv that restores them; the
// intended deployment split is right after the encoder. Early exits (BranchyNet, Teerapittayanon
// et al. 2016) attach to block outputs: conv + BN + ReLU, global pooling, linear.
//
// Inputs to Forward* are float images in [0, 1], shape [N, C, S, S] (input_channels, image_size);
// per-channel normalization with the spec's mean/std happens inside (Preprocess), so every caller
// feeds the same thing.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/status.h"

namespace cleave::split {

struct BlockSpec {
  std::string type;  // "conv" | "fused_mb" | "res" | "classifier" | "maxpool" | "linear"
  std::string role;  // "" | "encoder" | "decoder" (informational; the bottleneck pair)
  int in_channels = 0;
  int out_channels = 0;
  int kernel = 3;  // conv and maxpool; "res" requires 3
  int stride = 1;
  int expansion = 2;       // fused_mb only
  bool relu = true;        // conv, linear and res (the ReLU after the sum)
  bool batch_norm = true;  // conv only
  int padding = -1;        // conv only; -1 = kernel / 2 ("same" at stride 1)
};

// A block's JSON as in a model spec, and back (throws nlohmann::json::exception on malformed
// input; the spec's Validate checks the values).
nlohmann::json BlockSpecToJson(const BlockSpec& block);
// Output side of `block` given a square input of side `in_size` (1 once flattened).
int BlockOutputSide(const BlockSpec& block, int in_size);
BlockSpec BlockSpecFromJson(const nlohmann::json& json);

struct ExitSpec {
  int after_block = 0;  // the exit reads the output of this block
  int hidden_channels = 32;
};

struct VisionModelSpec {
  int input_channels = 1;
  int image_size = 28;
  int num_classes = 10;
  // Per-channel normalization inside the network, (x - mean[c]) / std[c]: one value (all
  // channels) or one per input channel. Defaults: Fashion-MNIST training-set statistics.
  // JSON writes a single value as a number (manifests of earlier models stay identical).
  std::vector<float> input_mean{0.2860f};
  std::vector<float> input_std{0.3530f};
  std::vector<BlockSpec> blocks;
  std::vector<ExitSpec> exits;
  int split_after = -1;  // deployment split: the edge runs blocks [0, split_after]; -1: none

  nlohmann::json ToJson() const;
  // Validates channel chaining, ranges and the exit/split positions.
  static Result<VisionModelSpec> FromJson(const nlohmann::json& json);
  Status Validate() const;

  // The deployed split model: stem, two Fused-MBConv at 14x14, encoder to `bottleneck`
  // channels at 7x7, decoder to `tail_channels`, `tail_blocks` Fused-MBConv, classifier;
  // one exit after block 2. The edge head does not depend on the tail's size.
  static VisionModelSpec DefaultSplit(int bottleneck_channels = 2, int tail_channels = 64,
                                      int tail_blocks = 2);
  // The teacher: the same network with the encoder/decoder pair replaced by one
  // Fused-MBConv (stride 2), no exits. Its block 3 output is what the decoder imitates.
  static VisionModelSpec DefaultTeacher(int tail_channels = 64, int tail_blocks = 2);
  // The residual family, sized for 32x32 RGB (CIFAR-style) and re-seated for any input by
  // ForInput: stem conv 3->16, a "res" block 16->32 with stride 2 (16x16, exit), encoder to
  // `bottleneck_channels` at 8x8 (the split), decoder to `tail_channels`, `tail_blocks` "res"
  // blocks, classifier. Edge head 5.4 M MACs with the exit (table in docs/design.md).
  static constexpr int kResidualSplitBottleneck = 4;
  static VisionModelSpec ResidualSplit(int bottleneck_channels = kResidualSplitBottleneck,
                                       int tail_channels = 64, int tail_blocks = 2);
  // A very small split model for unit tests (fast on one core).
  static VisionModelSpec TinySplit();
  // The "simple CNN" of the federated-learning benchmarks (McMahan et al. 2017; Li et al.,
  // "Federated Learning on Non-IID Data Silos", ICDE 2022): conv 5x5 (6) - ReLU - maxpool 2 -
  // conv 5x5 (16) - ReLU - maxpool 2 - fc 120 - ReLU - fc 84 - ReLU - fc 10, no BatchNorm,
  // no split point, no exits.
  static VisionModelSpec SimpleCnn();

  // This spec re-seated for `channels` x `size` x `size` inputs and `num_classes` classes, with
  // this normalization: the first block reads `channels`, the classifier (or the final
  // linear block) emits num_classes, and a linear block reading a flattened map takes that
  // map's new size. Every preset works for any input this way. InvalidArgument when the
  // result does not validate (e.g. an image too small for the strides), naming the input.
  Result<VisionModelSpec> ForInput(int channels, int size, int num_classes, std::vector<float> mean,
                                   std::vector<float> std) const;

  // Spatial size (square) of block `i`'s output; 1 for flattened outputs. Precondition:
  // Validate() is OK and 0 <= i < blocks.size().
  int OutputSize(int i) const;
};

// `values` (a normalization vector of the spec) as a float tensor [1, values.size(), 1, 1].
torch::Tensor NormalizationTensor(const std::vector<float>& values);

// Base of every block: forward(x) on the previous block's output.
class VisionBlockImpl : public torch::nn::Module {
 public:
  explicit VisionBlockImpl(BlockSpec spec) : spec_(std::move(spec)) {}
  virtual torch::Tensor forward(torch::Tensor x) = 0;
  const BlockSpec& spec() const { return spec_; }

 private:
  BlockSpec spec_;
};

class ConvBnActImpl : public VisionBlockImpl {
 public:
  explicit ConvBnActImpl(const BlockSpec& spec);
  torch::Tensor forward(torch::Tensor x) override;
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};  // null when spec.batch_norm is false
};

class FusedMBConvImpl : public VisionBlockImpl {
 public:
  explicit FusedMBConvImpl(const BlockSpec& spec);
  torch::Tensor forward(torch::Tensor x) override;
  bool residual() const { return residual_; }
  torch::nn::Conv2d expand_conv{nullptr};  // 3x3, stride, in -> in*expansion
  torch::nn::BatchNorm2d expand_bn{nullptr};
  torch::nn::Conv2d project_conv{nullptr};  // 1x1, in*expansion -> out
  torch::nn::BatchNorm2d project_bn{nullptr};

 private:
  bool residual_ = false;
};

// The ResNet BasicBlock ("res").
class ResBlockImpl : public VisionBlockImpl {
 public:
  explicit ResBlockImpl(const BlockSpec& spec);
  torch::Tensor forward(torch::Tensor x) override;
  // Whether the shortcut is a 1x1 conv + BN (stride > 1 or channels change) or the identity.
  bool projection() const { return !shortcut_conv.is_empty(); }
  torch::nn::Conv2d conv1{nullptr};  // 3x3, stride, in -> out
  torch::nn::BatchNorm2d bn1{nullptr};
  torch::nn::Conv2d conv2{nullptr};  // 3x3, out -> out
  torch::nn::BatchNorm2d bn2{nullptr};
  torch::nn::Conv2d shortcut_conv{nullptr};  // 1x1, stride, in -> out; null for the identity
  torch::nn::BatchNorm2d shortcut_bn{nullptr};
};

class MaxPoolImpl : public VisionBlockImpl {
 public:
  explicit MaxPoolImpl(const BlockSpec& spec) : VisionBlockImpl(spec) {}
  torch::Tensor forward(torch::Tensor x) override;
};

class LinearBlockImpl : public VisionBlockImpl {
 public:
  explicit LinearBlockImpl(const BlockSpec& spec);
  torch::Tensor forward(torch::Tensor x) override;
  torch::nn::Linear fc{nullptr};
};

class ClassifierImpl : public VisionBlockImpl {
 public:
  explicit ClassifierImpl(const BlockSpec& spec);
  torch::Tensor forward(torch::Tensor x) override;
  torch::nn::Linear fc{nullptr};
};

class ExitHeadImpl : public torch::nn::Module {
 public:
  ExitHeadImpl(const ExitSpec& spec, int in_channels, int num_classes);
  torch::Tensor forward(torch::Tensor x);  // -> logits [N, num_classes]
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(ExitHead);

// A convolution with the BatchNorm after it folded in (eval semantics: running statistics):
// conv(x, weight, bias) == bn(conv(x)). The int8 head and the serving plan both start here.
struct FoldedConv {
  torch::Tensor weight;  // [out, in, k, k]
  torch::Tensor bias;    // [out]
};
// `bn` may be null (then the conv's own bias, or zeros). InvalidArgument if the statistics or
// weights are not finite; FailedPrecondition if the BatchNorm has no running statistics.
Result<FoldedConv> FoldBatchNorm(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn);

class SplitVisionNetImpl : public torch::nn::Module {
 public:
  // Precondition: spec.Validate() is OK.
  explicit SplitVisionNetImpl(VisionModelSpec spec);

  const VisionModelSpec& spec() const { return spec_; }
  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  VisionBlockImpl& block(int i) { return *blocks_[i]; }
  std::shared_ptr<VisionBlockImpl> block_ptr(int i) { return blocks_[i]; }
  int num_exits() const { return static_cast<int>(exits_.size()); }
  ExitHead& exit(int i) { return exits_[i]; }

  // [0,1] images -> normalized network input.
  torch::Tensor Preprocess(const torch::Tensor& images) const;
  // Runs blocks [begin, end) on x (x is the output of block begin-1, or preprocessed input).
  torch::Tensor ForwardRange(torch::Tensor x, int begin, int end);
  // Whole network: images in [0,1] -> logits.
  torch::Tensor forward(torch::Tensor images);

  struct Outputs {
    std::vector<torch::Tensor> exit_logits;  // one per exit whose after_block < end
    torch::Tensor features;                  // output of block end-1
  };
  // Runs blocks [0, end) from images and evaluates every exit reached on the way.
  Outputs ForwardWithExits(torch::Tensor images, int end);

  // Parameter count of blocks [begin, end) (plus exits attached there when `with_exits`).
  int64_t ParameterCount(int begin, int end, bool with_exits) const;
  // Multiply-accumulates of one image through blocks [begin, end) (+ exits when asked).
  int64_t MacCount(int begin, int end, bool with_exits) const;

 private:
  VisionModelSpec spec_;
  // Normalization as [1, C or 1, 1, 1] tensors (plain members, not buffers: they come from the
  // spec, so they are neither trained nor exchanged).
  torch::Tensor mean_, std_;
  std::vector<std::shared_ptr<VisionBlockImpl>> blocks_;
  std::vector<ExitHead> exits_;
  std::vector<int> block_out_size_;  // spatial size after each block (square)
};
TORCH_MODULE(SplitVisionNet);

}  // namespace cleave::split
