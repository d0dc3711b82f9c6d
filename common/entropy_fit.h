// Fitting an EntropyModel (common/entropy_model.h) at calibration time: symbol counts per
// context from the quantized features of many inputs, additive smoothing, quantization to
// frequencies, and the choice of context granularity on held-out samples.
//
// Pure and thread-safe; meant for offline calibration (it allocates freely).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/entropy_model.h"
#include "common/status.h"

namespace cleave {

struct EntropyFitOptions {
  uint32_t alphabet = 16;  // SymbolAlphabet(dtype): 16 for u4, 256 for u8
  uint32_t channels = 1;   // per-sample layout [channels, elements / channels]
  uint32_t elements = 0;   // symbols per sample
  uint32_t precision = kDefaultEntropyPrecision;
  EntropyTermination termination = EntropyTermination::kPrefixFree;
  // Additive (Lidstone) smoothing: the pseudo-count every symbol of every table gets before
  // frequencies are quantized. 0.5 is the Krichevsky-Trofimov estimator.
  double smoothing = 0.5;
  // ChooseEntropyModel holds out every holdout_every-th sample (>= 2) to compare granularities.
  uint32_t holdout_every = 5;
};

// Fits a model of `kind` to `samples`: samples.size() / options.elements samples of
// options.elements symbols each, concatenated. Counts each table's symbols, adds the
// smoothing, and rounds to frequencies that sum to 2^precision, each >= 1, chosen greedily
// to minimise the expected code length. InvalidArgument for options Create would refuse,
// samples not a whole number of samples, a symbol >= alphabet or a negative/non-finite
// smoothing. No samples give uniform tables.
Result<EntropyModel> FitEntropyModel(const std::vector<uint8_t>& samples,
                                     const EntropyFitOptions& options, ContextKind kind);

// The held-out cost of one context granularity.
struct EntropyCandidate {
  ContextKind kind;
  uint64_t heldout_bytes;  // sum of EntropyEncode sizes over the held-out samples
  double heldout_bits;     // sum of their ideal code lengths (CostBits)
};

struct EntropyModelChoice {
  EntropyModel model;                        // the winning granularity, refitted on all samples
  std::vector<EntropyCandidate> candidates;  // every granularity tried, coarsest first
  size_t training_samples = 0;
  size_t heldout_samples = 0;
};

// Picks the context granularity for `samples`: fits shared, per-channel and per-element
// models (skipping one that would equal a coarser one or exceed kMaxEntropyTableEntries) on
// all samples but every holdout_every-th, encodes the held-out samples with each, and
// refits the one with the fewest held-out bytes (ties go to the coarser) on all samples.
// Fine tables fitted on few samples overfit, so scarce data picks coarse tables.
// InvalidArgument as FitEntropyModel, and for fewer than 2 samples (nothing to hold out).
Result<EntropyModelChoice> ChooseEntropyModel(const std::vector<uint8_t>& samples,
                                              const EntropyFitOptions& options);

}  // namespace cleave
