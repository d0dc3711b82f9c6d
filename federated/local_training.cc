#include "federated/local_training.h"

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <cmath>

#include "split/torch_status.h"

namespace cleave::federated {

namespace F = torch::nn::functional;

LocalTrainer::LocalTrainer(split::TrainableNet& net)
    : net_(net), generator_(at::make_generator<at::CPUGeneratorImpl>(1)) {
  split::TrainableNet::Tensors t = net.Exchanged();
  num_params_ = t.num_parameters;
  tensors_.names = std::move(t.names);
  tensors_.tensors = std::move(t.tensors);
}

Result<LocalTrainResult> TrainLocally(split::TrainableNet& net, const Weights& global,
                                      const split::LabeledImages& data,
                                      const LocalTrainOptions& options, Weights recycled) {
  return LocalTrainer(net).Train(global, data, options, std::move(recycled));
}

Result<LocalTrainResult> LocalTrainer::Train(const Weights& global,
                                             const split::LabeledImages& data,
                                             const LocalTrainOptions& options, Weights recycled) {
  split::TrainableNet& net = net_;
  CLEAVE_RETURN_IF_ERROR(options.fit.Validate());
  const int64_t n = data.size();
  if (n == 0) return Status::InvalidArgument("local training: the client has no data");
  const auto train = [&]() -> Result<LocalTrainResult> {
    CLEAVE_RETURN_IF_ERROR(
        CopyIn(tensors_, global, !options.global_is_checked).WithContext("local training"));
    // SetWeights checked `global` against the network's layout, so its size is the layout's.
    const size_t entries = global.size();
    std::vector<bool> trainable = options.trainable;
    if (trainable.empty()) trainable.assign(entries, true);
    if (trainable.size() != entries) {
      return Status::InvalidArgument("local training: trainable mask has " +
                                     std::to_string(trainable.size()) + " entries, the model " +
                                     std::to_string(entries));
    }
    // Parameters come first in the layout, in named_parameters() order.
    std::vector<torch::Tensor> params, anchors;
    std::vector<torch::Tensor> all_params(tensors_.tensors.begin(),
                                          tensors_.tensors.begin() + num_params_);
    for (size_t i = 0; i < all_params.size(); ++i) {
      all_params[i].set_requires_grad(trainable[i]);
      if (trainable[i]) {
        params.push_back(all_params[i]);
        anchors.push_back(global[i]);
      }
    }
    LocalTrainResult result;
    result.num_examples = n;
    result.weights = std::move(recycled);
    if (params.empty()) {  // only buffers are "trainable": nothing to optimize
      CopyOut(tensors_, result.weights);
      return result;
    }
    // One optimizer per trainable set, reset for each call: a fresh optimizer's state is
    // empty (no momentum yet), and so is this one's after state().clear().
    if (!optimizer_ || optimizer_mask_ != trainable) {
      optimizer_ = std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(0));
      optimizer_mask_ = trainable;
    }
    std::unique_ptr<ContinualModel> continual_model;
    if (options.continual) {
      continual_model = ContinualModelOf(net, trainable, options.freeze_batch_norm_stats);
      if (options.consolidate && options.consolidate->size() > 0) {
        CLEAVE_RETURN_IF_ERROR(
            options.continual->Consolidate(*continual_model, *options.consolidate)
                .WithContext("continual consolidation"));
      }
    }
    torch::optim::SGD& optimizer = *optimizer_;
    optimizer.state().clear();
    auto& sgd = static_cast<torch::optim::SGDOptions&>(optimizer.param_groups()[0].options());
    sgd.lr(options.fit.lr).momentum(options.fit.momentum).weight_decay(options.fit.weight_decay);
    net.SetMode(options.freeze_batch_norm_stats ? split::TrainableNet::Mode::kTrainFrozenBatchNorm
                                                : split::TrainableNet::Mode::kTrain);
    Clock& clock = options.clock ? *options.clock : SystemClock();
    const int64_t start = clock.NowMicros();
    const int64_t batch = std::min<int64_t>(options.fit.batch_size, n);
    const int64_t steps_per_epoch = (n + batch - 1) / batch;  // keep the ragged last batch
    at::Generator& generator = generator_;
    generator.set_current_seed(options.seed);  // as a new generator with this seed
    const double mu = options.fit.proximal_mu;
    double loss_sum = 0;
    for (int epoch = 0; epoch < options.fit.local_epochs && !result.budget_hit; ++epoch) {
      const torch::Tensor order = torch::randperm(n, generator, torch::kLong);
      for (int64_t s = 0; s < steps_per_epoch; ++s) {
        if (options.cancelled && options.cancelled()) {
          return Status::FailedPrecondition("local training cancelled");
        }
        if ((options.fit.max_steps > 0 && result.steps >= options.fit.max_steps) ||
            (options.time_budget_micros > 0 &&
             clock.NowMicros() - start >= options.time_budget_micros)) {
          result.budget_hit = true;
          break;
        }
        const int64_t rows = std::min(batch, n - s * batch);
        if (rows < 2 && steps_per_epoch > 1) continue;  // BatchNorm needs two rows
        const torch::Tensor index = order.narrow(0, s * batch, rows);
        LabeledBatch step_rows = LabeledBatch::Hard(data.images.index_select(0, index),
                                                    data.labels.index_select(0, index));
        torch::Tensor loss, step_logits;
        if (options.continual) {
          StepLoss step = options.continual->Loss(*continual_model, step_rows);
          loss = step.loss;
          step_logits = step.logits;
        } else {
          loss = F::cross_entropy(net.Forward(step_rows.images), step_rows.labels);
        }
        const double value = loss.item<double>();
        if (mu > 0) {
          torch::Tensor prox = torch::zeros({}, torch::kFloat);
          for (size_t i = 0; i < params.size(); ++i) {
            prox = prox + (params[i] - anchors[i]).pow(2).sum();
          }
          loss = loss + 0.5 * mu * prox;
        }
        optimizer.zero_grad();
        loss.backward();
        optimizer.step();
        if (!std::isfinite(value)) {
          return Status::Internal("local training diverged: loss " + std::to_string(value) +
                                  " at step " + std::to_string(result.steps) +
                                  " (lower the learning rate)");
        }
        if (options.continual) {
          CLEAVE_RETURN_IF_ERROR(options.continual->Observe(step_rows, step_logits));
        }
        loss_sum += value;
        ++result.steps;
        result.samples += rows;
      }
    }
    for (auto& p : all_params) p.set_requires_grad(true);
    result.train_loss = result.steps > 0 ? loss_sum / result.steps : 0;
    result.seconds = (clock.NowMicros() - start) / 1e6;
    net.SetMode(split::TrainableNet::Mode::kEval);
    CopyOut(tensors_, result.weights);
    return result;
  };
  return split::CallTorch(split::TorchSource::kOwnState, "local training failed inside libtorch",
                          train);
}

Result<Evaluation> EvaluateWeights(split::TrainableNet& net, const Weights& weights,
                                   const split::ImageRows& data, int64_t batch) {
  if (data.size() == 0) return Status::InvalidArgument("evaluation: no data");
  const auto evaluate = [&]() -> Result<Evaluation> {
    CLEAVE_RETURN_IF_ERROR(SetWeights(net, weights).WithContext("evaluation"));
    torch::NoGradGuard no_grad;
    net.SetMode(split::TrainableNet::Mode::kEval);
    CLEAVE_ASSIGN_OR_RETURN(
        const torch::Tensor logits,
        split::BatchedRows(data, batch, [&](const torch::Tensor& x) { return net.Forward(x); }));
    Evaluation e;
    e.accuracy = split::Accuracy(logits, data.labels());
    e.loss = F::cross_entropy(logits, data.labels()).item<double>();
    return e;
  };
  return split::CallTorch(split::TorchSource::kOwnState, "evaluation failed inside libtorch",
                          evaluate);
}

}  // namespace cleave::federated
