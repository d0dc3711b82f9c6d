// Norm bounding (Sun, Kairouz, Suresh, McMahan 2019, "Can You Really Backdoor Federated
// Learning?", arXiv:1911.07963): the server clips every client's update delta
// (update - global over the trainable entries, flattened into one vector) to L2 norm at most
// M before aggregation: delta <- delta * min(1, M / ||delta||). A boosted (scaled-up)
// malicious update then weighs no more than an honest one of norm M.
//
// It wraps any strategy: the wrapper's aggregator clips and forwards each update to the
// strategy's own aggregator, and everything else (name, FitConfig, Apply, state, reports)
// is the wrapped strategy's, so a run with norm bounding checkpoints and resumes like one
// without. The round report gains "norm_bound_clipped": how many updates were clipped.
#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "federated/strategy_internal.h"
#include "split/torch_status.h"

namespace cleave::federated::internal {

using split::CallTorch;
using split::TorchSource;

namespace {

class NormBoundAggregator : public RoundAggregator {
 public:
  // `global` and `trainable` must outlive the aggregator; `clipped` counts clipped updates.
  NormBoundAggregator(std::unique_ptr<RoundAggregator> inner, const Weights& global,
                      const std::vector<bool>& trainable, double bound,
                      std::shared_ptr<int> clipped)
      : inner_(std::move(inner)),
        global_(global),
        trainable_(trainable),
        bound_(bound),
        clipped_(std::move(clipped)) {}

  Status Add(const ClientUpdate& update) override {
    // The norm needs a well-formed update; the wrapped aggregator checks again (cheaply).
    CLEAVE_RETURN_IF_ERROR(CheckUpdate(update, global_, trainable_));
    return CallTorch(TorchSource::kOwnState, "norm bound", [&]() -> Status {
      double squared = 0;
      for (size_t i = 0; i < global_.size(); ++i) {
        if (!trainable_[i]) continue;
        const double norm = (update.weights[i] - global_[i]).norm().item<double>();
        squared += norm * norm;
      }
      const double norm = std::sqrt(squared);
      if (!(norm > bound_)) return inner_->Add(update);
      // The update's tensors stay untouched: the clipped copy gets its own.
      ClientUpdate clipped = update;
      const double factor = bound_ / norm;
      for (size_t i = 0; i < global_.size(); ++i) {
        if (!trainable_[i]) continue;
        clipped.weights[i] = torch::add(global_[i], update.weights[i] - global_[i], factor);
      }
      CLEAVE_RETURN_IF_ERROR(inner_->Add(clipped));
      ++*clipped_;
      return Status::Ok();
    });
  }

  int count() const override { return inner_->count(); }

  Result<Weights> Finish() override { return inner_->Finish(); }

 private:
  std::unique_ptr<RoundAggregator> inner_;
  const Weights& global_;
  const std::vector<bool>& trainable_;
  double bound_;
  std::shared_ptr<int> clipped_;
};

class NormBoundStrategy : public Strategy {
 public:
  NormBoundStrategy(std::unique_ptr<Strategy> inner, double bound)
      : inner_(std::move(inner)), bound_(bound) {}

  std::string name() const override { return inner_->name(); }
  void ConfigureFit(FitConfig& config) const override { inner_->ConfigureFit(config); }
  void OnRoundStarted(int sampled, int population) override {
    inner_->OnRoundStarted(sampled, population);
  }

  nlohmann::json RoundReport() const override {
    nlohmann::json report = inner_->RoundReport();
    if (report.is_null()) report = nlohmann::json::object();
    if (report.is_object()) report["norm_bound_clipped"] = *clipped_;
    return report;
  }

  std::unique_ptr<RoundAggregator> BeginRound(const Weights& global,
                                              const std::vector<bool>& trainable) override {
    clipped_ = std::make_shared<int>(0);
    return std::make_unique<NormBoundAggregator>(inner_->BeginRound(global, trainable), global,
                                                 trainable, bound_, clipped_);
  }

  Result<Weights> Apply(const Weights& global, const Weights& aggregate,
                        const std::vector<bool>& trainable) override {
    return inner_->Apply(global, aggregate, trainable);
  }

  std::vector<std::pair<std::string, torch::Tensor>> SaveState() const override {
    return inner_->SaveState();
  }
  Status LoadState(const std::vector<std::pair<std::string, torch::Tensor>>& state) override {
    return inner_->LoadState(state);
  }

 private:
  std::unique_ptr<Strategy> inner_;
  double bound_;
  std::shared_ptr<int> clipped_ = std::make_shared<int>(0);  // by the last round's aggregator
};

}  // namespace

std::unique_ptr<Strategy> WithNormBound(std::unique_ptr<Strategy> inner, double norm_bound) {
  return std::make_unique<NormBoundStrategy>(std::move(inner), norm_bound);
}

}  // namespace cleave::federated::internal
