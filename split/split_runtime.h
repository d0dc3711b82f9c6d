// What the daemons and the benchmark run: the edge head, the cloud tail and the whole model,
// each loaded from a verified bundle: "vision-split" (split/vision_bundle.h, cleave's own
// networks) or "torchscript-split" (split/imported_model.h, an imported TorchScript model
// with a learned bottleneck; its int8 head is split/head_int8_graph.h).
//
// Every method runs under torch::NoGradGuard with the network in eval() mode and turns any
// c10::Error into a Status: no exception leaves this file. Inputs are checked before they
// reach libtorch (shape, dtype, finiteness), because they come from peers and files.
// Threads: each model object serves one caller at a time (libtorch modules are not
// re-entrant for us, and Int8Head sets a process-global quantized engine per call). Use one
// object per thread, or serialize calls. The objects own all their weights; the Bundle may
// be destroyed after Load.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <torch/torch.h>

#include "common/png_image.h"
#include "common/status.h"
#include "common/tensor_codec.h"
#include "split/bundle.h"
#include "split/exit_policy.h"
#include "split/input_spec.h"
#include "split/tail_plan.h"
#include "split/vision_bundle.h"

namespace cleave::split {

struct ImportedSplitModel;

struct EdgeHeadOutput {
  std::vector<torch::Tensor> exit_logits;  // one [N, num_classes] per exit, in exit order
  torch::Tensor features;                  // encoder output [N, C, H, W] float, not yet quantized
};

// The edge side: blocks [0, split_after] and the exits, int8 (default) or fp32.
class EdgeModel {
 public:
  struct Options {
    bool int8 = true;                  // false: run the fp32 head (head_fp32.pt + exits_fp32.pt)
    std::string int8_engine = "auto";  // auto | onednn | qnnpack | reference
  };
  // Loads only the head (+ exits). Errors from ReadVisionBundle, plus the engine selection's.
  static Result<std::unique_ptr<EdgeModel>> Load(const Bundle& bundle, const Options& options);
  // An edge model of cleave's own network held in memory (on-gateway adaptation builds one
  // from its adapted network, edge/adaptation.h): `model.int8_head` must be set when
  // options.int8, `model.net` (head and exits) otherwise. InvalidArgument when missing;
  // the engine selection's errors.
  static Result<std::unique_ptr<EdgeModel>> FromModel(VisionSplitModel model,
                                                      const Options& options);
  // An edge model of an imported split model held in memory (Load builds one from the
  // bundle; on-gateway adaptation builds one with its adapted exits). `imported` needs its
  // encoder and, when options.int8, its int8 head (run unchanged), else its fp32 TorchScript
  // head: InvalidArgument when missing; the engine selection's errors. The modules are
  // shared, not copied: nothing else may run or change them while the edge model lives
  // (the engine selection prepacks the int8 head).
  static Result<std::unique_ptr<EdgeModel>> FromImported(
      std::shared_ptr<ImportedSplitModel> imported, const Options& options);

  // images: float [N, 1, H, W] in [0, 1] (N >= 1, H = W = the spec's image size).
  // InvalidArgument on a wrong shape/dtype or non-finite pixels; Internal if libtorch fails.
  Result<EdgeHeadOutput> Run(const torch::Tensor& images);
  // The same at split point `split` (0 = the deployment split, what Run does; further points
  // of split/split_point.h run the fp32 blocks before their cut, then their encoder). The
  // exits are those before the cut. InvalidArgument for a split the bundle does not have.
  Result<EdgeHeadOutput> Run(const torch::Tensor& images, int split);
  // 1 + the bundle's further split points (always 1 for imported bundles).
  int num_splits() const { return 1 + static_cast<int>(model_.splits.size()); }
  // Per split point: its exit policy, wire dtype and parameters, and per-image feature shape.
  // Precondition: 0 <= split < num_splits().
  const ExitPolicy& exit_policy(int split) const;
  wire::DType wire_dtype(int split) const;
  const wire::QuantParams& wire_quant(int split) const;
  const std::vector<uint32_t>& feature_shape(int split) const;
  // Everything both ends know of split point `split`'s features (common/feature_coding.h),
  // and its 16-bit tag. Precondition: 0 <= split < num_splits().
  wire::FeatureLayout layout(int split) const;
  uint16_t layout_tag(int split) const;

  const ExitPolicy& exit_policy() const { return model_.exit_policy; }
  // Replaces the thresholds (e.g. for a threshold sweep). The policy's exit count should
  // match num_exits(); extra thresholds are ignored and missing ones never exit.
  void set_exit_policy(ExitPolicy policy) { model_.exit_policy = std::move(policy); }
  wire::DType wire_dtype() const { return model_.wire_dtype; }
  const wire::QuantParams& wire_quant() const { return model_.wire_quant; }
  // Per-image feature shape, e.g. {2, 7, 7}.
  const std::vector<uint32_t>& feature_shape() const { return feature_shape_; }
  const std::string& model_name() const { return model_.name; }
  int num_classes() const { return model_.spec.num_classes; }
  int num_exits() const;
  // "fp32", or the int8 engine in use ("onednn", "qnnpack", "reference").
  std::string engine() const;
  // The manifest's description (spec, evaluation, calibration...), for reports. For an
  // imported bundle (kind torchscript-split) the spec holds only the input's channels, size
  // and class count, and net / int8_head are null.
  const VisionSplitModel& info() const { return model_; }
  const InputSpec& input() const { return model_.input; }
  // The imported model when the bundle is of kind torchscript-split, else null.
  const ImportedSplitModel* imported() const { return imported_.get(); }

 private:
  EdgeModel() = default;
  VisionSplitModel model_;
  std::shared_ptr<ImportedSplitModel> imported_;
  std::vector<uint32_t> feature_shape_;
  bool int8_ = true;
};

// The cloud side: the tail (decoder + rest) and, for the "send the PNG" baseline, the whole
// fp32 model (loads head_fp32.pt and tail_fp32.pt; never the int8 head). The tail runs as a
// TailPlan (split/tail_plan.h: BatchNorm folded, channels-last, fp32 or bf16).
class CloudModel {
 public:
  struct Options {
    TailPrecision precision = TailPrecision::kFp32;  // of the tail; RunFull is always fp32
  };
  static Result<std::unique_ptr<CloudModel>> Load(const Bundle& bundle);
  static Result<std::unique_ptr<CloudModel>> Load(const Bundle& bundle, const Options& options);

  // features: float [N, C, H, W] with [C, H, W] == feature_shape() (N >= 1) -> logits
  // [N, num_classes]. InvalidArgument on a wrong shape/dtype or non-finite values.
  Result<torch::Tensor> RunTail(const torch::Tensor& features);
  // The tail of split point `split` (0 = RunTail's): decoder of the point if it has one, then
  // the backbone from its `resume` block, as a TailPlan. InvalidArgument for a split the
  // bundle does not have or features of another shape than feature_shape(split).
  Result<torch::Tensor> RunTail(const torch::Tensor& features, int split);
  // 1 + the bundle's further split points; every one is served.
  int num_splits() const { return 1 + static_cast<int>(split_tails_.size()); }
  // Per-image feature shape at split point `split`. Precondition: 0 <= split < num_splits().
  const std::vector<uint32_t>& feature_shape(int split) const;
  // As EdgeModel::layout / layout_tag: what a version 2 request's features are coded with.
  wire::FeatureLayout layout(int split) const;
  uint16_t layout_tag(int split) const;
  // images as for EdgeModel::Run -> logits of the whole fp32 split model.
  Result<torch::Tensor> RunFull(const torch::Tensor& images);

  const std::vector<uint32_t>& feature_shape() const { return feature_shape_; }
  const std::string& model_name() const { return model_.name; }
  int num_classes() const { return model_.spec.num_classes; }
  const VisionSplitModel& info() const { return model_; }
  const InputSpec& input() const { return model_.input; }
  TailPrecision tail_precision() const;

 private:
  CloudModel() = default;
  VisionSplitModel model_;
  std::shared_ptr<ImportedSplitModel> imported_;  // kind torchscript-split
  TailPlan tail_;
  std::vector<TailPlan> split_tails_;  // of model_.splits, in order
  std::vector<uint32_t> feature_shape_;
};

// The whole fp32 split model on the edge ("local_fp32" in the benchmark).
class LocalModel {
 public:
  static Result<std::unique_ptr<LocalModel>> Load(const Bundle& bundle);
  // images as for EdgeModel::Run -> logits [N, num_classes].
  Result<torch::Tensor> Run(const torch::Tensor& images);
  const std::string& model_name() const { return model_.name; }
  int num_classes() const { return model_.spec.num_classes; }
  const VisionSplitModel& info() const { return model_; }

 private:
  LocalModel() = default;
  VisionSplitModel model_;
  std::shared_ptr<ImportedSplitModel> imported_;  // kind torchscript-split
};

// uint8 pixels (n * rows * cols, row-major, image after image) -> float [n, 1, rows, cols]
// in [0, 1]. Copies; `pixels` is only read during the call.
torch::Tensor ImagesToTensor(const uint8_t* pixels, int64_t n, int rows, int cols);
// The same for `channels`-channel planar (CHW) images -> float [n, channels, rows, cols].
torch::Tensor ImagesToTensor(const uint8_t* pixels, int64_t n, int channels, int rows, int cols);

// The input a bundle of either kind declares (its manifest's "input"; Legacy for older
// vision-split bundles), without loading any weights. Errors of the bundle readers.
Result<InputSpec> ReadBundleInput(const Bundle& bundle);

// One decoded image (any size, 1 or 3 channels; common/png_image.h PixelImage) converted to
// the network input `input` declares (InputSpec::Prepare) -> float [1, C, H, W] in [0, 1].
// InvalidArgument, with the reason, when it cannot be converted.
Result<torch::Tensor> PrepareImageTensor(const PixelImage& image, const InputSpec& input);

// An encoded PNG or JPEG (chosen by its magic bytes) decoded and prepared as above.
Result<torch::Tensor> DecodeImageTensor(std::string_view encoded, const InputSpec& input);

// Shape/dtype/finiteness check shared by the models: `tensor` must be floating point, 4-D,
// with dims 1..3 equal to `per_item` and at least one row.
Status CheckBatch(const torch::Tensor& tensor, const std::vector<int64_t>& per_item,
                  const char* what);

}  // namespace cleave::split
