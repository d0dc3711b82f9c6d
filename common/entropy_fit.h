// Fitting an EntropyModel (common/entropy_model.h) at calibration time: symbol counts per
// context from the quantized features of many inputs, additive smoothing, quantization to
// frequencies, and the choice of context granularity on held-out samples. For
// kPerElementPredicted also the causal linear predictor (common/entropy_predictor.h): forward
// stepwise least squares on the samples' covariance, then each (element, bucket) table
// smoothed toward its element's table.
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

  // kPerElementPredicted. Each element's predictor keeps at most prediction_taps taps
  // (<= kMaxEntropyPredictionTaps; 0 makes ChooseEntropyModel skip the kind), chosen among the
  // prediction_window elements before it (fitting costs samples x elements x window), and
  // cuts its predictions into prediction_buckets buckets ([2, 256]). On the [2,7,7] u4
  // bottleneck of two trained Fashion-MNIST bundles the defaults code an offloaded test
  // request in ~31.5 bytes (fitted on 8192 training rows; ~30.3 fitted on the training rows
  // the exit offloads), against ~38.7 with per-element tables; 16 buckets cost ~0.2 bytes
  // more with half the tables, 16 taps ~0.2 bytes more.
  uint32_t prediction_taps = 32;
  uint32_t prediction_window = 128;
  uint32_t prediction_buckets = 32;
  // The pseudo-count that smooths an (element, bucket) table toward its element's table (itself
  // smoothed by `smoothing`): p(s | i, b) = (n(i, b, s) + backoff * p(s | i)) / (n(i, b) +
  // backoff), so a bucket seen rarely codes much like its element's table.
  double prediction_backoff = 8;
};

// Fits a model of `kind` to `samples`: samples.size() / options.elements samples of
// options.elements symbols each, concatenated. Counts each table's symbols, adds the
// smoothing, and rounds to frequencies that sum to 2^precision, each >= 1, chosen greedily
// to minimise the expected code length. kPerElementPredicted first fits the predictor: for
// each element, the taps (up to prediction_taps, from the prediction_window elements before
// it) that reduce the least-squares residual most, one at a time, and their weights and bias
// rounded to fixed point; its tables are then counted with the fixed-point predictor, exactly
// as the coder will compute it. InvalidArgument for options Create would refuse, samples not
// a whole number of samples, a symbol >= alphabet, a negative/non-finite smoothing or
// backoff, or (predicted) prediction_taps above kMaxEntropyPredictionTaps. No samples give
// uniform tables (and predictors without taps).
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

// Picks the context granularity for `samples`: fits shared, per-channel, per-element and
// per-element-predicted models (skipping one that would equal a coarser one or exceed
// kMaxEntropyTableEntries, and the predicted one when prediction_taps is 0 or there is one
// element) on all samples but every holdout_every-th, encodes the held-out samples with
// each, and refits the one with the fewest held-out bytes (ties go to the coarser) on all
// samples. Fine tables fitted on few samples overfit, so scarce data picks coarse tables, and
// symbols that their predecessors do not predict pick position-only tables. InvalidArgument
// as FitEntropyModel (the predicted kind's options are checked when it is tried), and for
// fewer than 2 samples (nothing to hold out).
Result<EntropyModelChoice> ChooseEntropyModel(const std::vector<uint8_t>& samples,
                                              const EntropyFitOptions& options);

}  // namespace cleave
