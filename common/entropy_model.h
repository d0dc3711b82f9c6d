// The probability model of entropy-coded quantized features: frequency tables fitted at
// calibration time (common/entropy_fit.h), shipped in the model bundle, and used by both
// ends to code (common/entropy_coder.h).
//
// Learned split computing sends the quantized bottleneck through an entropy coder whose
// probability model was learned offline and is shared by both ends: a fully factorized prior
// per channel in Ballé, Laparra and Simoncelli, "End-to-end Optimized Image Compression"
// (ICLR 2017) and Ballé et al., "Variational Image Compression with a Scale Hyperprior"
// (ICLR 2018); the same for split computing in Matsubara et al., "Supervised Compression for
// Resource-Constrained Edge Computing Systems" (Entropic Student, WACV 2022). cleave's head is
// trained and quantized before any entropy model exists, so the model here is empirical: one
// smoothed frequency table per context (the whole tensor, each channel, or each element),
// counted over the quantized features of calibration inputs. An element's context is fixed by
// its position, or (kPerElementPredicted, common/entropy_predictor.h) by its position and a
// causal prediction from the symbols coded before it; either way the decoder knows it, so
// tables need no side information on the wire.
//
// Validation, the serialized forms and the fingerprint live here; everything is pure and
// thread-safe, and an EntropyModel is immutable once made.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "common/entropy_predictor.h"
#include "common/status.h"

namespace cleave {

// Which table codes element i of a sample of `elements` elements laid out [channels, rest]
// (NCHW without the batch: element i is in channel i / (elements / channels)). Elements are
// coded in order, 0 first.
enum class ContextKind : uint8_t {
  kShared = 0,      // one table for every element
  kPerChannel = 1,  // one table per channel
  kPerElement = 2,  // one table per element (channel x position)
  // `buckets` tables per element; a fixed-point linear prediction of symbol i from symbols
  // coded before it picks one: table i * buckets + bucket_i (common/entropy_predictor.h has
  // the exact definition).
  kPerElementPredicted = 3,
};

// "shared", "per_channel", "per_element", "per_element_predicted".
const char* ContextKindName(ContextKind kind);
// Parses the names above; InvalidArgument otherwise.
Result<ContextKind> ParseContextKind(std::string_view name);

// How an encoding ends (common/entropy_coder.h explains the trade-off).
enum class EntropyTermination : uint8_t {
  // The fewest whole bytes (0-2) whose every continuation lies in the final interval. No
  // valid encoding is a prefix of another, so truncation and trailing bytes are always
  // detected. ~0.6 bytes above the information content on average.
  kPrefixFree = 0,
  // The shortest byte string that, continued by zero bytes, lies in the final interval,
  // without trailing zeros. ~0.3 bytes above the information content on average, but a
  // truncated or extended encoding is often the valid encoding of other symbols.
  kMinimal = 1,
};

// "prefix_free", "minimal".
const char* EntropyTerminationName(EntropyTermination termination);
// Parses the names above; InvalidArgument otherwise.
Result<EntropyTermination> ParseEntropyTermination(std::string_view name);

// Limits of a model (hostile files are refused before anything is allocated).
inline constexpr uint32_t kMinEntropyAlphabet = 2;
inline constexpr uint32_t kMaxEntropyAlphabet = 256;
inline constexpr uint32_t kMinEntropyPrecision = 8;
inline constexpr uint32_t kMaxEntropyPrecision = 16;
inline constexpr uint32_t kDefaultEntropyPrecision = 12;
inline constexpr uint32_t kMaxEntropyElements = 1u << 22;
// Tables x alphabet: 4 MiB of frequencies in memory at most.
inline constexpr uint64_t kMaxEntropyTableEntries = uint64_t{1} << 20;

// The layout checks Create makes before it looks at any table (Create's list minus the
// frequencies and the predictor's taps). `prediction_buckets` is the predictor's bucket count
// for kPerElementPredicted, in [2, 256], and 0 for the other kinds. InvalidArgument naming the
// problem.
Status ValidateEntropyModelLayout(uint32_t alphabet, uint32_t precision, ContextKind kind,
                                  uint32_t channels, uint32_t elements,
                                  uint32_t prediction_buckets = 0);

// Frequency tables over symbols [0, alphabet) and the context map that says which table codes
// which element. Every table's frequencies are >= 1 (any symbol is codable; an unseen one
// just costs more) and sum to 2^precision. Immutable and cheap to share by const reference.
class EntropyModel {
 public:
  // A model from `frequencies`: EntropyTableCount(kind, channels, elements,
  // predictor.buckets) tables of `alphabet` entries, table-major (table t's symbol s at
  // t * alphabet + s). `predictor` is required by kPerElementPredicted and must be empty for
  // the other kinds. InvalidArgument, naming the first problem, for an alphabet outside
  // [2, 256], a precision outside [8, 16], an unknown kind or termination, no channels or
  // elements, elements not a multiple of channels or above kMaxEntropyElements, more than
  // kMaxEntropyTableEntries entries, a predictor ValidateEntropyPredictor refuses (or one given
  // to another kind), a wrong number of frequencies, a zero frequency, or a table whose sum is
  // not 2^precision.
  static Result<EntropyModel> Create(
      uint32_t alphabet, uint32_t precision, ContextKind kind, uint32_t channels, uint32_t elements,
      const std::vector<uint32_t>& frequencies,
      EntropyTermination termination = EntropyTermination::kPrefixFree,
      const EntropyPredictor& predictor = {});

  // The compact canonical binary form: "CEM", a version byte (1), then LEB128 varints:
  // alphabet, precision, kind, termination, channels, elements, [kPerElementPredicted only:
  // buckets, then per element its bias (zigzag), tap count and taps (distance, weight
  // (zigzag))], every frequency (table-major). The other kinds' bytes are those of the
  // first version of the format, so their fingerprints have not changed (a build that predates
  // kPerElementPredicted refuses such a model as an unknown context kind). At most 2 bytes a
  // frequency at precision 12 to 14: a per-element u4 model of [2,7,7] is ~2.4 KB, a
  // per-channel one ~65 bytes, a predicted one with 32 buckets and up to 32 taps an element
  // ~77 KB (50176 frequencies; ~185 KB as JSON). A bundle can keep it as one more file listed
  // with its SHA-256.
  std::string Serialize() const;
  // The inverse of Serialize. Bytes are hostile: VersionMismatch for another version,
  // InvalidArgument for everything else that is not exactly a serialized model (bad magic,
  // truncation, non-minimal or oversized varints, trailing bytes, anything Create refuses).
  static Result<EntropyModel> Parse(std::string_view bytes);

  // A JSON object for a manifest: {"alphabet", "precision", "context" (a ContextKindName),
  // "termination" (an EntropyTerminationName), "channels", "elements", "frequencies" (one flat
  // array, table-major), "fingerprint" (8 lowercase hex digits)}, and for kPerElementPredicted
  // "predictor" (EntropyPredictorToJson).
  nlohmann::json ToJson() const;
  // The inverse of ToJson. InvalidArgument for a missing or mistyped field, a "predictor" with
  // another kind, anything Create refuses, or a "fingerprint" (optional) that does not match
  // the tables.
  static Result<EntropyModel> FromJson(const nlohmann::json& json);

  // The first 32 bits (big-endian) of SHA-256(Serialize()): equal models have equal
  // fingerprints, different ones differ except with probability 2^-32. Peers compare it to
  // know they decode with the model the sender encoded with.
  uint32_t Fingerprint() const { return fingerprint_; }
  // Fingerprint() as 8 lowercase hex digits.
  std::string FingerprintHex() const;

  uint32_t alphabet() const { return alphabet_; }
  uint32_t precision() const { return precision_; }
  ContextKind kind() const { return kind_; }
  EntropyTermination termination() const { return termination_; }
  uint32_t channels() const { return channels_; }
  // Symbols per sample: the most EntropyEncode/EntropyDecode take.
  uint32_t elements() const { return elements_; }
  uint32_t table_count() const { return table_count_; }
  // kPerElementPredicted's buckets per element; 0 for the other kinds.
  uint32_t prediction_buckets() const { return prediction_buckets_; }
  // kPerElementPredicted's predictor (a copy); empty for the other kinds.
  EntropyPredictor Predictor() const;

  // The table that codes `element` when symbols[0..element) were coded before it. Only
  // kPerElementPredicted reads `symbols` (the other kinds accept null). Preconditions:
  // element < elements(), those symbols < alphabet(). O(taps of the element).
  uint32_t TableOf(uint32_t element, const uint8_t* symbols = nullptr) const;
  // Frequency of `symbol` in `table` (preconditions: in range); probability is it / 2^precision.
  uint32_t Frequency(uint32_t table, uint32_t symbol) const;
  // All frequencies, table-major, as Create takes them.
  std::vector<uint32_t> Frequencies() const;
  // The ideal code length of symbols[0..count) in bits, -sum log2 p (what an exact arithmetic
  // coder would spend). Preconditions: count <= elements(), symbols < alphabet().
  double CostBits(const uint8_t* symbols, size_t count) const;

  // Cumulative frequencies of `table`: alphabet() + 1 entries from 0 to 2^precision.
  const uint32_t* Cumulative(uint32_t table) const {
    return cumulative_.data() + size_t{table} * (alphabet_ + 1);
  }

 private:
  EntropyModel() = default;

  uint32_t alphabet_ = 0;
  uint32_t precision_ = 0;
  ContextKind kind_ = ContextKind::kShared;
  EntropyTermination termination_ = EntropyTermination::kPrefixFree;
  uint32_t channels_ = 0;
  uint32_t elements_ = 0;
  uint32_t table_count_ = 0;
  uint32_t elements_per_channel_ = 0;
  uint32_t fingerprint_ = 0;
  std::vector<uint32_t> cumulative_;  // table_count_ x (alphabet_ + 1)
  // kPerElementPredicted: element i's taps are [tap_begin_[i], tap_begin_[i + 1]).
  uint32_t prediction_buckets_ = 0;
  std::vector<int32_t> bias_;
  std::vector<uint32_t> tap_begin_;
  std::vector<uint32_t> tap_distance_;
  std::vector<int32_t> tap_weight_;
};

// Number of tables a model of `kind` has: 1, channels, elements or elements *
// prediction_buckets (kPerElementPredicted; saturating at 2^32 - 1).
uint32_t EntropyTableCount(ContextKind kind, uint32_t channels, uint32_t elements,
                           uint32_t prediction_buckets = 0);

}  // namespace cleave
