// Continual learning: training on a stream of experiences without forgetting the earlier
// ones. One strategy interface serves the edge's adaptation from what it serves
// (edge/adaptation.h), the federated client's local rounds (federated/local_training.h) and
// `cleave sim --continual` / `cleave bench continual`.
//
// Strategies (each cites the method it implements):
//   naive   fine-tuning on the current data only (the lower bound).
//   er      experience replay: every step also trains on rows drawn from a reservoir buffer
//           (Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019;
//           Rolnick et al., "Experience Replay for Continual Learning", NeurIPS 2019).
//   ewc     online EWC (Schwarz et al., "Progress & Compress", ICML 2018): a quadratic
//           penalty lambda/2 sum_i F_i (theta_i - theta*_i)^2 around the parameters at the
//           last experience boundary, with the diagonal Fisher information accumulated as
//           F <- gamma F + F_new (Kirkpatrick et al., PNAS 2017, for the penalty).
//   lwf     Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2018): distillation of
//           the model frozen at the last boundary on the current inputs, over the classes
//           seen before the boundary, at temperature T.
//   derpp   DER++ (Buzzega et al., "Dark Experience for General Continual Learning: a Strong,
//           Simple Baseline", NeurIPS 2020): replays stored logits (MSE, weight alpha) and
//           stored labels (cross-entropy, weight beta) from a reservoir buffer.
//
// Every strategy's base loss on a row uses the best label the row has (federated/
// replay_buffer.h): cross-entropy on a hard label, else distillation from a teacher's soft
// label (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015: T^2 KL between
// the tempered distributions). A model may have several output heads (the edge's early
// exits): logits [n, heads, classes] train every head on the same targets.
//
// Default hyper-parameters are those Buzzega et al. report for Seq-MNIST (their code's
// best_args): online EWC lambda 90 without the 1/2 (lambda 180 here) and gamma 1; LwF
// alpha 1 at T 2; DER++ with 500 rows alpha 1.0, beta 0.5. The replay batch is the step's.
//
// Thread-safety: none; a strategy belongs to one learner and one thread at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/status.h"
#include "federated/replay_buffer.h"
#include "split/trainable_net.h"

namespace cleave::federated {

// What a strategy trains: a forward pass to logits and the tensors the optimizer updates.
class ContinualModel {
 public:
  using FrozenForward = std::function<torch::Tensor(const torch::Tensor&)>;
  virtual ~ContinualModel() = default;
  // Logits [n, classes] or [n, heads, classes]; autograd records the run.
  virtual torch::Tensor Forward(const torch::Tensor& images) = 0;
  // The tensors the optimizer updates (they require grad while training).
  virtual std::vector<torch::Tensor> Parameters() = 0;
  // A frozen copy of the model as it is now (LwF's teacher): same output layout, no grad.
  virtual Result<FrozenForward> Snapshot() = 0;
  // A loss the model adds to every training step (e.g. the edge's distillation on the
  // bottleneck code); undefined for none.
  virtual torch::Tensor AuxiliaryLoss(const torch::Tensor& images) {
    (void)images;
    return {};
  }
  // Train or eval mode for layers that care (dropout, BatchNorm).
  virtual void SetTraining(bool training) = 0;
};

// A TrainableNet as a ContinualModel. `trainable` marks the parameters to update, over the
// net's Exchanged() parameters (empty = all). `freeze_batch_norm` keeps BatchNorm running
// statistics while training (federated/local_training.h explains when).
std::unique_ptr<ContinualModel> ContinualModelOf(split::TrainableNet& net,
                                                 std::vector<bool> trainable = {},
                                                 bool freeze_batch_norm = false);

struct ContinualConfig {
  std::string strategy = "naive";  // naive | er | ewc | lwf | derpp
  ReplayOptions replay;            // er and derpp (replay.capacity = the buffer's rows)
  int64_t replay_batch = 0;        // rows drawn from the buffer per step; 0 = the step's batch
  double ewc_lambda = 180, ewc_gamma = 1.0;
  int64_t ewc_samples = 1024;  // rows of the finished experience the Fisher is estimated on
  double lwf_alpha = 1.0, lwf_temperature = 2.0;
  double derpp_alpha = 1.0, derpp_beta = 0.5;
  double kd_temperature = 2.0;  // distillation from soft (teacher) labels

  nlohmann::json ToJson() const;
  static Result<ContinualConfig> FromJson(const nlohmann::json& json);
  Status Validate() const;
  bool uses_buffer() const { return strategy == "er" || strategy == "derpp"; }
};
// The strategy names, in the order `--help` lists them.
const std::vector<std::string>& ContinualStrategyNames();

// The loss of one step and the logits of the step's own rows (detached), which DER++
// stores with them.
struct StepLoss {
  torch::Tensor loss;
  torch::Tensor logits;
};

class ContinualStrategy {
 public:
  virtual ~ContinualStrategy() = default;
  virtual std::string name() const = 0;
  // At an experience boundary, before training on the next experience: `model` holds what
  // the learner knows now, `finished` is (a sample of) the finished experience's data.
  // EWC estimates the Fisher information and moves its anchor; LwF freezes its teacher.
  virtual Status Consolidate(ContinualModel& model, const LabeledBatch& finished) {
    (void)model;
    (void)finished;
    return Status::Ok();
  }
  // The step's loss on `batch`, replay and regularization included.
  virtual StepLoss Loss(ContinualModel& model, const LabeledBatch& batch) = 0;
  // After the optimizer step: offers `batch` (with the step's logits) to the buffer.
  virtual Status Observe(const LabeledBatch& batch, const torch::Tensor& logits) {
    (void)batch;
    (void)logits;
    return Status::Ok();
  }
  // The replay buffer, for strategies that keep one (else null).
  virtual ReplayBuffer* buffer() { return nullptr; }
};

// A fresh strategy (validated config); `buffer`, when given, replaces the new strategy's
// empty buffer (a buffer loaded from disk or kept across rounds).
Result<std::unique_ptr<ContinualStrategy>> MakeContinualStrategy(
    const ContinualConfig& config, std::optional<ReplayBuffer> buffer = std::nullopt);

// The base loss: per row, cross-entropy on the hard label, else T^2 KL(soft || model) at
// temperature `kd_temperature`; mean over rows (and heads). Rows with neither label count
// zero. Exposed for tests and for the edge.
torch::Tensor LabeledLoss(const torch::Tensor& logits, const LabeledBatch& batch,
                          double kd_temperature);

// Trains `model` with `strategy` on one experience's data (epochs of shuffled mini-batches,
// SGD with momentum; a fresh optimizer per call). The strategy observes each row once, in
// the first epoch.
struct ExperienceOptions {
  int epochs = 1;
  int64_t batch_size = 64;
  double lr = 0.01, momentum = 0.9, weight_decay = 0;
  uint64_t seed = 1;  // mini-batch order
  // Clips the gradients' global L2 norm to this before each step (0 = no clipping).
  double max_grad_norm = 0;
  int64_t max_steps = 0;            // 0 = none
  int64_t time_budget_micros = 0;   // 0 = none; checked per step
  Clock* clock = nullptr;           // default SystemClock()
  std::function<bool()> cancelled;  // polled between steps
  // Called every `callback_every` steps (and after the last) with the steps taken so far.
  int64_t callback_every = 0;
  std::function<void(int64_t step)> on_steps;
};
struct ExperienceResult {
  int64_t steps = 0, samples = 0;
  double mean_loss = 0, seconds = 0;
  bool budget_hit = false;
};
// InvalidArgument for empty data or bad options, Internal when the loss diverges,
// FailedPrecondition when cancelled.
Result<ExperienceResult> TrainExperience(ContinualModel& model, ContinualStrategy& strategy,
                                         const LabeledBatch& data,
                                         const ExperienceOptions& options);

}  // namespace cleave::federated
