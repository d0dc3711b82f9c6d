// A model trained in PyTorch and exported with TorchScript (torch.jit.script or
// torch.jit.trace), and the places where cleave can cut it into an edge head and a cloud tail.
//
// Where a model can be cut (docs/design.md, "Imported models (TorchScript)"):
//
//   1. Chains. A module is a *chain* when the graph of its `forward` only fetches its own
//      child modules (prim::GetAttr from self, possibly several levels deep, as a loop over an
//      nn.ModuleList compiles to) and calls their `forward` one after the other: each call's
//      single argument is the previous call's output (the first call's is forward's input),
//      and forward returns the last output. Unused constants may appear (traced graphs have
//      them); any other node, a call of some other method, a child called twice, or an
//      output used twice (a branch, a residual add) makes the module a non-chain.
//      torch.jit.script(nn.Sequential(...)), torch.jit.trace of an nn.Sequential and a
//      custom module whose forward is `x = self.a(x); x = self.b(x); return x` are chains.
//      The model can be cut after any child of the root chain but the last. The cut is named
//      by the child's attribute name ("3" in a Sequential, "conv1" in a custom module), or
//      by its position in the root chain ("3" = the fourth call). A child that is itself a
//      chain can be cut inside, by a dotted name ("features.3"), at any depth as long as
//      every module along the path is a chain. Cutting after the last child of a nested
//      chain is the same cut as after that chain ("features.12" = "features"); the
//      outermost name is the canonical one. Tracing records a module that hands its input
//      on unchanged (nn.Identity) as a call without argument whose result is unused: such
//      a call is no step, and its name is an alias of the cut before it.
//   2. Exported split methods. A module that exports `forward_head(x)` and `forward_tail(z)`
//      (@torch.jit.export) is cut between them; the only cut name is "head". Its forward must
//      equal forward_tail(forward_head(x)): Load checks that on a random sample when it is
//      told the input shape (Options::input_shape), and VerifyCut checks it on any input.
//      These methods take precedence over a chain forward.
//   Anything else has no cut points; CheckCuttable and ResolveCut say what its forward does
//   instead and what to change.
//
// Errors are Status values: every libtorch call is wrapped (split/torch_status.h), and the
// model file, its graph and the tensors given to it are the user's, so libtorch failures on
// them are kInvalidArgument. Inputs are checked before they reach libtorch.
//
// Threads: a TorchScriptModel serves one caller at a time (the jit module and its parameters
// are shared state). Move-only; the model owns its jit module. Modules returned by
// ExtractHead/ExtractTail own copies of their weights and do not depend on the model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/script.h>

#include "common/status.h"

namespace cleave::split {

// A place to cut one TorchScriptModel, from its ResolveCut. It records positions in that
// model's chain, so it is meaningless for any other model (the methods check its range).
struct TorchScriptCut {
  // The canonical name: "3", "features.3", "avgpool", or "head" for forward_head/forward_tail.
  std::string name;
  // Chain cuts: the head runs the first `head_steps` leaf calls of the chain flattened into
  // the calls of its non-chain modules (1 <= head_steps < the number of leaves).
  // 0 for a forward_head/forward_tail cut.
  size_t head_steps = 0;
  bool by_methods = false;  // true: the cut is between forward_head and forward_tail
};

class TorchScriptModel {
 public:
  struct Options {
    // Shape of one input item, e.g. {3, 32, 32}. Empty: any shape with a batch dimension.
    // When set, inputs to Forward/ForwardHead must be [N, input_shape...], and Load runs a
    // seeded random sample in [0, 1) of two items through the model (and, for a
    // forward_head/forward_tail model, checks VerifyCut on it).
    std::vector<int64_t> input_shape;
  };

  // Whether autograd records the run. kOff (the default) runs under torch::NoGradGuard; kOn
  // lets gradients flow to the parameters (see NamedParameters) and to a `z` that requires
  // grad, for fine-tuning from C++. Neither changes train/eval mode (SetTraining does).
  enum class Autograd { kOff, kOn };

  // Loads a TorchScript archive (torch.jit.save output) on the CPU, in eval mode, and finds
  // its cut points. Errors, never an exception: NotFound (no such file), InvalidArgument (not
  // a regular file, not a TorchScript archive, no single-tensor forward, or a sample run or
  // VerifyCut failed). A model without cut points loads fine: see CheckCuttable.
  static Result<TorchScriptModel> Load(const std::filesystem::path& path);
  static Result<TorchScriptModel> Load(const std::filesystem::path& path, const Options& options);

  TorchScriptModel(TorchScriptModel&&) noexcept;
  TorchScriptModel& operator=(TorchScriptModel&&) noexcept;
  TorchScriptModel(const TorchScriptModel&) = delete;
  TorchScriptModel& operator=(const TorchScriptModel&) = delete;
  ~TorchScriptModel();

  // OK when the model has at least one cut point; otherwise InvalidArgument saying what its
  // forward does instead and how to make it cuttable.
  Status CheckCuttable() const;
  // Canonical names of the cut points, in forward order: {"0", "1", "2"},
  // {"features.0", ..., "features", "avgpool"} or {"head"}. Empty when not cuttable.
  std::vector<std::string> CutPoints() const;
  // Resolves a name (a dotted name from the chains, an alias such as "features.12" for
  // "features", "head", or the position of a child in the root chain: a name is looked up
  // first, so "3" is the child named "3" when there is one) to a cut. InvalidArgument, with
  // the valid names, for an unknown name, the last child, or a path into a non-chain module
  // (saying why that module is not a chain); CheckCuttable's error for a model without cuts.
  Result<TorchScriptCut> ResolveCut(const std::string& name) const;

  // The whole model, the head up to the cut, and the tail from the cut. `x` must be a
  // defined, floating-point, finite CPU tensor [N, ...] with N >= 1 (and [N, input_shape...]
  // when Options::input_shape was set); `z` the same without the input-shape check (it is
  // what ForwardHead returned). Neither is modified: the model runs on a copy, since layers
  // such as nn.ReLU(inplace=True) write into their input. InvalidArgument for a bad tensor, a cut
  // from another model, a failure inside the model (naming the child that failed) or a non-tensor
  // result.
  Result<torch::Tensor> Forward(const torch::Tensor& x, Autograd autograd = Autograd::kOff);
  Result<torch::Tensor> ForwardHead(const TorchScriptCut& cut, const torch::Tensor& x,
                                    Autograd autograd = Autograd::kOff);
  Result<torch::Tensor> ForwardTail(const TorchScriptCut& cut, const torch::Tensor& z,
                                    Autograd autograd = Autograd::kOff);
  // OK when ForwardTail(ForwardHead(x)) equals Forward(x) within
  // |a - b| <= atol + rtol * |b| elementwise; InvalidArgument naming the largest difference
  // otherwise (e.g. a forward that is not forward_tail(forward_head(x))).
  Status VerifyCut(const TorchScriptCut& cut, const torch::Tensor& x, double rtol = 1e-4,
                   double atol = 1e-5);

  // Stand-alone TorchScript modules for each side, so the edge never receives the tail's
  // weights and the cloud never the head's. Each owns deep copies of its weights, is in eval
  // mode, has `forward(x)` (one tensor in, one out) and can be saved (Module::save) and
  // loaded again (torch::jit::load). Parameter and buffer names are the original model's
  // ("features.0.weight" stays "features.0.weight" in the head; "classifier.1.weight" in
  // the tail), so weights can be mapped back onto the whole model. For chain cuts, the
  // modules a cut runs through ("features" above) are rebuilt as plain containers of the
  // children on that side, without a forward of their own; for a forward_head/forward_tail
  // cut, forward is a copy of that method with only the attributes it reads (Unimplemented if
  // the method calls another method of the model itself). Errors: InvalidArgument for a cut
  // from another model; Internal if libtorch refuses to build the module.
  Result<torch::jit::Module> ExtractHead(const TorchScriptCut& cut) const;
  Result<torch::jit::Module> ExtractTail(const TorchScriptCut& cut) const;

  // Train mode (dropout, batch-norm statistics) on or off for the whole model; Load leaves
  // it off.
  Status SetTraining(bool on);
  // Every parameter, by its dotted name ("features.0.weight"), in module order. The tensors
  // are the model's own (not copies): an optimizer may update them in place.
  Result<std::vector<std::pair<std::string, torch::Tensor>>> NamedParameters() const;
  // A deep copy of the whole module (its own tensors, detached, in the model's current
  // mode), for training it outside this class (split/trainable_net.h).
  Result<torch::jit::Module> CopyModule() const;

  // The archive's path, as given to Load, and the root module's class name ("Sequential").
  const std::filesystem::path& path() const;
  const std::string& class_name() const;

 private:
  struct State;
  explicit TorchScriptModel(std::unique_ptr<State> state);
  // InvalidArgument unless `cut` is one ResolveCut of this model can return.
  Status CheckCutIsOurs(const TorchScriptCut& cut) const;
  // Runs leaves [begin, end) of the flattened chain on x.
  Result<torch::Tensor> RunLeaves(size_t begin, size_t end, torch::Tensor x);

  std::unique_ptr<State> state_;  // null only in a moved-from model
};

}  // namespace cleave::split
