// Pieces shared by the strategy implementations (strategy.cc, fedopt.cc,
// robust_aggregation.cc). Not part of the public API: include only from federated/*.cc.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "federated/strategy.h"
#include "federated/weights.h"

namespace cleave::federated::internal {

// OK when `w` has `global`'s tensor count and shapes and every tensor is a defined float32
// CPU tensor. Values are not scanned (the engine's WeightsLayout::Check does that once per
// update; scanning again would double the memory traffic of streaming aggregation).
// InvalidArgument naming `what` and the first offending index otherwise.
Status CheckSameLayout(const Weights& w, const Weights& global, const std::string& what);

// InvalidArgument unless `trainable` has one bit per `global` entry.
Status CheckMask(const std::vector<bool>& trainable, const Weights& global);

// Everything Add() checks before folding `update` in: the mask, num_examples > 0 and the
// layout against the round's `global`.
Status CheckUpdate(const ClientUpdate& update, const Weights& global,
                   const std::vector<bool>& trainable);

// `aggregate` on trainable entries and `global` elsewhere (shared storage, no copies).
// Preconditions: all three have the same size.
Weights MergeWithGlobal(const Weights& aggregate, const Weights& global,
                        const std::vector<bool>& trainable);

// The streaming weighted mean of the clients' trainable tensors, weighted by num_examples
// (FedAvg, McMahan et al. 2017). One float32 accumulator per trainable tensor: memory is
// O(model) whatever the number of clients and no update is referenced after Add() returns.
// `global` and `trainable` must outlive the aggregator.
std::unique_ptr<RoundAggregator> MakeWeightedMeanAggregator(const Weights& global,
                                                            const std::vector<bool>& trainable);

// Factories for the strategies defined in their own files. `config` is already validated.
std::unique_ptr<Strategy> MakeFedOpt(const StrategyConfig& config);  // fedopt.cc
std::unique_ptr<Strategy> MakeFedMedian();                           // robust_aggregation.cc
std::unique_ptr<Strategy> MakeFedTrimmedAvg(double trim_fraction);   // robust_aggregation.cc
std::unique_ptr<Strategy> MakeKrum(int byzantine, int multikrum_keep,
                                   bool multi);                  // robust_aggregation.cc
std::unique_ptr<Strategy> MakeDpFedAvg(const DpConfig& config);  // dp_fedavg.cc
std::unique_ptr<Strategy> MakeBulyan(int byzantine);             // robust_aggregation.cc
// `inner` with every update's delta clipped to L2 norm <= norm_bound (> 0) before
// aggregation (Sun et al. 2019); otherwise behaves as `inner`. norm_bound.cc.
std::unique_ptr<Strategy> WithNormBound(std::unique_ptr<Strategy> inner, double norm_bound);

}  // namespace cleave::federated::internal
