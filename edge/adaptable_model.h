// What on-gateway learning (edge/adaptation.h) adapts: the fp32 edge side of a bundle of
// either kind, behind the few operations an adaptation cycle needs.
//
//   vision-split       cleave's own network (split/vision_bundle.h). Scope exits trains the
//                      early exits; scope head also the blocks before the encoder, with an
//                      MSE distillation on the encoder's code against the bundle's head. The
//                      engine swapped in re-quantizes the int8 head on served inputs.
//   torchscript-split  an imported model (split/imported_model.h). The user's TorchScript
//                      head and the bottleneck encoder are frozen; only the fp32 exits
//                      (cleave ExitHeads on the head's output h) train, on h computed once
//                      per batch without grad. The engine swapped in runs the bundle's int8
//                      head (or fp32 head) and encoder unchanged, so the code the cloud
//                      receives is bit for bit the bundle's. Scope head is refused.
//
// BatchNorm layers keep their running statistics while training (served data drifts; the
// int8 head and the cloud's tail were built with them).
//
// Thread-safety: none. A model belongs to the learner thread; the edge models Serving
// returns own copies of everything they run, so they serve on another thread while the
// learner trains on. The methods run libtorch and may throw c10::Error: call them inside
// split::CallTorch (the learner's cycle does). LoadAdaptableModel never throws.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/status.h"
#include "federated/continual.h"
#include "federated/replay_buffer.h"
#include "split/bundle.h"
#include "split/exit_policy.h"
#include "split/split_runtime.h"

namespace cleave::edge {

class AdaptableModel {
 public:
  virtual ~AdaptableModel() = default;

  // The bundle's kind: split::kVisionSplitKind or split::kTorchScriptSplitKind.
  virtual std::string kind() const = 0;
  virtual int num_classes() const = 0;
  // One input's [C, H, W].
  virtual std::vector<int64_t> input_shape() const = 0;
  // The bundle's calibrated exit policy (adaptation keeps it).
  virtual const split::ExitPolicy& exit_policy() const = 0;
  // The bundle's calibration (CalibrationResult::ToJson), or null.
  virtual const nlohmann::json& calibration() const = 0;

  // What a continual-learning strategy trains: its Parameters() are this model's own
  // tensors, updated in place. The returned object borrows this model (it must not
  // outlive it).
  virtual std::unique_ptr<federated::ContinualModel> Trainable() = 0;
  // The exits' logits on `images` (eval mode, no grad): one [N, classes] per exit.
  virtual std::vector<torch::Tensor> ExitLogits(const torch::Tensor& images) = 0;
  // An edge model serving this model as it is now, with copies of its weights (later
  // training does not reach it). `calibration` ([N, C, H, W] served inputs) re-quantizes an
  // int8 head that training may have changed; a frozen head ignores it.
  virtual Result<std::unique_ptr<split::EdgeModel>> Serving(
      const split::EdgeModel::Options& options, const torch::Tensor& calibration) = 0;

  // On rows the cloud answered (`check`: soft labels set), the share the exits answer
  // locally (by exit_policy()) with another class than the cloud's: what serving these
  // exits would change against the teacher. 0 for no rows.
  double Disagreement(const federated::LabeledBatch& check);
};

// The fp32 head and exits of `bundle` (either kind), as adaptation with `scope` ("exits" |
// "head") trains them. `head` are the edge's serving options: with head.int8, an imported
// bundle's int8 head is read (and kept for the engines Serving builds). Errors:
// FailedPrecondition for a model without early exits or scope head on an imported bundle
// (naming edge.adapt_scope), or another kind of bundle; the bundle readers' errors.
Result<std::shared_ptr<AdaptableModel>> LoadAdaptableModel(const Bundle& bundle,
                                                           const split::EdgeModel::Options& head,
                                                           const std::string& scope,
                                                           double code_weight);

}  // namespace cleave::edge
