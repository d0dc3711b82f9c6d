// FedOpt: FedAdagrad, FedAdam and FedYogi (Reddi et al. 2021, "Adaptive Federated
// Optimization", ICLR, Algorithm 2).
//
// Each round the clients' weighted mean (weights = num_examples, streamed exactly as FedAvg)
// gives the pseudo-gradient Delta = mean_k(x_k) - x. Per coordinate, with server state m, v:
//   m <- beta1 m + (1 - beta1) Delta
//   v <- v + Delta^2                                          (FedAdagrad)
//   v <- beta2 v + (1 - beta2) Delta^2                        (FedAdam)
//   v <- v - (1 - beta2) Delta^2 sign(v - Delta^2)            (FedYogi)
//   x <- x + eta m / (sqrt(v) + tau)
// with m = 0 and v = tau^2 before the first round and no bias correction, as in the paper.
// Only trainable entries step; m and v exist for every entry so a later round that trains
// more of the model finds state of the right shape.
//
// State for checkpoints: "m.<i>" and "v.<i>" (i = layout index, float32, the entry's shape)
// and "step" (int64 scalar, rounds applied so far).
#include <cmath>
#include <map>

#include "federated/strategy_internal.h"
#include "split/torch_status.h"

namespace cleave::federated::internal {

using split::CallTorch;
using split::TorchSource;

namespace {

enum class FedOptVariant { kAdagrad, kAdam, kYogi };

// "m.12" -> ('m', 12); returns false for anything else.
bool ParseStateName(const std::string& name, char* kind, size_t* index) {
  if (name.size() < 3 || (name[0] != 'm' && name[0] != 'v') || name[1] != '.') return false;
  size_t value = 0;
  for (size_t i = 2; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || value > 100000000) return false;
    value = value * 10 + static_cast<size_t>(name[i] - '0');
  }
  if (name.size() > 3 && name[2] == '0') return false;  // one spelling per index
  *kind = name[0];
  *index = value;
  return true;
}

class FedOptStrategy : public Strategy {
 public:
  FedOptStrategy(std::string name, FedOptVariant variant, const StrategyConfig& config)
      : name_(std::move(name)),
        variant_(variant),
        eta_(config.server_lr),
        beta1_(config.beta1),
        beta2_(config.beta2),
        tau_(config.tau) {}

  std::string name() const override { return name_; }

  std::unique_ptr<RoundAggregator> BeginRound(const Weights& global,
                                              const std::vector<bool>& trainable) override {
    return MakeWeightedMeanAggregator(global, trainable);
  }

  Result<Weights> Apply(const Weights& global, const Weights& aggregate,
                        const std::vector<bool>& trainable) override {
    CLEAVE_RETURN_IF_ERROR(CheckMask(trainable, global));
    CLEAVE_RETURN_IF_ERROR(CheckSameLayout(global, global, "global model"));
    CLEAVE_RETURN_IF_ERROR(CheckSameLayout(aggregate, global, "aggregate"));
    if (!m_.empty()) {
      CLEAVE_RETURN_IF_ERROR(CheckSameLayout(m_, global, "server optimizer state")
                                 .WithContext(name_ + " (state from another model?)"));
    }
    return CallTorch(TorchSource::kOwnState, "server optimizer step", [&]() -> Result<Weights> {
      // New moments go to fresh tensors and replace the state only at the end, so a failed
      // step leaves the state as it was.
      Weights m = m_, v = v_;
      if (m.empty()) {
        for (const auto& g : global) {
          m.push_back(torch::zeros(g.sizes(), torch::kFloat32));
          v.push_back(torch::full(g.sizes(), tau_ * tau_, torch::kFloat32));
        }
      }
      Weights next(global.size());
      for (size_t i = 0; i < global.size(); ++i) {
        if (!trainable[i]) {
          next[i] = global[i];
          continue;
        }
        const torch::Tensor delta = aggregate[i] - global[i];
        const torch::Tensor delta_sq = delta * delta;
        m[i] = m[i] * beta1_ + delta * (1 - beta1_);
        switch (variant_) {
          case FedOptVariant::kAdagrad: v[i] = v[i] + delta_sq; break;
          case FedOptVariant::kAdam: v[i] = v[i] * beta2_ + delta_sq * (1 - beta2_); break;
          case FedOptVariant::kYogi:
            v[i] = v[i] - delta_sq * torch::sign(v[i] - delta_sq) * (1 - beta2_);
            break;
        }
        next[i] = torch::addcdiv(global[i], m[i], v[i].sqrt() + tau_, eta_);
      }
      m_ = std::move(m);
      v_ = std::move(v);
      ++step_;
      return next;
    });
  }

  std::vector<std::pair<std::string, torch::Tensor>> SaveState() const override {
    std::vector<std::pair<std::string, torch::Tensor>> state;
    if (m_.empty()) return state;
    // Clones: the caller may hold the snapshot while later rounds run.
    for (size_t i = 0; i < m_.size(); ++i) {
      state.emplace_back("m." + std::to_string(i), m_[i].clone());
      state.emplace_back("v." + std::to_string(i), v_[i].clone());
    }
    state.emplace_back("step", torch::tensor(step_, torch::kInt64));
    return state;
  }

  // All or nothing: the state changes only when every entry is valid. The loaded state
  // replaces the current one; its shapes are checked against the model at the next Apply().
  // An empty list resets to the initial state (m = 0, v = tau^2 at the next Apply).
  Status LoadState(const std::vector<std::pair<std::string, torch::Tensor>>& state) override {
    const std::string what = name_ + " state";
    if (state.empty()) {
      m_.clear();
      v_.clear();
      step_ = 0;
      return Status::Ok();
    }
    return CallTorch(TorchSource::kOwnState, "load optimizer state", [&]() -> Status {
      std::map<size_t, torch::Tensor> m, v;
      int64_t step = -1;
      for (const auto& [name, tensor] : state) {
        const std::string where = what + " entry '" + name + "'";
        if (!tensor.defined()) return Status::InvalidArgument(where + " is undefined");
        if (name == "step") {
          // Checkpoints carry every tensor as float32 (exact for counts below 2^24), so a
          // whole-valued float scalar is accepted as well as an int64 one.
          if (tensor.numel() != 1 || step >= 0) {
            return Status::InvalidArgument(where + ": expected one scalar >= 0");
          }
          const double value = tensor.to(torch::kDouble).item<double>();
          if (!(value >= 0) || value != std::floor(value) || value > 16777216.0) {
            return Status::InvalidArgument(where + ": expected a whole number in [0, 2^24]");
          }
          step = static_cast<int64_t>(value);
          continue;
        }
        char kind = 0;
        size_t index = 0;
        if (!ParseStateName(name, &kind, &index)) {
          return Status::InvalidArgument(where + ": unknown name (expected m.<i>, v.<i>, step)");
        }
        if (tensor.scalar_type() != torch::kFloat32 || !tensor.device().is_cpu()) {
          return Status::InvalidArgument(where + ": expected a float32 CPU tensor");
        }
        if (!torch::isfinite(tensor).all().item<bool>()) {
          return Status::InvalidArgument(where + ": non-finite values");
        }
        // v >= 0 always holds for these updates (Yogi's v stays above beta2 Delta^2).
        if (kind == 'v' && tensor.lt(0).any().item<bool>()) {
          return Status::InvalidArgument(where + ": negative second moment");
        }
        auto& slot = kind == 'm' ? m : v;
        if (!slot.emplace(index, tensor).second) {
          return Status::InvalidArgument(where + " appears twice");
        }
      }
      if (step < 0) return Status::InvalidArgument(what + ": missing 'step'");
      if (m.size() != v.size() || m.empty() || m.rbegin()->first != m.size() - 1) {
        return Status::InvalidArgument(what + ": need m.<i> and v.<i> for every i in [0, count)");
      }
      Weights new_m, new_v;
      for (const auto& [index, tensor] : m) {
        auto it = v.find(index);
        if (it == v.end()) {
          return Status::InvalidArgument(what + ": m." + std::to_string(index) + " has no v");
        }
        if (it->second.sizes() != tensor.sizes()) {
          return Status::InvalidArgument(what + ": m." + std::to_string(index) + " and v." +
                                         std::to_string(index) + " differ in shape");
        }
        new_m.push_back(tensor.clone(torch::MemoryFormat::Contiguous));
        new_v.push_back(it->second.clone(torch::MemoryFormat::Contiguous));
      }
      m_ = std::move(new_m);
      v_ = std::move(new_v);
      step_ = step;
      return Status::Ok();
    });
  }

 private:
  std::string name_;
  FedOptVariant variant_;
  double eta_, beta1_, beta2_, tau_;
  Weights m_, v_;  // per layout entry; empty before the first Apply
  int64_t step_ = 0;
};

}  // namespace

std::unique_ptr<Strategy> MakeFedOpt(const StrategyConfig& config) {
  FedOptVariant variant = FedOptVariant::kAdam;
  if (config.name == "fedadagrad") variant = FedOptVariant::kAdagrad;
  if (config.name == "fedyogi") variant = FedOptVariant::kYogi;
  return std::make_unique<FedOptStrategy>(config.name, variant, config);
}

}  // namespace cleave::federated::internal
