// The causal context of ContextKind::kPerElementPredicted entropy models
// (common/entropy_model.h): a fixed-point linear prediction of each symbol from symbols coded
// before it, bucketed to pick one of the element's frequency tables.
//
// Learned image codecs condition each latent's distribution on latents already decoded with an
// autoregressive context model: Minnen, Ballé and Toderici, "Joint Autoregressive and
// Hierarchical Priors for Learned Image Compression" (NeurIPS 2018), where a masked
// convolution over the decoded neighbourhood predicts the parameters of each latent's
// distribution. This is its simplest count-based form: a masked *linear* predictor whose
// output selects one of the element's tables, the tables being counted at calibration
// (common/entropy_fit.h). Any earlier element can be a tap, so the left neighbour, the one
// above, the other channel at the same position and farther elements that share information
// about the input are all candidates; the fit keeps the few that predict best. Being causal,
// the decoder computes the same context from the symbols it has already decoded; being integer
// arithmetic, both ends compute it bit for bit on any machine.
//
// The context, exactly. Elements are coded in element order, NCHW without the batch: element
// (c, y, x) of a [C, H, W] sample is i = (c * H + y) * W + x, so the left neighbour is at
// distance 1, the one above at distance W and the same position of the previous channel at
// distance H * W. With s[j] the symbol of element j < i:
//
//   acc_i    = bias_i + sum over element i's taps (distance d, weight w) of w * s[i - d]
//              (exact in 64 bits: at most 64 taps of 32-bit weights times symbols < 256)
//   bucket_i = min(buckets - 1, max(acc_i, 0) * buckets / (alphabet * 2^8))  (integer division)
//   table_i  = i * buckets + bucket_i
//
// That is: acc_i / 2^8 predicts s[i] in symbol units, [0, alphabet) is cut into `buckets`
// equal intervals, and predictions below 0 or at or above `alphabet` fall in the first or last
// one. Element i has `buckets` tables, so a model has elements * buckets tables.
//
// Pure data and checks; thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "common/status.h"

namespace cleave {

// Weights and biases are fixed point with this many fraction bits (units of 2^-8).
inline constexpr uint32_t kEntropyPredictionFractionBits = 8;
inline constexpr uint32_t kMinEntropyPredictionBuckets = 2;
inline constexpr uint32_t kMaxEntropyPredictionBuckets = 256;
// Per element, so that coding stays O(count).
inline constexpr uint32_t kMaxEntropyPredictionTaps = 64;
// In a whole model (a hostile file cannot make it allocate more).
inline constexpr uint64_t kMaxEntropyPredictionTotalTaps = uint64_t{1} << 20;

struct EntropyPredictionTap {
  uint32_t distance = 0;  // reads s[i - distance]: 1 <= distance <= i
  int32_t weight = 0;     // in units of 2^-8

  bool operator==(const EntropyPredictionTap& other) const {
    return distance == other.distance && weight == other.weight;
  }
};

struct EntropyElementPredictor {
  int32_t bias = 0;                        // in units of 2^-8 symbols
  std::vector<EntropyPredictionTap> taps;  // distances strictly increasing

  bool operator==(const EntropyElementPredictor& other) const {
    return bias == other.bias && taps == other.taps;
  }
};

// The predictor of a kPerElementPredicted model; empty (buckets 0, no elements) for the other
// kinds.
struct EntropyPredictor {
  uint32_t buckets = 0;                           // [2, 256]
  std::vector<EntropyElementPredictor> elements;  // one per model element, in order

  bool empty() const { return buckets == 0 && elements.empty(); }
  bool operator==(const EntropyPredictor& other) const {
    return buckets == other.buckets && elements == other.elements;
  }
};

// InvalidArgument, naming the first problem, unless `predictor` has buckets in [2, 256],
// exactly `elements` element predictors, at most kMaxEntropyPredictionTaps taps each and
// kMaxEntropyPredictionTotalTaps in all, and taps whose distances are strictly increasing and
// within [1, i] for element i (causal: only symbols already coded).
Status ValidateEntropyPredictor(const EntropyPredictor& predictor, uint32_t elements);

// {"buckets": B, "elements": [{"bias": b, "taps": [[distance, weight], ...]}, ...]}.
nlohmann::json EntropyPredictorToJson(const EntropyPredictor& predictor);
// The inverse. InvalidArgument for a missing or mistyped field or a number out of its type's
// range (ValidateEntropyPredictor is the caller's).
Result<EntropyPredictor> EntropyPredictorFromJson(const nlohmann::json& json);

}  // namespace cleave
