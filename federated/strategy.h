// Federated aggregation strategies, shared verbatim by the aggregator service and `cleave sim`.
//
// A round: the engine samples clients and sends each the global weights plus FitConfig
// (which the strategy may adjust, e.g. FedProx's mu); clients train and return their
// locally trained weights; the engine validates every update and hands the good ones to the
// round's RoundAggregator one at a time; Finish() yields the aggregate, and Apply() turns
// it into the next global model (FedAvg: the aggregate itself; FedOpt: a server optimizer
// step on the pseudo-gradient aggregate - global).
//
// Only entries whose `trainable` mask bit is set take part; the others keep the global
// values (a round may train just the edge head and its exits).
//
// Strategies implemented (see strategy.cc for the exact rules and weighting):
//   fedavg        McMahan et al. 2017, weighted by example counts, streaming (O(model)).
//   fedprox       Li et al. 2020: FedAvg aggregation + client proximal term mu/2 ||w - w_g||^2.
//   fedadam, fedyogi, fedadagrad
//                 Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2: the
//                 weighted mean client delta is a pseudo-gradient for a server optimizer with
//                 learning rate eta, betas, and adaptivity tau; moments are server state.
//   fedmedian     Yin et al. 2018: coordinate-wise median (unweighted).
//   fedtrimmedavg Yin et al. 2018: coordinate-wise mean after dropping the beta fraction of
//                 largest and smallest values per coordinate (unweighted).
//   krum, multikrum
//                 Blanchard et al. 2017: score = sum of squared distances to the n - f - 2
//                 nearest other updates; Krum picks the lowest score, Multi-Krum averages
//                 the m lowest.
//   bulyan        El Mhamdi et al. 2018: theta = n - 2f updates chosen by repeated Krum, then
//                 per coordinate the mean of the theta - 2f values closest to their median;
//                 needs n >= 4f + 3 (unweighted).
//   dpfedavg      McMahan et al. 2018 client-level DP-FedAvg: per-update clipping, Gaussian
//                 noise on the server, optional adaptive clipping (Andrew et al. 2021), and an
//                 RDP accountant; see dp_fedavg.cc.
// Robust strategies need every update of the round at once (O(clients x model) memory).
//
// Norm bounding (Sun et al. 2019, "Can You Really Backdoor Federated Learning?"), with any
// strategy when StrategyConfig::norm_bound > 0: each update's delta from the global model
// (trainable entries, as one vector) is clipped to that L2 norm before aggregation.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "federated/weights.h"

namespace cleave::federated {

// What a client is told to do in a round (beside the weights themselves).
struct FitConfig {
  int local_epochs = 1;
  int batch_size = 32;
  double lr = 0.05;  // client SGD learning rate (momentum below)
  double momentum = 0.9;
  double weight_decay = 0;
  double proximal_mu = 0;  // FedProx; 0 = plain local SGD
  int64_t max_steps = 0;   // local step budget (0 = unlimited; the edge config may set one)
  nlohmann::json ToJson() const;
  static Result<FitConfig> FromJson(const nlohmann::json& json);
  // Rejects negative/non-finite values and zero epochs or batch size.
  Status Validate() const;
};

// One client's contribution to a round, already validated by the engine against the layout.
struct ClientUpdate {
  std::string client_id;
  int64_t num_examples = 0;  // > 0; the FedAvg weight
  Weights weights;           // locally trained values, full layout (untrained entries = global)
  double train_loss = 0;
  // Set only by an in-process caller that ran RoundEngine::CheckValues on exactly these
  // tensors (the simulator's workers do, in parallel, before the in-order submission);
  // updates decoded from the wire never set it.
  bool values_checked = false;
};

// One round's accumulator. Not thread-safe: one caller adds updates in turn.
class RoundAggregator {
 public:
  virtual ~RoundAggregator() = default;
  // Folds in one update (streaming strategies keep no reference to it; the robust ones keep
  // its trainable tensors, sharing storage, until Finish(): do not modify them in place).
  // InvalidArgument when num_examples <= 0 or the weights' count, shapes or dtype differ
  // from the round's global (values are not rescanned: the engine's Check did that).
  virtual Status Add(const ClientUpdate& update) = 0;
  // Updates added so far.
  virtual int count() const = 0;
  // The aggregate client model: trainable entries aggregated, the others equal to the
  // round's global weights. FailedPrecondition when nothing was added (or, for Krum, too
  // few updates for its f: n >= 2f + 3 is required). Succeeds at most once; Add() or
  // Finish() after a successful Finish() is FailedPrecondition.
  virtual Result<Weights> Finish() = 0;
};

// dpfedavg's parameters (dp_fedavg.cc).
struct DpConfig {
  double clip_norm = 1.0;         // C: L2 bound of each client's delta (initial C if adaptive)
  double noise_multiplier = 1.0;  // z: noise stddev on the sum = z * C (0 = no noise)
  bool adaptive_clip = false;     // Andrew et al. 2021 geometric clip-norm updates
  double target_quantile = 0.5;   // adaptive: share of updates that should be unclipped
  double clip_lr = 0.2;           // adaptive: eta of C <- C exp(-eta (b - target))
  double clip_count_stddev = 0;   // adaptive: noise on the unclipped count (0 = max(m/20, z))
  double delta = 1e-5;            // of the reported (epsilon, delta)
  int64_t seed = 0;               // noise generator seed (>= 0); 0 = from the OS (deployments)
};

struct StrategyConfig {
  std::string name = "fedavg";
  double proximal_mu = 0.01;  // fedprox
  // FedOpt (Reddi et al. defaults): server learning rate, moment decay, adaptivity.
  double server_lr = 0.01;
  double beta1 = 0.9;
  double beta2 = 0.99;
  double tau = 1e-3;
  double trim_fraction = 0.1;  // fedtrimmedavg: beta, cut from each end (< 0.5)
  int byzantine = 0;           // krum/multikrum/bulyan: f, assumed Byzantine clients
  int multikrum_keep = 0;      // multikrum: m (0 = n - f)
  DpConfig dp;                 // dpfedavg
  double norm_bound = 0;       // any strategy: L2 clip of each update's delta (0 = off)
  nlohmann::json ToJson() const;
  static Result<StrategyConfig> FromJson(const nlohmann::json& json);
  Status Validate() const;
};

// Client-side noise of differential privacy under secure aggregation ("distributed noise"):
// each client clips its delta to L2 norm `clip_norm` and adds Gaussian noise so that the
// noise of the sum has stddev noise_multiplier x clip_norm (federated/secure_round.h).
struct DistributedNoise {
  double clip_norm = 0;
  double noise_multiplier = 0;
};

class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string name() const = 0;
  // Adjusts what clients are told (FedProx sets proximal_mu). Default: unchanged.
  virtual void ConfigureFit(FitConfig& config) const { (void)config; }
  // A round opened with `sampled` of `population` available clients (the sampling rate that
  // differential-privacy accounting needs). Default: nothing.
  virtual void OnRoundStarted(int sampled, int population) {
    (void)sampled;
    (void)population;
  }
  // Facts about the round that just finished (clip norm, epsilon, ...), stored in the round
  // record's `extra["strategy"]`; null when there is nothing to say (the default).
  virtual nlohmann::json RoundReport() const { return nullptr; }
  // Secure rounds: the noise clients add themselves (dpfedavg); nullopt (the default) = none.
  virtual std::optional<DistributedNoise> SecureClientNoise() const { return std::nullopt; }
  // Secure rounds: the noisy sum of `contributors` of the round's `roster` clients was
  // released (dpfedavg accounts for it). Default: nothing.
  virtual Status OnSecureAggregate(int contributors, int roster) {
    (void)contributors;
    (void)roster;
    return Status::Ok();
  }
  // Starts aggregating a round whose clients started from `global`. `global` and `trainable`
  // must outlive the returned aggregator.
  virtual std::unique_ptr<RoundAggregator> BeginRound(const Weights& global,
                                                      const std::vector<bool>& trainable) = 0;
  // The next global model from the current one and the round's aggregate.
  virtual Result<Weights> Apply(const Weights& global, const Weights& aggregate,
                                const std::vector<bool>& trainable) = 0;
  // Server-side state for checkpoints (FedOpt moments, step count); empty when stateless.
  virtual std::vector<std::pair<std::string, torch::Tensor>> SaveState() const { return {}; }
  // Restores SaveState()'s output; InvalidArgument on unknown names or wrong shapes.
  virtual Status LoadState(const std::vector<std::pair<std::string, torch::Tensor>>& state);
};

// Names accepted by MakeStrategy, for --help texts.
const std::vector<std::string>& StrategyNames();
// InvalidArgument on an unknown name or invalid parameters.
Result<std::unique_ptr<Strategy>> MakeStrategy(const StrategyConfig& config);

}  // namespace cleave::federated
