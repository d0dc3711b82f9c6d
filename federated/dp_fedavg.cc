// Client-level differentially private FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning
// Differentially Private Recurrent Language Models", DP-FedAvg) with optional adaptive
// clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially Private Learning with
// Adaptive Clipping", Algorithm 1 with geometric updates).
//
// Per round, on the server:
//   1. each update's delta d_k = w_k - w_global (trainable entries, one L2 norm over all of
//      them) is clipped to norm C: d_k * min(1, C / ||d_k||);
//   2. the clipped deltas are summed and Gaussian noise N(0, (z_d C)^2) is added to every
//      coordinate of the sum; the noisy sum divided by the number of updates (treated as
//      public, as TensorFlow Federated does) is the mean delta, and the next global model is
//      w_global + mean delta (clients are weighted equally: the sensitivity of the sum to one
//      client is C whatever its example count);
//   3. adaptive clipping: the fraction b of updates whose norm was at most C, privatized as
//      (sum_k 1[||d_k|| <= C] + N(0, s_b^2)) / m, moves the clip norm geometrically towards
//      the target quantile g: C <- C * exp(-eta (b - g)). To keep the total noise multiplier
//      z, the update sum uses z_d = (z^-2 - (2 s_b)^-2)^(-1/2) (Andrew et al., Theorem 1);
//      s_b defaults to max(m/20, z) for the round's m updates (m/20 as the paper suggests,
//      but never so small that 2 s_b <= z, which would leave no budget for the updates).
// Privacy is accounted with the RDP accountant (federated/rdp_accountant.h) for the sampled
// Gaussian mechanism with q = the round's sampled clients / clients available and noise
// multiplier z, composed only for rounds whose noisy aggregate was released. The engine
// samples a fixed number of clients without replacement; the accountant's analysis is for
// Poisson sampling with the same rate, the usual approximation (also TensorFlow Federated's).
//
// Noise comes from a libtorch generator seeded from the OS (std::random_device) unless
// strategy.dp_seed is set, which only simulations and tests should do.
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <random>

#include "federated/rdp_accountant.h"
#include "federated/strategy_internal.h"
#include "split/torch_status.h"

namespace cleave::federated {

using split::CallTorch;
using split::TorchSource;

namespace {

using json = nlohmann::json;

struct DpState {
  DpConfig config;
  double clip_norm = 1.0;  // C for the next round
  dp::RdpAccountant accountant;
  at::Generator generator;
  double sampling_rate = 1.0;  // of the open round
  json report;                 // of the last finished round
};

class DpAggregator : public RoundAggregator {
 public:
  DpAggregator(const Weights& global, const std::vector<bool>& trainable, DpState& state)
      : global_(global),
        trainable_(trainable),
        state_(state),
        clip_(state.clip_norm),
        sums_(global.size()) {}

  Status Add(const ClientUpdate& update) override {
    if (finished_) return Status::FailedPrecondition("aggregator: Add() after Finish()");
    CLEAVE_RETURN_IF_ERROR(internal::CheckUpdate(update, global_, trainable_));
    return CallTorch(TorchSource::kOwnState, "dp-fedavg add", [&]() -> Status {
      Weights delta(global_.size());
      double squared = 0;
      for (size_t i = 0; i < global_.size(); ++i) {
        if (!trainable_[i]) continue;
        delta[i] = update.weights[i] - global_[i];
        squared += delta[i].pow(2).sum().item<double>();
      }
      const double norm = std::sqrt(squared);
      if (!std::isfinite(norm)) {
        return Status::InvalidArgument("update from client '" + update.client_id +
                                       "' has a non-finite norm");
      }
      const double factor = norm > clip_ ? clip_ / norm : 1.0;
      for (size_t i = 0; i < global_.size(); ++i) {
        if (!trainable_[i]) continue;
        if (sums_[i].defined()) {
          sums_[i].add_(delta[i], factor);
        } else {
          sums_[i] = delta[i].mul(factor).contiguous();
        }
      }
      below_ += norm <= clip_ ? 1 : 0;
      ++count_;
      return Status::Ok();
    });
  }

  int count() const override { return count_; }

  Result<Weights> Finish() override {
    if (finished_) return Status::FailedPrecondition("aggregator: Finish() called twice");
    if (count_ == 0) return Status::FailedPrecondition("aggregator: no updates were added");
    return CallTorch(TorchSource::kOwnState, "dp-fedavg finish", [&]() -> Result<Weights> {
      const DpConfig& c = state_.config;
      const double m = count_;
      double z_delta = c.noise_multiplier;
      double count_stddev = 0;
      if (c.adaptive_clip && c.noise_multiplier > 0) {
        // Andrew et al. suggest m/20; at least z, so that small rounds stay valid
        // (2 s_b > z) at the price of at most 15 % more noise on the update sum.
        count_stddev =
            c.clip_count_stddev > 0 ? c.clip_count_stddev : std::max(m / 20.0, c.noise_multiplier);
        const double rest = std::pow(c.noise_multiplier, -2) - std::pow(2 * count_stddev, -2);
        if (!(rest > 0)) {
          return Status::InvalidArgument(
              "dp-fedavg: the clip-count noise is too small for the noise multiplier (need "
              "2 * dp_clip_count_stddev > dp_noise_multiplier)");
        }
        z_delta = 1.0 / std::sqrt(rest);
      }
      const double stddev = z_delta * clip_;
      Weights out(global_.size());
      for (size_t i = 0; i < global_.size(); ++i) {
        if (!trainable_[i]) {
          out[i] = global_[i];
          continue;
        }
        torch::Tensor sum = sums_[i];
        if (stddev > 0) {
          sum.add_(torch::randn(sum.sizes(), state_.generator, torch::kFloat32), stddev);
        }
        out[i] = global_[i] + sum.div_(m);
      }
      sums_.clear();
      finished_ = true;
      // The noisy aggregate is released: account for it.
      CLEAVE_RETURN_IF_ERROR(state_.accountant.Compose(state_.sampling_rate, c.noise_multiplier));
      double next_clip = clip_;
      double noisy_below = below_ / m;
      if (c.adaptive_clip) {
        const double noise =
            count_stddev > 0
                ? torch::randn({1}, state_.generator, torch::kFloat64).item<double>() * count_stddev
                : 0.0;
        noisy_below = (below_ + noise) / m;
        next_clip = clip_ * std::exp(-c.clip_lr * (noisy_below - c.target_quantile));
        state_.clip_norm = next_clip;
      }
      CLEAVE_ASSIGN_OR_RETURN(dp::PrivacySpent spent, state_.accountant.Spent(c.delta));
      state_.report = {
          {"clip_norm", clip_},
          {"next_clip_norm", next_clip},
          {"noise_multiplier", c.noise_multiplier},
          {"update_noise_stddev", stddev},
          {"sampling_rate", state_.sampling_rate},
          {"unclipped_fraction", below_ / m},
          {"epsilon", std::isfinite(spent.epsilon) ? json(spent.epsilon) : json("inf")},
          {"delta", spent.delta},
          {"rdp_order", spent.order},
          {"accounted_rounds", state_.accountant.rounds()}};
      return out;
    });
  }

 private:
  const Weights& global_;
  const std::vector<bool>& trainable_;
  DpState& state_;
  const double clip_;
  Weights sums_;  // per trainable entry: the sum of clipped deltas (undefined until used)
  int count_ = 0;
  int below_ = 0;
  bool finished_ = false;
};

class DpFedAvgStrategy : public Strategy {
 public:
  explicit DpFedAvgStrategy(const DpConfig& config) {
    state_.config = config;
    state_.clip_norm = config.clip_norm;
    const uint64_t seed = config.seed > 0
                              ? static_cast<uint64_t>(config.seed)
                              : (uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
    state_.generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  }

  std::string name() const override { return "dpfedavg"; }

  void OnRoundStarted(int sampled, int population) override {
    state_.sampling_rate =
        population > 0 ? std::min(1.0, static_cast<double>(sampled) / population) : 1.0;
    state_.report = nullptr;
  }

  std::unique_ptr<RoundAggregator> BeginRound(const Weights& global,
                                              const std::vector<bool>& trainable) override {
    return std::make_unique<DpAggregator>(global, trainable, state_);
  }

  Result<Weights> Apply(const Weights& global, const Weights& aggregate,
                        const std::vector<bool>& trainable) override {
    CLEAVE_RETURN_IF_ERROR(internal::CheckMask(trainable, global));
    CLEAVE_RETURN_IF_ERROR(internal::CheckSameLayout(aggregate, global, "aggregate"));
    return internal::MergeWithGlobal(aggregate, global, trainable);
  }

  json RoundReport() const override {
    return state_.report.is_null() ? json(nullptr) : json{{"dp", state_.report}};
  }

  // Distributed noise (secure aggregation): every one of the round's n clients clips its own
  // delta to C and adds N(0, (z C)^2 / n) per coordinate, so the sum of all n carries
  // N(0, (z C)^2), the server-side mechanism's noise, without anyone seeing a clean update.
  // Only the k clients that finish contribute, so the released sum has noise multiplier
  // z sqrt(k / n), which is what is accounted (a dropout spends a little more privacy).
  // The noise is continuous Gaussian added before fixed-point encoding, not the discrete
  // Gaussian of Kairouz et al. 2021 (distributed DP with SecAgg); rounding to 2^-f is far
  // below its stddev. Adaptive clipping needs a privatized count per client and is refused
  // with secure aggregation (configuration checks).
  std::optional<DistributedNoise> SecureClientNoise() const override {
    return DistributedNoise{state_.clip_norm, state_.config.noise_multiplier};
  }

  Status OnSecureAggregate(int contributors, int roster) override {
    const DpConfig& c = state_.config;
    if (contributors <= 0 || roster <= 0 || contributors > roster) {
      return Status::InvalidArgument("dp-fedavg: " + std::to_string(contributors) + " of " +
                                     std::to_string(roster) + " clients contributed");
    }
    const double z = c.noise_multiplier * std::sqrt(static_cast<double>(contributors) / roster);
    CLEAVE_RETURN_IF_ERROR(state_.accountant.Compose(state_.sampling_rate, z));
    CLEAVE_ASSIGN_OR_RETURN(dp::PrivacySpent spent, state_.accountant.Spent(c.delta));
    state_.report = {{"clip_norm", state_.clip_norm},
                     {"noise_multiplier", c.noise_multiplier},
                     {"effective_noise_multiplier", z},
                     {"distributed_noise", true},
                     {"contributors", contributors},
                     {"roster", roster},
                     {"sampling_rate", state_.sampling_rate},
                     {"epsilon", std::isfinite(spent.epsilon) ? json(spent.epsilon) : json("inf")},
                     {"delta", spent.delta},
                     {"rdp_order", spent.order},
                     {"accounted_rounds", state_.accountant.rounds()}};
    return Status::Ok();
  }

  std::vector<std::pair<std::string, torch::Tensor>> SaveState() const override {
    const std::vector<double>& rdp = state_.accountant.rdp();
    torch::Tensor rdp_tensor = torch::empty({static_cast<int64_t>(rdp.size())}, torch::kFloat64);
    for (size_t i = 0; i < rdp.size(); ++i) rdp_tensor[static_cast<int64_t>(i)] = rdp[i];
    return {{"dp.clip_norm", torch::tensor({state_.clip_norm}, torch::kFloat64)},
            {"dp.rdp", rdp_tensor},
            {"dp.rounds",
             torch::tensor({static_cast<double>(state_.accountant.rounds())}, torch::kFloat64)}};
  }

  Status LoadState(const std::vector<std::pair<std::string, torch::Tensor>>& state) override {
    double clip = state_.clip_norm;
    std::optional<torch::Tensor> rdp;
    int64_t rounds = 0;
    for (const auto& [key, t] : state) {
      if (!t.defined() || t.dim() != 1) {
        return Status::InvalidArgument("dpfedavg state '" + key + "' is not a vector");
      }
      torch::Tensor d = t.to(torch::kFloat64).contiguous();
      if (key == "dp.clip_norm" && d.numel() == 1) {
        clip = d[0].item<double>();
      } else if (key == "dp.rdp" &&
                 d.numel() == static_cast<int64_t>(state_.accountant.orders().size())) {
        rdp = d;
      } else if (key == "dp.rounds" && d.numel() == 1) {
        rounds = static_cast<int64_t>(d[0].item<double>());
      } else {
        return Status::InvalidArgument("dpfedavg: unknown or malformed state entry '" + key + "'");
      }
    }
    if (!(clip > 0) || !std::isfinite(clip) || rounds < 0) {
      return Status::InvalidArgument("dpfedavg: invalid clip norm or round count in the state");
    }
    dp::RdpAccountant restored(state_.accountant.orders());
    if (rdp) {
      std::vector<double> values(state_.accountant.orders().size());
      for (size_t i = 0; i < values.size(); ++i) {
        // Checkpoints store float32 (federated/checkpoint.h); rounding to nearest may have
        // lowered the value by up to 2^-24 of it, so restore a bound that is never smaller.
        values[i] = (*rdp)[static_cast<int64_t>(i)].item<double>() * (1.0 + 1e-6);
        if (!(values[i] >= 0)) return Status::InvalidArgument("dpfedavg: negative RDP in state");
      }
      CLEAVE_RETURN_IF_ERROR(restored.Restore(std::move(values), rounds));
    }
    state_.accountant = std::move(restored);
    state_.clip_norm = clip;
    return Status::Ok();
  }

 private:
  DpState state_;
};

}  // namespace

namespace internal {
std::unique_ptr<Strategy> MakeDpFedAvg(const DpConfig& config) {
  return std::make_unique<DpFedAvgStrategy>(config);
}
}  // namespace internal

}  // namespace cleave::federated
