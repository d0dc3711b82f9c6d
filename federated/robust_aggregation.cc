// Byzantine-robust aggregation rules. They need every update of the round at once, so their
// aggregators buffer the updates (sharing storage with them, no copy): O(clients x model).
//
//   fedmedian      Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
//                  Statistical Rates" (ICML), coordinate-wise median. Unweighted; an even
//                  count takes the mean of the two middle values.
//   fedtrimmedavg  Yin et al. 2018, coordinate-wise trimmed mean: per coordinate, sort the n
//                  values, drop k = floor(beta n) from each end, average the n - 2k left.
//                  Unweighted. beta < 0.5 keeps at least one value.
//   krum           Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
//                  Tolerant Gradient Descent" (NeurIPS). Over the trainable entries
//                  flattened into one vector per update, score(i) = sum of the squared
//                  distances from update i to its n - f - 2 nearest other updates; Krum
//                  returns the update with the lowest score (ties: the earliest added).
//   multikrum      Blanchard et al. 2017, Multi-Krum: the m lowest-scoring updates (scores
//                  computed once, as in the paper), averaged. Unlike the paper's plain mean we
//                  weight the selected updates by num_examples, as FedAvg does, so Multi-Krum
//                  with f = 0 and m = n equals FedAvg.
//   bulyan         El Mhamdi, Guerraoui, Rouault 2018, "The Hidden Vulnerability of
//                  Distributed Learning in Byzantium" (ICML), Bulyan over Krum. Selection:
//                  theta = n - 2f times, apply Krum (same f, same distances) to the updates
//                  not yet selected and move its choice into the selection. Aggregation: per
//                  coordinate, the beta = theta - 2f selected values closest to the selection's
//                  coordinate-wise median (fedmedian's median), averaged. Unweighted, as in the
//                  paper. The beta closest values are a window of the sorted values; of two
//                  equally close windows the lower one is taken.
// Krum's guarantee needs n > 2f + 2; Finish() enforces exactly that (n >= 2f + 3) and
// returns FailedPrecondition otherwise. Multi-Krum also needs 1 <= m <= n - f (m = n - f when
// multikrum_keep is 0): averaging more than n - f updates would have to include some of the
// f that may be Byzantine. Bulyan needs n >= 4f + 3 (so that beta >= 3), FailedPrecondition
// otherwise. Its later Krum selections run on sets of 2f + 1 or more updates, where the
// paper's n - f - 2 neighbours can drop below one: there one neighbour is used (as Flower
// does), and a lone remaining update is selected as it is.
#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "federated/strategy_internal.h"
#include "split/torch_status.h"

namespace cleave::federated::internal {

using split::CallTorch;
using split::TorchSource;

namespace {

// Coordinates per chunk so that a stacked chunk of all n updates stays near 1M values: the
// sort (values + int64 indices) and the distance Gram matrix then work in bounded memory.
int64_t ChunkColumns(size_t num_updates) {
  return std::max<int64_t>(1, (int64_t{1} << 20) / static_cast<int64_t>(num_updates));
}

// Krum's score of each of `candidates` (indices into the row-major n x n squared distances
// `d2`): the sum of its `neighbours` smallest squared distances to the other candidates.
// Preconditions: 0 <= neighbours < candidates.size().
std::vector<double> KrumScores(const std::vector<double>& d2, int n,
                               const std::vector<int>& candidates, int neighbours) {
  std::vector<double> scores;
  scores.reserve(candidates.size());
  std::vector<double> others;
  for (int a : candidates) {
    others.clear();
    for (int b : candidates) {
      if (b != a) others.push_back(d2[static_cast<size_t>(a) * n + b]);
    }
    std::partial_sort(others.begin(), others.begin() + neighbours, others.end());
    scores.push_back(std::accumulate(others.begin(), others.begin() + neighbours, 0.0));
  }
  return scores;
}

// Keeps every update of the round; subclasses reduce them in Finish().
class BufferingAggregator : public RoundAggregator {
 public:
  BufferingAggregator(const Weights& global, const std::vector<bool>& trainable)
      : global_(global), trainable_(trainable) {}

  Status Add(const ClientUpdate& update) override {
    if (finished_) return Status::FailedPrecondition("aggregator: Add() after Finish()");
    CLEAVE_RETURN_IF_ERROR(CheckUpdate(update, global_, trainable_));
    Buffered b;
    b.num_examples = update.num_examples;
    b.weights.resize(global_.size());
    for (size_t i = 0; i < global_.size(); ++i) {
      if (trainable_[i]) b.weights[i] = update.weights[i];
    }
    updates_.push_back(std::move(b));
    return Status::Ok();
  }

  int count() const override { return static_cast<int>(updates_.size()); }

  // A failed Finish() (e.g. too few updates for Krum) leaves the aggregator usable.
  Result<Weights> Finish() override {
    if (finished_) return Status::FailedPrecondition("aggregator: Finish() called twice");
    if (updates_.empty()) return Status::FailedPrecondition("aggregator: no updates were added");
    return CallTorch(TorchSource::kOwnState, "robust aggregation", [&]() -> Result<Weights> {
      CLEAVE_ASSIGN_OR_RETURN(Weights reduced, Reduce());
      finished_ = true;
      updates_.clear();
      return MergeWithGlobal(reduced, global_, trainable_);
    });
  }

 protected:
  struct Buffered {
    int64_t num_examples = 0;
    Weights weights;  // trainable entries only (undefined elsewhere), shared with the update
  };
  // The aggregate's trainable entries (others may be left undefined).
  virtual Result<Weights> Reduce() = 0;

  // Indices 0 .. count() - 1.
  std::vector<int> AllRows() const {
    std::vector<int> rows(updates_.size());
    std::iota(rows.begin(), rows.end(), 0);
    return rows;
  }

  // Flattened views of entry `i` of the buffered updates `rows`.
  std::vector<torch::Tensor> FlatEntry(size_t i, const std::vector<int>& rows) const {
    std::vector<torch::Tensor> flats;
    flats.reserve(rows.size());
    for (int k : rows) flats.push_back(updates_[k].weights[i].reshape({-1}));
    return flats;
  }

  // out[i] = reduce(values of coordinate c across the updates `rows`, sorted ascending) for
  // every trainable entry; `reduce` maps a sorted [rows, columns] chunk to [columns].
  Weights CoordinateWise(const std::function<torch::Tensor(const torch::Tensor&)>& reduce) {
    return CoordinateWise(reduce, AllRows());
  }
  Weights CoordinateWise(const std::function<torch::Tensor(const torch::Tensor&)>& reduce,
                         const std::vector<int>& rows) {
    Weights out(global_.size());
    const int64_t chunk = ChunkColumns(rows.size());
    for (size_t i = 0; i < global_.size(); ++i) {
      if (!trainable_[i]) continue;
      const std::vector<torch::Tensor> flats = FlatEntry(i, rows);
      torch::Tensor result = torch::empty({global_[i].numel()}, torch::kFloat32);
      for (int64_t begin = 0; begin < result.numel(); begin += chunk) {
        const int64_t len = std::min(chunk, result.numel() - begin);
        std::vector<torch::Tensor> columns;
        columns.reserve(flats.size());
        for (const auto& f : flats) columns.push_back(f.narrow(0, begin, len));
        const torch::Tensor sorted = std::get<0>(torch::stack(columns).sort(/*dim=*/0));
        result.narrow(0, begin, len).copy_(reduce(sorted));
      }
      out[i] = result.view(global_[i].sizes());
    }
    return out;
  }

  // Row-major n x n squared Euclidean distances over the trainable entries. Computed as
  // |a|^2 + |b|^2 - 2 a.b from a float64 Gram matrix of the updates minus the global model:
  // centring removes the large common part, so the subtraction loses no precision worth
  // having, and the Gram product runs as BLAS in bounded-size chunks.
  std::vector<double> SquaredDistances() const {
    const int64_t n = static_cast<int64_t>(updates_.size());
    torch::Tensor gram = torch::zeros({n, n}, torch::kFloat64);
    const int64_t chunk = ChunkColumns(updates_.size());
    for (size_t i = 0; i < global_.size(); ++i) {
      if (!trainable_[i]) continue;
      const std::vector<torch::Tensor> flats = FlatEntry(i, AllRows());
      const torch::Tensor centre = global_[i].reshape({-1});
      for (int64_t begin = 0; begin < centre.numel(); begin += chunk) {
        const int64_t len = std::min(chunk, centre.numel() - begin);
        std::vector<torch::Tensor> rows;
        rows.reserve(flats.size());
        for (const auto& f : flats) rows.push_back(f.narrow(0, begin, len));
        const torch::Tensor x = (torch::stack(rows).to(torch::kFloat64) -
                                 centre.narrow(0, begin, len).to(torch::kFloat64));
        gram.addmm_(x, x.t());
      }
    }
    const torch::Tensor norms = gram.diagonal();
    const torch::Tensor d2 = (norms.unsqueeze(1) + norms.unsqueeze(0) - gram * 2).clamp_min(0);
    const torch::Tensor flat = d2.contiguous().view({-1});
    return std::vector<double>(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
  }

  const Weights& global_;
  const std::vector<bool>& trainable_;
  std::vector<Buffered> updates_;

 private:
  bool finished_ = false;
};

class MedianAggregator : public BufferingAggregator {
 public:
  using BufferingAggregator::BufferingAggregator;

 private:
  Result<Weights> Reduce() override {
    const int64_t n = static_cast<int64_t>(updates_.size());
    return CoordinateWise([n](const torch::Tensor& sorted) {
      if (n % 2 == 1) return sorted[n / 2];
      return (sorted[n / 2 - 1] + sorted[n / 2]) * 0.5;
    });
  }
};

class TrimmedMeanAggregator : public BufferingAggregator {
 public:
  TrimmedMeanAggregator(const Weights& global, const std::vector<bool>& trainable, double beta)
      : BufferingAggregator(global, trainable), beta_(beta) {}

 private:
  Result<Weights> Reduce() override {
    const int64_t n = static_cast<int64_t>(updates_.size());
    // The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28. The clamp
    // keeps one value for beta just below 0.5.
    const int64_t k = std::min(static_cast<int64_t>(std::floor(beta_ * n + 1e-9)), (n - 1) / 2);
    return CoordinateWise([n, k](const torch::Tensor& sorted) {
      return sorted.narrow(0, k, n - 2 * k).mean(/*dim=*/0);
    });
  }

  double beta_;
};

class KrumAggregator : public BufferingAggregator {
 public:
  KrumAggregator(const Weights& global, const std::vector<bool>& trainable, int f, int keep,
                 bool multi)
      : BufferingAggregator(global, trainable), f_(f), keep_(keep), multi_(multi) {}

 private:
  Result<Weights> Reduce() override {
    const int n = static_cast<int>(updates_.size());
    if (n < 2 * f_ + 3) {
      return Status::FailedPrecondition(
          std::string(multi_ ? "multikrum" : "krum") + " with f = " + std::to_string(f_) +
          " Byzantine clients needs n >= 2f + 3 = " + std::to_string(2 * f_ + 3) +
          " updates (Blanchard et al.: n > 2f + 2), got " + std::to_string(n));
    }
    const int m = !multi_ ? 1 : (keep_ > 0 ? keep_ : n - f_);
    if (m > n - f_) {
      return Status::FailedPrecondition("multikrum: multikrum_keep = " + std::to_string(m) +
                                        " exceeds n - f = " + std::to_string(n - f_));
    }
    const std::vector<double> d2 = SquaredDistances();
    std::vector<int> order = AllRows();
    const std::vector<double> scores = KrumScores(d2, n, order, n - f_ - 2);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return scores[a] < scores[b]; });
    order.resize(m);
    if (m == 1) return updates_[order[0]].weights;
    // Multi-Krum: mean of the selected updates weighted by num_examples (see file comment).
    Weights out(global_.size());
    double total = 0;
    for (int k : order) total += static_cast<double>(updates_[k].num_examples);
    for (size_t i = 0; i < global_.size(); ++i) {
      if (!trainable_[i]) continue;
      out[i] = torch::zeros(global_[i].sizes(), torch::kFloat32);
      for (int k : order) {
        out[i].add_(updates_[k].weights[i], static_cast<double>(updates_[k].num_examples));
      }
      out[i].div_(total);
    }
    return out;
  }

  int f_, keep_;
  bool multi_;
};

class BulyanAggregator : public BufferingAggregator {
 public:
  BulyanAggregator(const Weights& global, const std::vector<bool>& trainable, int f)
      : BufferingAggregator(global, trainable), f_(f) {}

 private:
  Result<Weights> Reduce() override {
    const int n = static_cast<int>(updates_.size());
    if (n < 4 * f_ + 3) {
      return Status::FailedPrecondition(
          "bulyan with f = " + std::to_string(f_) + " Byzantine clients needs n >= 4f + 3 = " +
          std::to_string(4 * f_ + 3) + " updates (El Mhamdi et al.: theta = n - 2f Krum " +
          "selections must leave beta = theta - 2f >= 3 values per coordinate), got " +
          std::to_string(n));
    }
    const std::vector<int> selected = SelectByKrum(n - 2 * f_);
    const int64_t theta = static_cast<int64_t>(selected.size());
    const int64_t beta = theta - 2 * f_;
    return CoordinateWise(
        [theta, beta](const torch::Tensor& sorted) {
          const torch::Tensor median = theta % 2 == 1
                                           ? sorted[theta / 2]
                                           : (sorted[theta / 2 - 1] + sorted[theta / 2]) * 0.5;
          // The beta values closest to the median are sorted[s, s + beta) for some start s.
          // Moving the window from s to s + 1 trades sorted[s] for sorted[s + beta]. While
          // both lie below the median that never hurts; once they straddle it, the trade
          // pays less and less; above it, it never helps. So the cost falls, then rises,
          // and the first best start is one past the last trade that strictly pays (0 when
          // none does). Comparisons of single distances only: no sums, no rounding drift.
          const int64_t starts = theta - beta;
          if (starts == 0) return sorted.mean(/*dim=*/0);
          const torch::Tensor incoming = (sorted.narrow(0, beta, starts) - median).abs();
          const torch::Tensor outgoing = (sorted.narrow(0, 0, starts) - median).abs();
          const torch::Tensor pays = incoming.lt(outgoing).to(torch::kInt64);
          const torch::Tensor start =
              (pays * torch::arange(1, starts + 1, torch::kInt64).unsqueeze(1)).amax(/*dim=*/0);
          const torch::Tensor rows =
              start.unsqueeze(0) + torch::arange(beta, torch::kInt64).unsqueeze(1);
          return sorted.gather(/*dim=*/0, rows).mean(/*dim=*/0);
        },
        selected);
  }

  // Bulyan's selection phase: `theta` rounds of Krum over the updates not selected yet, each
  // moving Krum's choice (lowest score; ties: the earliest added) into the selection.
  std::vector<int> SelectByKrum(int theta) const {
    const int n = static_cast<int>(updates_.size());
    const std::vector<double> d2 = SquaredDistances();
    std::vector<int> remaining = AllRows();
    std::vector<int> selected;
    selected.reserve(theta);
    while (static_cast<int>(selected.size()) < theta) {
      const int r = static_cast<int>(remaining.size());
      const int neighbours = std::min(r - 1, std::max(1, r - f_ - 2));
      const std::vector<double> scores = KrumScores(d2, n, remaining, neighbours);
      const size_t best =
          static_cast<size_t>(std::min_element(scores.begin(), scores.end()) - scores.begin());
      selected.push_back(remaining[best]);
      remaining.erase(remaining.begin() + static_cast<std::ptrdiff_t>(best));
    }
    return selected;
  }

  int f_;
};

// Strategies whose Apply() is "the aggregate is the next global model".
class RobustStrategy : public Strategy {
 public:
  using AggregatorFactory =
      std::function<std::unique_ptr<RoundAggregator>(const Weights&, const std::vector<bool>&)>;
  RobustStrategy(std::string name, AggregatorFactory factory)
      : name_(std::move(name)), factory_(std::move(factory)) {}

  std::string name() const override { return name_; }

  std::unique_ptr<RoundAggregator> BeginRound(const Weights& global,
                                              const std::vector<bool>& trainable) override {
    return factory_(global, trainable);
  }

  Result<Weights> Apply(const Weights& global, const Weights& aggregate,
                        const std::vector<bool>& trainable) override {
    CLEAVE_RETURN_IF_ERROR(CheckMask(trainable, global));
    CLEAVE_RETURN_IF_ERROR(CheckSameLayout(aggregate, global, "aggregate"));
    return MergeWithGlobal(aggregate, global, trainable);
  }

 private:
  std::string name_;
  AggregatorFactory factory_;
};

}  // namespace

std::unique_ptr<Strategy> MakeFedMedian() {
  return std::make_unique<RobustStrategy>(
      "fedmedian", [](const Weights& global, const std::vector<bool>& trainable) {
        return std::make_unique<MedianAggregator>(global, trainable);
      });
}

std::unique_ptr<Strategy> MakeFedTrimmedAvg(double trim_fraction) {
  return std::make_unique<RobustStrategy>(
      "fedtrimmedavg", [trim_fraction](const Weights& global, const std::vector<bool>& trainable) {
        return std::make_unique<TrimmedMeanAggregator>(global, trainable, trim_fraction);
      });
}

std::unique_ptr<Strategy> MakeKrum(int byzantine, int multikrum_keep, bool multi) {
  return std::make_unique<RobustStrategy>(
      multi ? "multikrum" : "krum", [=](const Weights& global, const std::vector<bool>& trainable) {
        return std::make_unique<KrumAggregator>(global, trainable, byzantine, multikrum_keep,
                                                multi);
      });
}

std::unique_ptr<Strategy> MakeBulyan(int byzantine) {
  return std::make_unique<RobustStrategy>(
      "bulyan", [byzantine](const Weights& global, const std::vector<bool>& trainable) {
        return std::make_unique<BulyanAggregator>(global, trainable, byzantine);
      });
}

}  // namespace cleave::federated::internal
