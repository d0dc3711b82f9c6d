// Strategy configuration, the factory, the shared update checks, and the streaming weighted
// mean behind FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep
// Networks from Decentralized Data") and FedProx (Li et al. 2020, "Federated Optimization in
// Heterogeneous Networks"). FedOpt lives in fedopt.cc, the robust rules in
// robust_aggregation.cc.
#include "federated/strategy.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "federated/strategy_internal.h"
#include "split/torch_status.h"

namespace cleave::federated {

using split::CallTorch;
using split::TorchSource;

namespace {

using json = nlohmann::json;

// ---- JSON fields: every key optional (defaults stay), unknown keys and wrong types rejected.

struct JsonField {
  const char* key;
  std::function<Status(const json&)> read;
};

JsonField DoubleField(const char* key, double* out) {
  return {key, [key, out](const json& v) {
            if (!v.is_number()) {
              return Status::InvalidArgument(std::string(key) + ": expected a number");
            }
            *out = v.get<double>();
            return Status::Ok();
          }};
}

template <typename Int>
JsonField IntField(const char* key, Int* out) {
  return {key, [key, out](const json& v) {
            if (!v.is_number_integer()) {
              return Status::InvalidArgument(std::string(key) + ": expected an integer");
            }
            const bool fits =
                v.is_number_unsigned()
                    ? v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<Int>::max())
                    : v.get<int64_t>() >= std::numeric_limits<Int>::min() &&
                          v.get<int64_t>() <= std::numeric_limits<Int>::max();
            if (!fits) return Status::InvalidArgument(std::string(key) + ": out of range");
            *out = static_cast<Int>(v.get<int64_t>());
            return Status::Ok();
          }};
}

JsonField BoolField(const char* key, bool* out) {
  return {key, [key, out](const json& v) {
            if (!v.is_boolean()) {
              return Status::InvalidArgument(std::string(key) + ": expected true or false");
            }
            *out = v.get<bool>();
            return Status::Ok();
          }};
}

JsonField StringField(const char* key, std::string* out) {
  return {key, [key, out](const json& v) {
            if (!v.is_string()) {
              return Status::InvalidArgument(std::string(key) + ": expected a string");
            }
            *out = v.get<std::string>();
            return Status::Ok();
          }};
}

Status ReadFields(const json& j, const std::string& what, const std::vector<JsonField>& fields) {
  if (!j.is_object()) return Status::InvalidArgument(what + ": expected a JSON object");
  for (const auto& [key, value] : j.items()) {
    const JsonField* field = nullptr;
    for (const auto& f : fields) {
      if (key == f.key) field = &f;
    }
    if (field == nullptr) return Status::InvalidArgument(what + ": unknown key '" + key + "'");
    CLEAVE_RETURN_IF_ERROR(field->read(value).WithContext(what));
  }
  return Status::Ok();
}

// InvalidArgument unless lo <= x <= hi (or < hi when `hi_open`); NaN never passes.
Status CheckRange(const std::string& what, const char* key, double x, double lo, double hi,
                  bool hi_open = false) {
  const bool ok = std::isfinite(x) && x >= lo && (hi_open ? x < hi : x <= hi);
  if (ok) return Status::Ok();
  const char* close = hi_open ? ")" : "]";
  std::string hi_text = std::isinf(hi) ? "inf" : std::to_string(hi);
  return Status::InvalidArgument(what + ": " + key + " = " + std::to_string(x) + " is outside [" +
                                 std::to_string(lo) + ", " + hi_text + close);
}

// ---- FedAvg's streaming aggregator.

class WeightedMeanAggregator : public RoundAggregator {
 public:
  WeightedMeanAggregator(const Weights& global, const std::vector<bool>& trainable)
      : global_(global), trainable_(trainable) {}

  Status Add(const ClientUpdate& update) override {
    if (finished_) return Status::FailedPrecondition("aggregator: Add() after Finish()");
    CLEAVE_RETURN_IF_ERROR(internal::CheckUpdate(update, global_, trainable_));
    return CallTorch(TorchSource::kOwnState, "weighted mean", [&]() -> Status {
      if (sums_.empty()) sums_.resize(global_.size());
      const double weight = static_cast<double>(update.num_examples);
      for (size_t i = 0; i < global_.size(); ++i) {
        if (!trainable_[i]) continue;
        // sum += n_k * w_k, in place: one read of the update, one read-modify-write of the sum.
        if (!sums_[i].defined()) {
          sums_[i] = update.weights[i].mul(weight).contiguous();
        } else {
          sums_[i].add_(update.weights[i], weight);
        }
      }
      total_examples_ += weight;
      ++count_;
      return Status::Ok();
    });
  }

  int count() const override { return count_; }

  Result<Weights> Finish() override {
    if (finished_) return Status::FailedPrecondition("aggregator: Finish() called twice");
    if (count_ == 0) return Status::FailedPrecondition("aggregator: no updates were added");
    return CallTorch(TorchSource::kOwnState, "weighted mean", [&]() -> Result<Weights> {
      Weights out(global_.size());
      for (size_t i = 0; i < global_.size(); ++i) {
        out[i] = trainable_[i] ? sums_[i].div_(total_examples_) : global_[i];
      }
      sums_.clear();
      finished_ = true;
      return out;
    });
  }

 private:
  const Weights& global_;
  const std::vector<bool>& trainable_;
  Weights sums_;  // per trainable entry: sum_k n_k w_k (undefined until the first Add)
  double total_examples_ = 0;
  int count_ = 0;
  bool finished_ = false;
};

// FedAvg and FedProx aggregate identically; FedProx only tells clients to add the proximal
// term mu/2 ||w - w_global||^2 to their local loss (Li et al. 2020, eq. 2).
class FedAvgStrategy : public Strategy {
 public:
  FedAvgStrategy(std::string name, double proximal_mu)
      : name_(std::move(name)), proximal_mu_(proximal_mu) {}

  std::string name() const override { return name_; }

  void ConfigureFit(FitConfig& config) const override {
    if (name_ == "fedprox") config.proximal_mu = proximal_mu_;
  }

  std::unique_ptr<RoundAggregator> BeginRound(const Weights& global,
                                              const std::vector<bool>& trainable) override {
    return internal::MakeWeightedMeanAggregator(global, trainable);
  }

  Result<Weights> Apply(const Weights& global, const Weights& aggregate,
                        const std::vector<bool>& trainable) override {
    CLEAVE_RETURN_IF_ERROR(internal::CheckMask(trainable, global));
    CLEAVE_RETURN_IF_ERROR(internal::CheckSameLayout(aggregate, global, "aggregate"));
    return internal::MergeWithGlobal(aggregate, global, trainable);
  }

 private:
  std::string name_;
  double proximal_mu_;
};

}  // namespace

// ---- FitConfig

json FitConfig::ToJson() const {
  return {
      {"local_epochs", local_epochs}, {"batch_size", batch_size},     {"lr", lr},
      {"momentum", momentum},         {"weight_decay", weight_decay}, {"proximal_mu", proximal_mu},
      {"max_steps", max_steps}};
}

Result<FitConfig> FitConfig::FromJson(const json& j) {
  FitConfig c;
  CLEAVE_RETURN_IF_ERROR(ReadFields(
      j, "fit config",
      {IntField("local_epochs", &c.local_epochs), IntField("batch_size", &c.batch_size),
       DoubleField("lr", &c.lr), DoubleField("momentum", &c.momentum),
       DoubleField("weight_decay", &c.weight_decay), DoubleField("proximal_mu", &c.proximal_mu),
       IntField("max_steps", &c.max_steps)}));
  CLEAVE_RETURN_IF_ERROR(c.Validate());
  return c;
}

Status FitConfig::Validate() const {
  const std::string what = "fit config";
  const double inf = std::numeric_limits<double>::infinity();
  if (local_epochs < 1) return Status::InvalidArgument(what + ": local_epochs must be >= 1");
  if (batch_size < 1) return Status::InvalidArgument(what + ": batch_size must be >= 1");
  if (max_steps < 0) return Status::InvalidArgument(what + ": max_steps must be >= 0");
  CLEAVE_RETURN_IF_ERROR(CheckRange(what, "lr", lr, 0, inf));
  // Momentum >= 1 makes SGD's velocity grow without bound.
  CLEAVE_RETURN_IF_ERROR(CheckRange(what, "momentum", momentum, 0, 1, /*hi_open=*/true));
  CLEAVE_RETURN_IF_ERROR(CheckRange(what, "weight_decay", weight_decay, 0, inf));
  CLEAVE_RETURN_IF_ERROR(CheckRange(what, "proximal_mu", proximal_mu, 0, inf));
  return Status::Ok();
}

// ---- StrategyConfig

json StrategyConfig::ToJson() const {
  return {{"name", name},
          {"proximal_mu", proximal_mu},
          {"server_lr", server_lr},
          {"beta1", beta1},
          {"beta2", beta2},
          {"tau", tau},
          {"trim_fraction", trim_fraction},
          {"byzantine", byzantine},
          {"multikrum_keep", multikrum_keep},
          {"dp_clip_norm", dp.clip_norm},
          {"dp_noise_multiplier", dp.noise_multiplier},
          {"dp_adaptive_clip", dp.adaptive_clip},
          {"dp_target_quantile", dp.target_quantile},
          {"dp_clip_lr", dp.clip_lr},
          {"dp_clip_count_stddev", dp.clip_count_stddev},
          {"dp_delta", dp.delta},
          {"dp_seed", dp.seed},
          {"norm_bound", norm_bound}};
}

Result<StrategyConfig> StrategyConfig::FromJson(const json& j) {
  StrategyConfig c;
  CLEAVE_RETURN_IF_ERROR(ReadFields(
      j, "strategy config",
      {StringField("name", &c.name), DoubleField("proximal_mu", &c.proximal_mu),
       DoubleField("server_lr", &c.server_lr), DoubleField("beta1", &c.beta1),
       DoubleField("beta2", &c.beta2), DoubleField("tau", &c.tau),
       DoubleField("trim_fraction", &c.trim_fraction), IntField("byzantine", &c.byzantine),
       IntField("multikrum_keep", &c.multikrum_keep), DoubleField("dp_clip_norm", &c.dp.clip_norm),
       DoubleField("dp_noise_multiplier", &c.dp.noise_multiplier),
       BoolField("dp_adaptive_clip", &c.dp.adaptive_clip),
       DoubleField("dp_target_quantile", &c.dp.target_quantile),
       DoubleField("dp_clip_lr", &c.dp.clip_lr),
       DoubleField("dp_clip_count_stddev", &c.dp.clip_count_stddev),
       DoubleField("dp_delta", &c.dp.delta), IntField("dp_seed", &c.dp.seed),
       DoubleField("norm_bound", &c.norm_bound)}));
  CLEAVE_RETURN_IF_ERROR(c.Validate());
  return c;
}

// Every parameter is checked whatever the strategy, so a typo'd value never hides until
// someone switches strategies.
Status StrategyConfig::Validate() const {
  const std::string what = "strategy config";
  const auto& names = StrategyNames();
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    std::string known;
    for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
    return Status::InvalidArgument(what + ": unknown strategy '" + name + "' (known: " + known +
                                   ")");
  }
  const double inf = std::numeric_limits<double>::infinity();
  CLEAVE_RETURN_IF_ERROR(CheckRange(what, "proximal_mu", proximal_mu, 0, inf));
  if (!(server_lr > 0)) return Status::InvalidArgument(what + ": server_lr must be > 0");
  CLEAVE_RETURN_IF_ERROR(CheckRange(what, "server_lr", server_lr, 0, inf));
  CLEAVE_RETURN_IF_ERROR(CheckRange(what, "beta1", beta1, 0, 1, /*hi_open=*/true));
  CLEAVE_RETURN_IF_ERROR(CheckRange(what, "beta2", beta2, 0, 1, /*hi_open=*/true));
  if (!(tau > 0)) return Status::InvalidArgument(what + ": tau must be > 0");
  CLEAVE_RETURN_IF_ERROR(CheckRange(what, "tau", tau, 0, inf));
  CLEAVE_RETURN_IF_ERROR(CheckRange(what, "trim_fraction", trim_fraction, 0, 0.5,
                                    /*hi_open=*/true));
  if (byzantine < 0) return Status::InvalidArgument(what + ": byzantine must be >= 0");
  if (multikrum_keep < 0) return Status::InvalidArgument(what + ": multikrum_keep must be >= 0");
  if (!(dp.clip_norm > 0)) return Status::InvalidArgument(what + ": dp_clip_norm must be > 0");
  CLEAVE_RETURN_IF_ERROR(CheckRange(what, "dp_clip_norm", dp.clip_norm, 0, inf));
  CLEAVE_RETURN_IF_ERROR(CheckRange(what, "dp_noise_multiplier", dp.noise_multiplier, 0, inf));
  CLEAVE_RETURN_IF_ERROR(CheckRange(what, "dp_target_quantile", dp.target_quantile, 0, 1));
  CLEAVE_RETURN_IF_ERROR(CheckRange(what, "dp_clip_lr", dp.clip_lr, 0, inf));
  CLEAVE_RETURN_IF_ERROR(CheckRange(what, "dp_clip_count_stddev", dp.clip_count_stddev, 0, inf));
  if (dp.seed < 0) return Status::InvalidArgument(what + ": dp_seed must be >= 0");
  CLEAVE_RETURN_IF_ERROR(CheckRange(what, "norm_bound", norm_bound, 0, inf));
  if (!(dp.delta > 0 && dp.delta < 1)) {
    return Status::InvalidArgument(what + ": dp_delta must be in (0, 1)");
  }
  if (dp.adaptive_clip && dp.noise_multiplier > 0 && dp.clip_count_stddev > 0 &&
      !(2 * dp.clip_count_stddev > dp.noise_multiplier)) {
    return Status::InvalidArgument(
        what +
        ": dp_clip_count_stddev must exceed dp_noise_multiplier / 2 (Andrew et al. "
        "split the noise between the update sum and the unclipped count)");
  }
  return Status::Ok();
}

// ---- Strategy

Status Strategy::LoadState(const std::vector<std::pair<std::string, torch::Tensor>>& state) {
  if (state.empty()) return Status::Ok();
  return Status::InvalidArgument("strategy " + name() + " keeps no server state; unknown entry '" +
                                 state.front().first + "'");
}

const std::vector<std::string>& StrategyNames() {
  static const std::vector<std::string> names = {
      "fedavg",        "fedprox", "fedadam",   "fedyogi", "fedadagrad", "fedmedian",
      "fedtrimmedavg", "krum",    "multikrum", "bulyan",  "dpfedavg"};
  return names;
}

Result<std::unique_ptr<Strategy>> MakeStrategy(const StrategyConfig& config) {
  CLEAVE_RETURN_IF_ERROR(config.Validate());
  const std::string& n = config.name;
  std::unique_ptr<Strategy> strategy;
  if (n == "fedavg" || n == "fedprox") {
    strategy = std::make_unique<FedAvgStrategy>(n, config.proximal_mu);
  } else if (n == "fedadam" || n == "fedyogi" || n == "fedadagrad") {
    strategy = internal::MakeFedOpt(config);
  } else if (n == "fedmedian") {
    strategy = internal::MakeFedMedian();
  } else if (n == "fedtrimmedavg") {
    strategy = internal::MakeFedTrimmedAvg(config.trim_fraction);
  } else if (n == "krum" || n == "multikrum") {
    strategy = internal::MakeKrum(config.byzantine, config.multikrum_keep, n == "multikrum");
  } else if (n == "bulyan") {
    strategy = internal::MakeBulyan(config.byzantine);
  } else if (n == "dpfedavg") {
    strategy = internal::MakeDpFedAvg(config.dp);
  }
  if (!strategy) return Status::Internal("strategy '" + n + "' is listed but not constructed");
  if (config.norm_bound > 0) {
    strategy = internal::WithNormBound(std::move(strategy), config.norm_bound);
  }
  return strategy;
}

// ---- internal helpers

namespace internal {

Status CheckSameLayout(const Weights& w, const Weights& global, const std::string& what) {
  if (w.size() != global.size()) {
    return Status::InvalidArgument(what + " has " + std::to_string(w.size()) +
                                   " tensors, the round's model has " +
                                   std::to_string(global.size()));
  }
  for (size_t i = 0; i < w.size(); ++i) {
    const torch::Tensor& t = w[i];
    const std::string where = what + " tensor " + std::to_string(i);
    if (!t.defined()) return Status::InvalidArgument(where + " is undefined");
    if (t.scalar_type() != torch::kFloat32 || !t.device().is_cpu()) {
      return Status::InvalidArgument(where + " is not a float32 CPU tensor");
    }
    if (t.sizes() != global[i].sizes()) {
      return Status::InvalidArgument(where + " has shape " + c10::str(t.sizes()) +
                                     ", the round's model has " + c10::str(global[i].sizes()));
    }
  }
  return Status::Ok();
}

Status CheckMask(const std::vector<bool>& trainable, const Weights& global) {
  if (trainable.size() == global.size()) return Status::Ok();
  return Status::InvalidArgument("trainable mask has " + std::to_string(trainable.size()) +
                                 " entries, the round's model has " +
                                 std::to_string(global.size()));
}

Status CheckUpdate(const ClientUpdate& update, const Weights& global,
                   const std::vector<bool>& trainable) {
  CLEAVE_RETURN_IF_ERROR(CheckMask(trainable, global));
  const std::string who = "update from client '" + update.client_id + "'";
  if (update.num_examples <= 0) {
    return Status::InvalidArgument(who + ": num_examples must be > 0, got " +
                                   std::to_string(update.num_examples));
  }
  return CheckSameLayout(update.weights, global, who);
}

Weights MergeWithGlobal(const Weights& aggregate, const Weights& global,
                        const std::vector<bool>& trainable) {
  Weights out(global.size());
  for (size_t i = 0; i < global.size(); ++i) out[i] = trainable[i] ? aggregate[i] : global[i];
  return out;
}

std::unique_ptr<RoundAggregator> MakeWeightedMeanAggregator(const Weights& global,
                                                            const std::vector<bool>& trainable) {
  return std::make_unique<WeightedMeanAggregator>(global, trainable);
}

}  // namespace internal
}  // namespace cleave::federated
