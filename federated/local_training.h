// A client's local training step of a federated round, shared by `cleave-edge` and the
// simulation engine: load the round's global weights, run SGD with momentum over the
// client's data for the configured epochs (or until the step/time budget runs out), with
// the FedProx proximal term mu/2 ||w - w_global||^2 when mu > 0 (Li et al., "Federated
// Optimization in Heterogeneous Networks", MLSys 2020), training only the entries the
// round marks trainable, and return the trained weights.
//
// Thread-safety: one call per network at a time; calls on different networks may run
// concurrently (each worker owns its network). Deterministic given `seed` and the thread
// count libtorch uses.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "federated/continual.h"
#include "federated/round_engine.h"
#include "federated/strategy.h"
#include "federated/weights.h"
#include "split/image_rows.h"
#include "split/train_data.h"
#include "split/trainable_net.h"

namespace cleave::federated {

struct LocalTrainOptions {
  FitConfig fit;
  std::vector<bool> trainable;      // over the network's layout; empty = everything
  uint64_t seed = 1;                // mini-batch order
  int64_t time_budget_micros = 0;   // stop after this much time (0 = none); checked per step
  Clock* clock = nullptr;           // for the time budget (default: SystemClock())
  std::function<bool()> cancelled;  // polled between steps; may be empty
  // BatchNorm layers normalize with their stored running statistics and do not update them
  // (eval mode) while the rest trains. Right for fine-tuning a deployed model on skewed
  // local data: per-client batch statistics of non-IID shares, averaged by the server, no
  // longer match what the frozen layers after them expect. Rounds that train the head and
  // exits only set it; rounds that train everything (from scratch) do not.
  bool freeze_batch_norm_stats = false;
  // Continual learning (federated/continual.h): the client's strategy supplies each step's
  // loss (replay, regularization) instead of plain cross-entropy (the FedProx term still
  // adds when mu > 0) and sees each step's rows afterwards. Not owned; null = none.
  ContinualStrategy* continual = nullptr;
  // With `continual`: (a sample of) the client's finished experience. The strategy
  // consolidates on it once the global weights are loaded, before the first step.
  const LabeledBatch* consolidate = nullptr;
  // `global` is a model the caller already validated (the round engine's own global
  // model): its count and shapes are still checked, its values are not scanned again.
  bool global_is_checked = false;
};

struct LocalTrainResult {
  Weights weights;           // trained values, full layout
  int64_t num_examples = 0;  // rows of the client's data (the FedAvg weight)
  int64_t steps = 0;
  int64_t samples = 0;      // samples processed (steps x batch)
  double train_loss = 0;    // mean loss over the steps taken
  double seconds = 0;       // wall time inside the training loop
  bool budget_hit = false;  // stopped early by max_steps or the time budget
};

// Trains `net` in place starting from `global` on `data`. InvalidArgument when `global`
// does not match the network or `data` is empty; Internal when the loss diverges to a
// non-finite value (the update would be useless); FailedPrecondition when cancelled.
// `recycled` (optional): tensors of an earlier result, reused where nothing else references
// them for the result (see GetWeightsInto).
Result<LocalTrainResult> TrainLocally(split::TrainableNet& net, const Weights& global,
                                      const split::LabeledImages& data,
                                      const LocalTrainOptions& options, Weights recycled = {});

// TrainLocally for many calls on one network: finds the network's tensors once instead of
// per call (the simulator's workers train thousands of tiny clients each). The network's
// structure must not change while the trainer lives.
class LocalTrainer {
 public:
  explicit LocalTrainer(split::TrainableNet& net);
  Result<LocalTrainResult> Train(const Weights& global, const split::LabeledImages& data,
                                 const LocalTrainOptions& options, Weights recycled = {});

 private:
  split::TrainableNet& net_;
  ExchangedTensors tensors_;  // parameters first, then float buffers
  size_t num_params_ = 0;
  std::vector<std::shared_ptr<torch::nn::Module>> batch_norms_;
  std::unique_ptr<torch::optim::SGD> optimizer_;  // over the parameters optimizer_mask_ marks
  std::vector<bool> optimizer_mask_;
  at::Generator generator_;  // mini-batch order, reseeded per call
};

// Test accuracy and mean cross-entropy of `net` loaded with `weights` on `data`.
Result<Evaluation> EvaluateWeights(split::TrainableNet& net, const Weights& weights,
                                   const split::ImageRows& data, int64_t batch = 1024);

}  // namespace cleave::federated
