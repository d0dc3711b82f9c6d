#include "common/entropy_fit.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <queue>
#include <utility>

#include "common/entropy_coder.h"

namespace cleave {
namespace {

// The distribution of `counts` with every symbol's count raised by `smoothing`; uniform when
// that leaves nothing.
std::vector<double> SmoothedEntropyDistribution(const uint64_t* counts, uint32_t alphabet,
                                                double smoothing) {
  double total = smoothing * alphabet;
  for (uint32_t s = 0; s < alphabet; ++s) total += static_cast<double>(counts[s]);
  std::vector<double> p(alphabet, 1.0 / alphabet);
  if (total > 0) {
    for (uint32_t s = 0; s < alphabet; ++s) {
      p[s] = (static_cast<double>(counts[s]) + smoothing) / total;
    }
  }
  return p;
}

// Rounds the distribution `p` to frequencies >= 1 that sum to 2^precision:
// floor(p * 2^precision) (at least 1), then one unit at a time to the symbol whose code
// length gains the most, or from the one that loses the least.
void QuantizeEntropyTable(const std::vector<double>& p, uint32_t precision, uint32_t* out) {
  const auto alphabet = static_cast<uint32_t>(p.size());
  const uint64_t total_frequency = uint64_t{1} << precision;
  uint64_t sum = 0;
  for (uint32_t s = 0; s < alphabet; ++s) {
    const double scaled = std::floor(p[s] * static_cast<double>(total_frequency));
    out[s] = static_cast<uint32_t>(std::max(1.0, std::min(scaled, double(total_frequency))));
    sum += out[s];
  }
  // Each floor loses less than one unit and each raise to 1 adds at most one, so at most
  // `alphabet` units move; 2^precision >= 256 >= alphabet leaves room for every 1. A heap
  // keeps each move O(log alphabet) (per-element tables of 256 symbols are many).
  using Move = std::pair<double, uint32_t>;  // (gain of the move, symbol)
  std::priority_queue<Move> moves;
  if (sum < total_frequency) {
    for (uint32_t s = 0; s < alphabet; ++s) moves.push({p[s] * std::log1p(1.0 / out[s]), s});
    for (; sum < total_frequency; ++sum) {
      const uint32_t s = moves.top().second;
      moves.pop();
      ++out[s];
      moves.push({p[s] * std::log1p(1.0 / out[s]), s});
    }
  }
  if (sum > total_frequency) {
    // Gains are minus the code-length cost of taking a unit away.
    for (uint32_t s = 0; s < alphabet; ++s) {
      if (out[s] > 1) moves.push({p[s] * std::log1p(-1.0 / out[s]), s});
    }
    for (; sum > total_frequency; --sum) {
      const uint32_t s = moves.top().second;
      moves.pop();
      --out[s];
      if (out[s] > 1) moves.push({p[s] * std::log1p(-1.0 / out[s]), s});
    }
  }
}

// The prediction buckets a model of `kind` fitted with `options` has.
uint32_t FitPredictionBuckets(const EntropyFitOptions& options, ContextKind kind) {
  return kind == ContextKind::kPerElementPredicted ? options.prediction_buckets : 0;
}

Status ValidateFitInput(const std::vector<uint8_t>& samples, const EntropyFitOptions& options,
                        ContextKind kind) {
  CLEAVE_RETURN_IF_ERROR(ValidateEntropyModelLayout(options.alphabet, options.precision, kind,
                                                    options.channels, options.elements,
                                                    FitPredictionBuckets(options, kind)));
  if (!std::isfinite(options.smoothing) || options.smoothing < 0) {
    return Status::InvalidArgument("entropy model smoothing must be finite and >= 0, got " +
                                   std::to_string(options.smoothing));
  }
  if (kind == ContextKind::kPerElementPredicted) {
    if (options.prediction_taps > kMaxEntropyPredictionTaps) {
      return Status::InvalidArgument(
          "entropy model prediction_taps " + std::to_string(options.prediction_taps) +
          " exceeds the limit of " + std::to_string(kMaxEntropyPredictionTaps));
    }
    if (!std::isfinite(options.prediction_backoff) || options.prediction_backoff < 0) {
      return Status::InvalidArgument(
          "entropy model prediction_backoff must be finite and >= 0, got " +
          std::to_string(options.prediction_backoff));
    }
  }
  if (samples.size() % options.elements != 0) {
    return Status::InvalidArgument(std::to_string(samples.size()) +
                                   " symbols are not a whole number of samples of " +
                                   std::to_string(options.elements));
  }
  for (size_t i = 0; i < samples.size(); ++i) {
    if (samples[i] >= options.alphabet) {
      return Status::InvalidArgument("symbol " + std::to_string(samples[i]) + " at index " +
                                     std::to_string(i) + " is outside the alphabet of " +
                                     std::to_string(options.alphabet));
    }
  }
  return Status::Ok();
}

uint64_t EncodedBytesOf(const EntropyModel& model, const std::vector<uint8_t>& samples) {
  uint64_t bytes = 0;
  for (size_t offset = 0; offset < samples.size(); offset += model.elements()) {
    // Cannot fail: the samples were validated against the same alphabet and element count.
    bytes += EntropyEncode(model, samples.data() + offset, model.elements()).value_or("").size();
  }
  return bytes;
}

double CostBitsOf(const EntropyModel& model, const std::vector<uint8_t>& samples) {
  double bits = 0;
  for (size_t offset = 0; offset < samples.size(); offset += model.elements()) {
    bits += model.CostBits(samples.data() + offset, model.elements());
  }
  return bits;
}

// ---- The predictor of kPerElementPredicted ----

// Means and banded second moments of the samples: what stepwise least squares needs of them.
class EntropySampleMoments {
 public:
  EntropySampleMoments(const std::vector<uint8_t>& samples, uint32_t elements, uint32_t band)
      : band_(band), count_(samples.size() / elements) {
    means_.assign(elements, 0.0);
    products_.assign(size_t{elements} * (band + 1), 0.0);
    for (size_t offset = 0; offset < samples.size(); offset += elements) {
      const uint8_t* x = samples.data() + offset;
      for (uint32_t i = 0; i < elements; ++i) {
        means_[i] += x[i];
        double* row = products_.data() + size_t{i} * (band + 1);
        const uint32_t reach = std::min(i, band);
        for (uint32_t d = 0; d <= reach; ++d) row[d] += static_cast<double>(x[i]) * x[i - d];
      }
    }
    if (count_ == 0) return;
    for (double& mean : means_) mean /= static_cast<double>(count_);
  }

  double Mean(uint32_t i) const { return means_[i]; }
  // Covariance of elements i and j (|i - j| <= band).
  double Covariance(uint32_t i, uint32_t j) const {
    if (i < j) std::swap(i, j);
    if (count_ == 0) return 0;
    return products_[size_t{i} * (band_ + 1) + (i - j)] / static_cast<double>(count_) -
           means_[i] * means_[j];
  }

 private:
  uint32_t band_;
  size_t count_;
  std::vector<double> means_;
  std::vector<double> products_;  // element i's sums of x_i * x_{i - d}, d = 0..band
};

// The sweep operator (Goodnight, "A Tutorial on the SWEEP Operator", 1979) on pivot k of the
// symmetric n x n matrix `a`. Sweeping the candidates S of a covariance matrix leaves, in the
// target's column, the regression coefficients on S (rows of S), the residual variance (the
// target's row) and the partial covariances given S (the other rows).
void SweepEntropyCovariance(std::vector<double>& a, size_t n, size_t k) {
  const double pivot = a[k * n + k];
  for (size_t j = 0; j < n; ++j) a[k * n + j] /= pivot;
  for (size_t i = 0; i < n; ++i) {
    if (i == k) continue;
    const double factor = a[i * n + k];
    for (size_t j = 0; j < n; ++j) a[i * n + j] -= factor * a[k * n + j];
    a[i * n + k] = -factor / pivot;
  }
  a[k * n + k] = 1 / pivot;
}

int32_t RoundToEntropyFixedPoint(double value) {
  const double scaled = std::nearbyint(std::ldexp(value, kEntropyPredictionFractionBits));
  if (!(scaled > std::numeric_limits<int32_t>::min())) return std::numeric_limits<int32_t>::min();
  if (!(scaled < std::numeric_limits<int32_t>::max())) return std::numeric_limits<int32_t>::max();
  return static_cast<int32_t>(scaled);
}

// Element i's predictor: forward stepwise least squares over the candidates, adding the one
// that reduces the residual variance most until prediction_taps are in or none helps; weights
// and bias in fixed point, the bias centring bucket b on the prediction b * alphabet / buckets.
EntropyElementPredictor FitEntropyElementPredictor(const EntropySampleMoments& moments, uint32_t i,
                                                   const EntropyFitOptions& options) {
  const uint32_t candidates = std::min(i, options.prediction_window);
  const size_t n = size_t{candidates} + 1;  // candidate k is element i - candidates + k
  const auto element_of = [&](size_t k) { return i - candidates + static_cast<uint32_t>(k); };
  std::vector<double> a(n * n);
  for (size_t r = 0; r < n; ++r) {
    for (size_t c = 0; c < n; ++c) a[r * n + c] = moments.Covariance(element_of(r), element_of(c));
  }
  const size_t target = candidates;
  const double target_variance = a[target * n + target];
  std::vector<double> variance(n);
  for (size_t k = 0; k < n; ++k) variance[k] = a[k * n + k];
  std::vector<bool> chosen(n, false);
  std::vector<size_t> taps;
  while (taps.size() < options.prediction_taps && target_variance > 1e-12) {
    size_t best = n;
    double best_gain = 1e-9 * target_variance;  // below this a tap adds nothing
    for (size_t k = 0; k < candidates; ++k) {
      const double residual = a[k * n + k];
      // A candidate (nearly) determined by the taps already in would only add noise.
      if (chosen[k] || !(residual > 1e-9 * variance[k]) || variance[k] <= 1e-12) continue;
      const double gain = a[k * n + target] * a[k * n + target] / residual;
      if (gain > best_gain) {
        best = k;
        best_gain = gain;
      }
    }
    if (best == n) break;
    SweepEntropyCovariance(a, n, best);
    chosen[best] = true;
    taps.push_back(best);
  }
  EntropyElementPredictor predictor;
  const double half_bucket = 0.5 * options.alphabet / options.prediction_buckets;
  double offset = moments.Mean(i) + half_bucket;
  for (size_t k : taps) {
    const int32_t weight = RoundToEntropyFixedPoint(a[k * n + target]);
    if (weight == 0) continue;
    offset -= std::ldexp(weight, -static_cast<int>(kEntropyPredictionFractionBits)) *
              moments.Mean(element_of(k));
    predictor.taps.push_back({i - element_of(k), weight});
  }
  std::sort(predictor.taps.begin(), predictor.taps.end(),
            [](const EntropyPredictionTap& x, const EntropyPredictionTap& y) {
              return x.distance < y.distance;
            });
  predictor.bias = RoundToEntropyFixedPoint(offset);
  return predictor;
}

Result<EntropyModel> FitPredictedEntropyModel(const std::vector<uint8_t>& samples,
                                              const EntropyFitOptions& options) {
  const uint32_t alphabet = options.alphabet;
  const uint32_t elements = options.elements;
  EntropyPredictor predictor;
  predictor.buckets = options.prediction_buckets;
  predictor.elements.reserve(elements);
  {
    const EntropySampleMoments moments(samples, elements,
                                       std::min(options.prediction_window, elements - 1));
    for (uint32_t i = 0; i < elements; ++i) {
      predictor.elements.push_back(FitEntropyElementPredictor(moments, i, options));
    }
  }
  // The contexts come from a model with these taps (and placeholder tables), so that the
  // tables are counted with exactly the function the coder uses.
  const uint32_t tables = elements * predictor.buckets;
  std::vector<uint32_t> placeholder(alphabet);
  QuantizeEntropyTable(std::vector<double>(alphabet, 1.0 / alphabet), options.precision,
                       placeholder.data());
  std::vector<uint32_t> frequencies;
  frequencies.reserve(size_t{tables} * alphabet);
  for (uint32_t t = 0; t < tables; ++t) {
    frequencies.insert(frequencies.end(), placeholder.begin(), placeholder.end());
  }
  CLEAVE_ASSIGN_OR_RETURN(
      const EntropyModel contexts,
      EntropyModel::Create(alphabet, options.precision, ContextKind::kPerElementPredicted,
                           options.channels, elements, frequencies, options.termination,
                           predictor));
  std::vector<uint64_t> counts(size_t{tables} * alphabet, 0);
  std::vector<uint64_t> element_counts(size_t{elements} * alphabet, 0);
  for (size_t offset = 0; offset < samples.size(); offset += elements) {
    const uint8_t* x = samples.data() + offset;
    for (uint32_t i = 0; i < elements; ++i) {
      ++counts[size_t{contexts.TableOf(i, x)} * alphabet + x[i]];
      ++element_counts[size_t{i} * alphabet + x[i]];
    }
  }
  const double backoff = options.prediction_backoff;
  for (uint32_t i = 0; i < elements; ++i) {
    const std::vector<double> parent = SmoothedEntropyDistribution(
        element_counts.data() + size_t{i} * alphabet, alphabet, options.smoothing);
    for (uint32_t b = 0; b < predictor.buckets; ++b) {
      const size_t t = size_t{i} * predictor.buckets + b;
      const uint64_t* n = counts.data() + t * alphabet;
      double total = backoff;
      for (uint32_t s = 0; s < alphabet; ++s) total += static_cast<double>(n[s]);
      std::vector<double> p = parent;
      if (total > 0) {
        for (uint32_t s = 0; s < alphabet; ++s) {
          p[s] = (static_cast<double>(n[s]) + backoff * parent[s]) / total;
        }
      }
      QuantizeEntropyTable(p, options.precision, frequencies.data() + t * alphabet);
    }
  }
  return EntropyModel::Create(alphabet, options.precision, ContextKind::kPerElementPredicted,
                              options.channels, elements, frequencies, options.termination,
                              predictor);
}

}  // namespace

Result<EntropyModel> FitEntropyModel(const std::vector<uint8_t>& samples,
                                     const EntropyFitOptions& options, ContextKind kind) {
  CLEAVE_RETURN_IF_ERROR(ValidateFitInput(samples, options, kind));
  if (kind == ContextKind::kPerElementPredicted) {
    return FitPredictedEntropyModel(samples, options);
  }
  const uint32_t alphabet = options.alphabet;
  const uint32_t tables = EntropyTableCount(kind, options.channels, options.elements);
  const uint32_t per_channel = options.elements / options.channels;
  std::vector<uint64_t> counts(size_t{tables} * alphabet, 0);
  for (size_t i = 0; i < samples.size(); ++i) {
    const auto element = static_cast<uint32_t>(i % options.elements);
    const uint32_t table = kind == ContextKind::kPerElement   ? element
                           : kind == ContextKind::kPerChannel ? element / per_channel
                                                              : 0;
    ++counts[size_t{table} * alphabet + samples[i]];
  }
  std::vector<uint32_t> frequencies(counts.size());
  for (uint32_t t = 0; t < tables; ++t) {
    QuantizeEntropyTable(SmoothedEntropyDistribution(counts.data() + size_t{t} * alphabet, alphabet,
                                                     options.smoothing),
                         options.precision, frequencies.data() + size_t{t} * alphabet);
  }
  return EntropyModel::Create(alphabet, options.precision, kind, options.channels, options.elements,
                              frequencies, options.termination);
}

Result<EntropyModelChoice> ChooseEntropyModel(const std::vector<uint8_t>& samples,
                                              const EntropyFitOptions& options) {
  CLEAVE_RETURN_IF_ERROR(ValidateFitInput(samples, options, ContextKind::kShared));
  if (options.holdout_every < 2) {
    return Status::InvalidArgument("holdout_every must be at least 2, got " +
                                   std::to_string(options.holdout_every));
  }
  const size_t count = samples.size() / options.elements;
  if (count < 2) {
    return Status::InvalidArgument("choosing an entropy model needs at least 2 samples, got " +
                                   std::to_string(count));
  }
  std::vector<uint8_t> training;
  std::vector<uint8_t> heldout;
  for (size_t i = 0; i < count; ++i) {
    const bool hold = count < options.holdout_every
                          ? i + 1 == count
                          : i % options.holdout_every == options.holdout_every - 1;
    auto& into = hold ? heldout : training;
    into.insert(into.end(), samples.begin() + i * options.elements,
                samples.begin() + (i + 1) * options.elements);
  }

  // Coarsest first; a granularity is skipped when it would equal a coarser one (one channel;
  // one element a channel) or its tables would exceed kMaxEntropyTableEntries.
  const auto fits = [&](ContextKind kind) {
    return ValidateEntropyModelLayout(options.alphabet, options.precision, kind, options.channels,
                                      options.elements, FitPredictionBuckets(options, kind))
        .ok();
  };
  std::vector<ContextKind> kinds = {ContextKind::kShared};
  if (options.channels > 1 && fits(ContextKind::kPerChannel)) {
    kinds.push_back(ContextKind::kPerChannel);
  }
  if (options.elements > options.channels && fits(ContextKind::kPerElement)) {
    kinds.push_back(ContextKind::kPerElement);
  }
  if (options.prediction_taps > 0 && options.elements > 1) {
    // Bad prediction options are an error; a model over the size limit is skipped.
    if (options.prediction_buckets < kMinEntropyPredictionBuckets ||
        options.prediction_buckets > kMaxEntropyPredictionBuckets) {
      return Status::InvalidArgument("entropy model prediction_buckets " +
                                     std::to_string(options.prediction_buckets) + " are outside [" +
                                     std::to_string(kMinEntropyPredictionBuckets) + ", " +
                                     std::to_string(kMaxEntropyPredictionBuckets) + "]");
    }
    if (fits(ContextKind::kPerElementPredicted)) {
      CLEAVE_RETURN_IF_ERROR(ValidateFitInput({}, options, ContextKind::kPerElementPredicted));
      kinds.push_back(ContextKind::kPerElementPredicted);
    }
  }

  std::vector<EntropyCandidate> candidates;
  size_t best = 0;
  for (ContextKind kind : kinds) {
    CLEAVE_ASSIGN_OR_RETURN(const EntropyModel model, FitEntropyModel(training, options, kind));
    candidates.push_back({kind, EncodedBytesOf(model, heldout), CostBitsOf(model, heldout)});
    if (candidates.back().heldout_bytes < candidates[best].heldout_bytes) {
      best = candidates.size() - 1;
    }
  }
  CLEAVE_ASSIGN_OR_RETURN(EntropyModel model,
                          FitEntropyModel(samples, options, candidates[best].kind));
  return EntropyModelChoice{std::move(model), std::move(candidates),
                            training.size() / options.elements, heldout.size() / options.elements};
}

}  // namespace cleave
