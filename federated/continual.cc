#include "federated/continual.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "split/torch_status.h"

namespace cleave::federated {

namespace F = torch::nn::functional;

namespace {

// ---------------------------------------------------------------- the TrainableNet adapter

class NetModel final : public ContinualModel {
 public:
  NetModel(split::TrainableNet& net, std::vector<bool> trainable, bool freeze_batch_norm)
      : net_(net), freeze_batch_norm_(freeze_batch_norm) {
    split::TrainableNet::Tensors t = net.Exchanged();
    for (size_t i = 0; i < t.num_parameters; ++i) {
      if (trainable.empty() || (i < trainable.size() && trainable[i])) {
        params_.push_back(t.tensors[i]);
      }
    }
  }
  torch::Tensor Forward(const torch::Tensor& images) override { return net_.Forward(images); }
  std::vector<torch::Tensor> Parameters() override { return params_; }
  Result<FrozenForward> Snapshot() override {
    CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<split::TrainableNet> copy, net_.Clone());
    std::shared_ptr<split::TrainableNet> frozen(std::move(copy));
    frozen->SetMode(split::TrainableNet::Mode::kEval);
    return FrozenForward([frozen](const torch::Tensor& x) {
      torch::NoGradGuard no_grad;
      return frozen->Forward(x);
    });
  }
  void SetTraining(bool training) override {
    using Mode = split::TrainableNet::Mode;
    net_.SetMode(!training ? Mode::kEval
                           : (freeze_batch_norm_ ? Mode::kTrainFrozenBatchNorm : Mode::kTrain));
  }

 private:
  split::TrainableNet& net_;
  bool freeze_batch_norm_;
  std::vector<torch::Tensor> params_;
};

// Logits [n, classes] or [n, heads, classes] as [n * heads, classes], and the number of heads.
std::pair<torch::Tensor, int64_t> Flat(const torch::Tensor& logits) {
  if (logits.dim() == 2) return {logits, 1};
  return {logits.reshape({-1, logits.size(-1)}), logits.size(1)};
}
// Per-row tensor repeated for each head (row-major: row r's heads are adjacent).
torch::Tensor PerHead(const torch::Tensor& t, int64_t heads) {
  return heads == 1 ? t : t.repeat_interleave(heads, 0);
}

// Li & Hoiem's L_old: cross-entropy between the tempered teacher and student distributions.
torch::Tensor TemperedCrossEntropy(const torch::Tensor& student, const torch::Tensor& teacher,
                                   double temperature) {
  const torch::Tensor target = F::softmax(teacher / temperature, F::SoftmaxFuncOptions(-1));
  return -(target * F::log_softmax(student / temperature, F::LogSoftmaxFuncOptions(-1)))
              .sum(-1)
              .mean();
}

// ---------------------------------------------------------------- strategies

class Naive : public ContinualStrategy {
 public:
  explicit Naive(const ContinualConfig& config) : config_(config) {}
  std::string name() const override { return "naive"; }
  StepLoss Loss(ContinualModel& model, const LabeledBatch& batch) override {
    torch::Tensor logits = model.Forward(batch.images);
    return {LabeledLoss(logits, batch, config_.kd_temperature), logits.detach()};
  }

 protected:
  ContinualConfig config_;
};

// Experience replay: the step's rows and as many buffer rows, one forward, one loss.
class ExperienceReplay final : public Naive {
 public:
  ExperienceReplay(const ContinualConfig& config, ReplayBuffer buffer)
      : Naive(config), buffer_(std::move(buffer)) {}
  std::string name() const override { return "er"; }
  StepLoss Loss(ContinualModel& model, const LabeledBatch& batch) override {
    const int64_t n = batch.size();
    const LabeledBatch replay = buffer_.Sample(config_.replay_batch > 0 ? config_.replay_batch : n);
    if (replay.size() == 0) return Naive::Loss(model, batch);
    const LabeledBatch both = LabeledBatch::Concat(Unify(batch, replay), Unify(replay, batch));
    torch::Tensor logits = model.Forward(both.images);
    return {LabeledLoss(logits, both, config_.kd_temperature), logits.narrow(0, 0, n).detach()};
  }
  Status Observe(const LabeledBatch& batch, const torch::Tensor& logits) override {
    (void)logits;
    return buffer_.Add(batch);
  }
  ReplayBuffer* buffer() override { return &buffer_; }

  // `a` with soft labels shaped like `b`'s (all-false mask) when only `b` has them, so the
  // concatenation keeps every row's teacher.
  static LabeledBatch Unify(const LabeledBatch& a, const LabeledBatch& b) {
    LabeledBatch out = a;
    if (!a.soft.defined() && b.soft.defined()) {
      out.soft = torch::zeros({a.size(), b.soft.size(1)}, torch::kFloat);
      out.has_soft = torch::zeros({a.size()}, torch::kBool);
    }
    return out;
  }

 private:
  ReplayBuffer buffer_;
};

class OnlineEwc final : public Naive {
 public:
  using Naive::Naive;
  std::string name() const override { return "ewc"; }
  Status Consolidate(ContinualModel& model, const LabeledBatch& finished) override {
    if (finished.size() == 0) return Status::Ok();
    std::vector<torch::Tensor> params = model.Parameters();
    // Empirical Fisher: the mean over rows of the squared gradient of the row's
    // log-likelihood, at the boundary's parameters, one row at a time.
    std::vector<torch::Tensor> fisher;
    for (const auto& p : params) fisher.push_back(torch::zeros_like(p));
    const int64_t rows = std::min(finished.size(), config_.ewc_samples);
    model.SetTraining(false);
    for (int64_t r = 0; r < rows; ++r) {
      const LabeledBatch one = finished.Select(torch::tensor({r}, torch::kLong));
      const torch::Tensor loss =
          LabeledLoss(model.Forward(one.images), one, config_.kd_temperature);
      const std::vector<torch::Tensor> grads =
          torch::autograd::grad({loss}, params, {}, false, false, true);
      for (size_t i = 0; i < params.size(); ++i) {
        if (grads[i].defined()) fisher[i].add_(grads[i].detach().pow(2));
      }
    }
    for (auto& f : fisher) f.div_(static_cast<double>(rows));
    if (fisher_.empty()) {
      fisher_ = std::move(fisher);
    } else {
      for (size_t i = 0; i < fisher_.size(); ++i) {
        fisher_[i].mul_(config_.ewc_gamma).add_(fisher[i]);
      }
    }
    anchor_.clear();
    for (const auto& p : params) anchor_.push_back(p.detach().clone());
    return Status::Ok();
  }
  StepLoss Loss(ContinualModel& model, const LabeledBatch& batch) override {
    StepLoss step = Naive::Loss(model, batch);
    if (!fisher_.empty()) step.loss = step.loss + Penalty(model.Parameters());
    return step;
  }
  torch::Tensor Penalty(const std::vector<torch::Tensor>& params) const {
    torch::Tensor sum = torch::zeros({}, torch::kFloat);
    for (size_t i = 0; i < params.size() && i < fisher_.size(); ++i) {
      sum = sum + (fisher_[i] * (params[i] - anchor_[i]).pow(2)).sum();
    }
    return 0.5 * config_.ewc_lambda * sum;
  }

 private:
  std::vector<torch::Tensor> fisher_, anchor_;
};

class LearningWithoutForgetting final : public Naive {
 public:
  using Naive::Naive;
  std::string name() const override { return "lwf"; }
  Status Consolidate(ContinualModel& model, const LabeledBatch& finished) override {
    if (finished.size() > 0) {
      torch::Tensor classes = finished.labels;
      if (finished.soft.defined()) {
        classes = torch::where(classes.ge(0), classes, finished.soft.argmax(1));
      }
      for (int64_t c : std::vector<int64_t>(classes.data_ptr<int64_t>(),
                                            classes.data_ptr<int64_t>() + classes.numel())) {
        if (c >= 0) old_classes_.insert(c);
      }
    }
    CLEAVE_ASSIGN_OR_RETURN(teacher_, model.Snapshot());
    return Status::Ok();
  }
  StepLoss Loss(ContinualModel& model, const LabeledBatch& batch) override {
    torch::Tensor logits = model.Forward(batch.images);
    torch::Tensor loss = LabeledLoss(logits, batch, config_.kd_temperature);
    if (teacher_ && !old_classes_.empty()) {
      const torch::Tensor old = teacher_(batch.images);
      const torch::Tensor index = torch::tensor(
          std::vector<int64_t>(old_classes_.begin(), old_classes_.end()), torch::kLong);
      const torch::Tensor s = Flat(logits).first.index_select(1, index);
      const torch::Tensor t = Flat(old).first.index_select(1, index);
      loss = loss + config_.lwf_alpha * TemperedCrossEntropy(s, t, config_.lwf_temperature);
    }
    return {loss, logits.detach()};
  }

 private:
  ContinualModel::FrozenForward teacher_;
  std::set<int64_t> old_classes_;
};

class DerPlusPlus final : public Naive {
 public:
  DerPlusPlus(const ContinualConfig& config, ReplayBuffer buffer)
      : Naive(config), buffer_(std::move(buffer)) {}
  std::string name() const override { return "derpp"; }
  StepLoss Loss(ContinualModel& model, const LabeledBatch& batch) override {
    StepLoss step = Naive::Loss(model, batch);
    const int64_t m = config_.replay_batch > 0 ? config_.replay_batch : batch.size();
    if (buffer_.size() == 0) return step;
    // alpha: the stored logits of one draw (rows stored without logits do not count).
    const LabeledBatch a = buffer_.Sample(m);
    const torch::Tensor mask = a.has_logits.to(torch::kFloat);
    if (mask.sum().item<double>() > 0) {
      const torch::Tensor out = model.Forward(a.images);
      const torch::Tensor target = a.logits.reshape(out.sizes());
      const torch::Tensor per_row = (out - target).pow(2).reshape({a.size(), -1}).mean(1);
      step.loss = step.loss + config_.derpp_alpha * (per_row * mask).sum() / mask.sum();
    }
    // beta: the labels of another draw.
    const LabeledBatch b = buffer_.Sample(m);
    step.loss = step.loss + config_.derpp_beta *
                                LabeledLoss(model.Forward(b.images), b, config_.kd_temperature);
    return step;
  }
  Status Observe(const LabeledBatch& batch, const torch::Tensor& logits) override {
    LabeledBatch with = batch;
    with.logits = logits.detach();
    with.has_logits = torch::ones({batch.size()}, torch::kBool);
    return buffer_.Add(with);
  }
  ReplayBuffer* buffer() override { return &buffer_; }

 private:
  ReplayBuffer buffer_;
};

bool Finite(double v) { return std::isfinite(v); }

}  // namespace

std::unique_ptr<ContinualModel> ContinualModelOf(split::TrainableNet& net,
                                                 std::vector<bool> trainable,
                                                 bool freeze_batch_norm) {
  return std::make_unique<NetModel>(net, std::move(trainable), freeze_batch_norm);
}

// ---------------------------------------------------------------- config

const std::vector<std::string>& ContinualStrategyNames() {
  static const std::vector<std::string> names{"naive", "er", "ewc", "lwf", "derpp"};
  return names;
}

nlohmann::json ContinualConfig::ToJson() const {
  return {{"strategy", strategy},
          {"buffer_size", replay.capacity},
          {"buffer_max_bytes", replay.max_bytes},
          {"class_balanced", replay.class_balanced},
          {"replay_batch", replay_batch},
          {"ewc_lambda", ewc_lambda},
          {"ewc_gamma", ewc_gamma},
          {"ewc_samples", ewc_samples},
          {"lwf_alpha", lwf_alpha},
          {"lwf_temperature", lwf_temperature},
          {"derpp_alpha", derpp_alpha},
          {"derpp_beta", derpp_beta},
          {"kd_temperature", kd_temperature}};
}

Result<ContinualConfig> ContinualConfig::FromJson(const nlohmann::json& json) {
  if (!json.is_object()) return Status::InvalidArgument("continual config: not an object");
  ContinualConfig c;
  try {
    c.strategy = json.value("strategy", c.strategy);
    c.replay.capacity = json.value("buffer_size", c.replay.capacity);
    c.replay.max_bytes = json.value("buffer_max_bytes", c.replay.max_bytes);
    c.replay.class_balanced = json.value("class_balanced", c.replay.class_balanced);
    c.replay_batch = json.value("replay_batch", c.replay_batch);
    c.ewc_lambda = json.value("ewc_lambda", c.ewc_lambda);
    c.ewc_gamma = json.value("ewc_gamma", c.ewc_gamma);
    c.ewc_samples = json.value("ewc_samples", c.ewc_samples);
    c.lwf_alpha = json.value("lwf_alpha", c.lwf_alpha);
    c.lwf_temperature = json.value("lwf_temperature", c.lwf_temperature);
    c.derpp_alpha = json.value("derpp_alpha", c.derpp_alpha);
    c.derpp_beta = json.value("derpp_beta", c.derpp_beta);
    c.kd_temperature = json.value("kd_temperature", c.kd_temperature);
  } catch (const nlohmann::json::exception& e) {
    return Status::InvalidArgument(std::string("continual config: ") + e.what());
  }
  CLEAVE_RETURN_IF_ERROR(c.Validate());
  return c;
}

Status ContinualConfig::Validate() const {
  const auto& names = ContinualStrategyNames();
  if (std::find(names.begin(), names.end(), strategy) == names.end()) {
    return Status::InvalidArgument("continual strategy '" + strategy +
                                   "' is not one of naive, er, ewc, lwf, derpp");
  }
  CLEAVE_RETURN_IF_ERROR(replay.Validate());
  const auto check = [](double v, const char* name, bool positive) -> Status {
    if (!Finite(v) || v < 0 || (positive && v == 0)) {
      return Status::InvalidArgument(std::string("continual: ") + name + " must be " +
                                     (positive ? "> 0" : ">= 0") + ", got " + std::to_string(v));
    }
    return Status::Ok();
  };
  CLEAVE_RETURN_IF_ERROR(check(ewc_lambda, "ewc_lambda", false));
  CLEAVE_RETURN_IF_ERROR(check(ewc_gamma, "ewc_gamma", false));
  if (ewc_gamma > 1) return Status::InvalidArgument("continual: ewc_gamma must be <= 1");
  CLEAVE_RETURN_IF_ERROR(check(lwf_alpha, "lwf_alpha", false));
  CLEAVE_RETURN_IF_ERROR(check(lwf_temperature, "lwf_temperature", true));
  CLEAVE_RETURN_IF_ERROR(check(derpp_alpha, "derpp_alpha", false));
  CLEAVE_RETURN_IF_ERROR(check(derpp_beta, "derpp_beta", false));
  CLEAVE_RETURN_IF_ERROR(check(kd_temperature, "kd_temperature", true));
  if (replay_batch < 0) return Status::InvalidArgument("continual: replay_batch must be >= 0");
  if (ewc_samples < 1) return Status::InvalidArgument("continual: ewc_samples must be >= 1");
  return Status::Ok();
}

Result<std::unique_ptr<ContinualStrategy>> MakeContinualStrategy(
    const ContinualConfig& config, std::optional<ReplayBuffer> buffer) {
  CLEAVE_RETURN_IF_ERROR(config.Validate());
  ReplayBuffer b = buffer ? std::move(*buffer) : ReplayBuffer(config.replay);
  if (config.strategy == "er") return {std::make_unique<ExperienceReplay>(config, std::move(b))};
  if (config.strategy == "derpp") return {std::make_unique<DerPlusPlus>(config, std::move(b))};
  if (config.strategy == "ewc") return {std::make_unique<OnlineEwc>(config)};
  if (config.strategy == "lwf") return {std::make_unique<LearningWithoutForgetting>(config)};
  return {std::make_unique<Naive>(config)};
}

// ---------------------------------------------------------------- losses and training

torch::Tensor LabeledLoss(const torch::Tensor& logits, const LabeledBatch& batch,
                          double kd_temperature) {
  auto [flat, heads] = Flat(logits);
  const torch::Tensor labels = PerHead(batch.labels, heads);
  const torch::Tensor hard = labels.ge(0);
  torch::Tensor per_row = torch::zeros({flat.size(0)}, torch::kFloat);
  if (hard.any().item<bool>()) {
    per_row = per_row + F::cross_entropy(flat, labels.clamp_min(0),
                                         F::CrossEntropyFuncOptions().reduction(torch::kNone)) *
                            hard.to(torch::kFloat);
  }
  if (batch.soft.defined()) {
    const torch::Tensor soft_rows = PerHead(batch.has_soft, heads).logical_and(hard.logical_not());
    if (soft_rows.any().item<bool>()) {
      const double t = kd_temperature;
      const torch::Tensor target =
          F::softmax(PerHead(batch.soft, heads) / t, F::SoftmaxFuncOptions(-1));
      const torch::Tensor kl = (target * (torch::log(target.clamp_min(1e-12)) -
                                          F::log_softmax(flat / t, F::LogSoftmaxFuncOptions(-1))))
                                   .sum(-1);
      per_row = per_row + t * t * kl * soft_rows.to(torch::kFloat);
    }
  }
  return per_row.mean();
}

Result<ExperienceResult> TrainExperience(ContinualModel& model, ContinualStrategy& strategy,
                                         const LabeledBatch& data,
                                         const ExperienceOptions& options) {
  const int64_t n = data.size();
  if (n == 0) return Status::InvalidArgument("continual training: the experience has no data");
  if (options.epochs < 1 || options.batch_size < 1 || !Finite(options.lr) || options.lr <= 0 ||
      !Finite(options.max_grad_norm) || options.max_grad_norm < 0 || !Finite(options.momentum) ||
      options.momentum < 0 || !Finite(options.weight_decay) || options.weight_decay < 0) {
    return Status::InvalidArgument(
        "continual training: epochs and batch size must be >= 1, lr > 0, momentum and weight "
        "decay >= 0");
  }
  return split::CallTorch(
      split::TorchSource::kOwnState, "continual training failed inside libtorch",
      [&]() -> Result<ExperienceResult> {
        std::vector<torch::Tensor> params = model.Parameters();
        if (params.empty()) {
          return Status::InvalidArgument("continual training: nothing is trainable");
        }
        for (auto& p : params) p.set_requires_grad(true);
        torch::optim::SGD optimizer(params, torch::optim::SGDOptions(options.lr)
                                                .momentum(options.momentum)
                                                .weight_decay(options.weight_decay));
        auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);
        Clock& clock = options.clock ? *options.clock : SystemClock();
        const int64_t start = clock.NowMicros();
        const int64_t batch = std::min(options.batch_size, n);
        const int64_t steps_per_epoch = (n + batch - 1) / batch;
        ExperienceResult result;
        double loss_sum = 0;
        model.SetTraining(true);
        for (int epoch = 0; epoch < options.epochs && !result.budget_hit; ++epoch) {
          const torch::Tensor order = torch::randperm(n, generator, torch::kLong);
          for (int64_t s = 0; s < steps_per_epoch; ++s) {
            if (options.cancelled && options.cancelled()) {
              model.SetTraining(false);
              return Status::FailedPrecondition("continual training cancelled");
            }
            if ((options.max_steps > 0 && result.steps >= options.max_steps) ||
                (options.time_budget_micros > 0 &&
                 clock.NowMicros() - start >= options.time_budget_micros)) {
              result.budget_hit = true;
              break;
            }
            const int64_t rows = std::min(batch, n - s * batch);
            const LabeledBatch step_rows = data.Select(order.narrow(0, s * batch, rows));
            StepLoss step = strategy.Loss(model, step_rows);
            torch::Tensor loss = step.loss;
            if (torch::Tensor aux = model.AuxiliaryLoss(step_rows.images); aux.defined()) {
              loss = loss + aux;
            }
            const double value = loss.item<double>();
            if (!Finite(value)) {
              model.SetTraining(false);
              return Status::Internal("continual training diverged: loss " + std::to_string(value) +
                                      " at step " + std::to_string(result.steps) +
                                      " (lower the learning rate)");
            }
            optimizer.zero_grad();
            loss.backward();
            if (options.max_grad_norm > 0) {
              torch::nn::utils::clip_grad_norm_(params, options.max_grad_norm);
            }
            optimizer.step();
            // Each row is offered to the strategy's buffer once per experience (in the first
            // epoch), so more epochs do not fill the reservoir with copies.
            if (epoch == 0) CLEAVE_RETURN_IF_ERROR(strategy.Observe(step_rows, step.logits));
            loss_sum += value;
            ++result.steps;
            result.samples += rows;
            if (options.on_steps && options.callback_every > 0 &&
                result.steps % options.callback_every == 0) {
              model.SetTraining(false);
              options.on_steps(result.steps);
              model.SetTraining(true);
            }
          }
        }
        model.SetTraining(false);
        if (options.on_steps &&
            (options.callback_every <= 0 || result.steps % options.callback_every != 0)) {
          options.on_steps(result.steps);
        }
        result.mean_loss = result.steps > 0 ? loss_sum / result.steps : 0;
        result.seconds = (clock.NowMicros() - start) / 1e6;
        return result;
      });
}

}  // namespace cleave::federated
