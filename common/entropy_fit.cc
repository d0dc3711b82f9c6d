#include "common/entropy_fit.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <queue>
#include <utility>

#include "common/entropy_coder.h"

namespace cleave {
namespace {

// Rounds the smoothed distribution of `counts` to frequencies >= 1 that sum to
// 2^precision: floor(p * 2^precision) (at least 1), then one unit at a time to the symbol
// whose code length gains the most, or from the one that loses the least.
void QuantizeEntropyTable(const uint64_t* counts, uint32_t alphabet, double smoothing,
                          uint32_t precision, uint32_t* out) {
  const uint64_t total_frequency = uint64_t{1} << precision;
  double total = smoothing * alphabet;
  for (uint32_t s = 0; s < alphabet; ++s) total += static_cast<double>(counts[s]);
  std::vector<double> p(alphabet, 1.0 / alphabet);
  if (total > 0) {
    for (uint32_t s = 0; s < alphabet; ++s) {
      p[s] = (static_cast<double>(counts[s]) + smoothing) / total;
    }
  }
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

Status ValidateFitInput(const std::vector<uint8_t>& samples, const EntropyFitOptions& options,
                        ContextKind kind) {
  CLEAVE_RETURN_IF_ERROR(ValidateEntropyModelLayout(options.alphabet, options.precision, kind,
                                                    options.channels, options.elements));
  if (!std::isfinite(options.smoothing) || options.smoothing < 0) {
    return Status::InvalidArgument("entropy model smoothing must be finite and >= 0, got " +
                                   std::to_string(options.smoothing));
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

}  // namespace

Result<EntropyModel> FitEntropyModel(const std::vector<uint8_t>& samples,
                                     const EntropyFitOptions& options, ContextKind kind) {
  CLEAVE_RETURN_IF_ERROR(ValidateFitInput(samples, options, kind));
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
    QuantizeEntropyTable(counts.data() + size_t{t} * alphabet, alphabet, options.smoothing,
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
                                      options.elements)
        .ok();
  };
  std::vector<ContextKind> kinds = {ContextKind::kShared};
  if (options.channels > 1 && fits(ContextKind::kPerChannel)) {
    kinds.push_back(ContextKind::kPerChannel);
  }
  if (options.elements > options.channels && fits(ContextKind::kPerElement)) {
    kinds.push_back(ContextKind::kPerElement);
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
