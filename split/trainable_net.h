// A network that training outside the model's own pipeline (federated rounds, the edge's
// federated client, `cleave sim`) trains and evaluates, whatever defines it:
//   - cleave's own architectures (SplitVisionNet: a built-in preset or a model spec file);
//   - a user's TorchScript model as exported (torch.jit.script / torch.jit.trace), whole;
//   - an imported split model (bundle kind torchscript-split, split/imported_model.h):
//     normalize -> head -> bottleneck encoder -> wire quantizer -> decoder -> tail.
//
// Every kind exposes its tensors the same way: parameters first, in a fixed order, then its
// floating-point buffers (BatchNorm running statistics), each under a stable dotted name.
// Integer buffers (num_batches_tracked) are local bookkeeping and are not exposed. Entries
// of the edge's side are named so federated/weights.h TrainableMask can tell them apart:
// "block<i>.*" and "exit<j>.*" for cleave's networks, "head.*", "encoder.*" and "exit<j>.*"
// for an imported split model ("decoder.*" and "tail.*" are the cloud's).
//
// Training mode caveat for TorchScript: a *scripted* module honours train/eval mode
// (dropout, BatchNorm statistics); a *traced* one runs whatever mode it was traced in, as in
// PyTorch. Export with torch.jit.script when the model will be trained from cleave.
//
// Thread-safety: none; one thread uses a net at a time. Clone() gives each worker its own.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <torch/script.h>
#include <torch/torch.h>

#include "common/status.h"
#include "split/bundle.h"
#include "split/imported_model.h"
#include "split/input_spec.h"
#include "split/vision_model.h"

namespace cleave::split {

class TrainableNet {
 public:
  // The net's own tensors (shared with it, not copies): writing into them changes the net.
  struct Tensors {
    std::vector<std::string> names;
    std::vector<torch::Tensor> tensors;
    size_t num_parameters = 0;  // tensors[0, num_parameters) are parameters
  };
  enum class Mode {
    kEval,
    kTrain,
    // Train, except that BatchNorm layers normalize with (and keep) their running
    // statistics: fine-tuning on skewed local data (federated/local_training.h).
    kTrainFrozenBatchNorm,
  };

  virtual ~TrainableNet() = default;

  // "vision-split", "torchscript" or "torchscript-split".
  virtual std::string kind() const = 0;
  // What the net takes and predicts: images [N, channels, height, width] as
  // InputSpec::Prepare makes them (values in [0, 1]; normalization is the net's own).
  virtual const InputSpec& input() const = 0;
  int num_classes() const { return static_cast<int>(input().class_names.size()); }
  // Index of the last block the edge runs (VisionModelSpec::split_after) for cleave's
  // networks; -1 when the split is expressed by entry names (imported) or there is none.
  virtual int split_after() const { return -1; }

  virtual Tensors Exchanged() = 0;
  virtual void SetMode(Mode mode) = 0;
  // Final logits [N, num_classes]. Autograd records the run unless the caller disables it.
  virtual torch::Tensor Forward(const torch::Tensor& images) = 0;
  // A deep copy with tensors of its own, in eval mode.
  virtual Result<std::unique_ptr<TrainableNet>> Clone() const = 0;
};

// cleave's own network. `input` describes what `net`'s spec takes (InputSpec::Legacy(spec)
// when the caller has nothing better).
std::unique_ptr<TrainableNet> MakeTrainable(SplitVisionNet net, InputSpec input);
// A fresh network for `spec` (weights from libtorch's current generator: seed it first).
std::unique_ptr<TrainableNet> MakeTrainable(const VisionModelSpec& spec, InputSpec input);

// A user's whole TorchScript model from a torch.jit.save archive, taking images as `input`
// describes them (its own normalization inside; none is added). Checks on a sample that
// forward maps [2, C, H, W] to [2, classes]: InvalidArgument naming the file otherwise
// (NotFound when there is no such file).
Result<std::unique_ptr<TrainableNet>> LoadTorchScriptTrainable(const std::filesystem::path& path,
                                                               const InputSpec& input);

// An imported split model with every part loaded (ReadImportedBundle with all parts). The
// forward runs the wire quantizer as a straight-through fake quantizer (FakeQuantizeWire
// with the bundle's parameters), so training sees what serving sends; exits are not on the
// path (they are trained by their own calibration).
Result<std::unique_ptr<TrainableNet>> MakeTrainable(ImportedSplitModel model);

// The whole fp32 model of a verified bundle of either kind (vision-split, torchscript-split).
// InvalidArgument for another kind; the readers' errors otherwise.
Result<std::unique_ptr<TrainableNet>> TrainableFromBundle(const Bundle& bundle);

// Whether `path` names a TorchScript archive by its extension (.pt, .pth, .ptc).
bool IsTorchScriptPath(const std::string& path);

}  // namespace cleave::split
