// Uplink compression of federated client updates: int8 quantization with stochastic
// rounding and top-k sparsification with error feedback, both acting on the client's delta
// (trained - global) over the round's trainable entries. The untrained entries are never
// sent (the server keeps the global values there, see RoundEngine::Submit).
//
//   int8  Each trainable tensor is cut into chunks of kInt8ChunkElements values; each chunk
//         has its own symmetric scale s = max|x| / 127 and every value is sent as
//         q = floor(x/s) or floor(x/s) + 1, rounded up with probability x/s - floor(x/s), so
//         E[q s] = x exactly (unbiased; Alistarh et al. 2017 "QSGD"-style stochastic
//         rounding) and |q s - x| < s. The server decodes q s. Per-chunk rather than
//         per-tensor scales because one outlier in a large tensor would otherwise set the step
//         for all of its values; 256 values per chunk cost 4 bytes of scale per 256 bytes of
//         payload (1.6%), so an update is ~25.4% of its float32 size. The rounding coins come
//         from a counter-based generator (SplitMix64 of (seed, round, client, element index)),
//         so an encoding is reproducible and independent of threads.
//   topk  The k = ceil(fraction x n) largest-magnitude coordinates of the delta flattened
//         over all trainable entries in layout order (ties broken by the lower index, so the
//         kept set is unique), sent as (uint32 index, float32 value) pairs: 8 bytes per kept
//         value against 4 per value dense, so 1% keeps ~2% of the bytes.
//   none  Lossless float32 (the baseline the others are measured against).
//
// Error feedback (Stich et al. 2018, "Sparsified SGD with Memory"; Karimireddy et al. 2019,
// "Error Feedback Fixes SignSGD"): with `error_feedback` a client compresses
// delta + residual instead of delta and keeps residual <- (delta + residual) - sent, so
// nothing it computed is lost, only delayed: over any number of rounds, the sum of what it
// sent plus its current residual equals the sum of its deltas. It applies to both lossy
// kinds (for int8 the residual is only the rounding error, |r| < s per coordinate). The
// residual is client state (ErrorFeedbackState): a client that is not sampled keeps it until
// its next round.
//
// Which combinations are supported (CheckCompressionCompatible refuses the others):
//   - With every plain strategy (fedavg, fedprox, fedopt family, krum, multikrum) both kinds
//     are fine: the server aggregates the decoded models global + decoded delta.
//   - With dpfedavg both kinds are fine: DP-FedAvg clips each client's delta on the server,
//     and here it clips the decoded delta, so the sensitivity bound (and the privacy
//     accounting) holds whatever the client sent; compression error and the error-feedback
//     residual only change what the client contributes, never the bound. (With a client-side
//     DP mechanism this would have to be re-derived; there is none in cleave.)
//   - topk with the coordinate-wise robust rules (fedmedian, fedtrimmedavg, and bulyan, whose
//     last step is a trimmed mean) is refused: with different sparse supports nearly every
//     coordinate is zero for most clients, so the median / trimmed mean is zero almost
//     everywhere and the model stops moving. int8 is fine with them (dense, unbiased).
//   - Secure aggregation: masking adds a pseudorandom mask to every coordinate and the
//     masks cancel only in the sum over identical dense coordinates, so every client must
//     contribute the same dense vector. int8 composes: the client quantizes (unbiased) and
//     the dequantized values q s are what enter SecAgg's fixed-point contribution
//     (secure_round.h). Caveat: SecAgg's ring is 32-bit words today, so int8 does not yet
//     shrink a secure round's bytes (that needs a public shared scale and a ring of
//     8 + log2(roster) bits; not implemented). topk is refused: a masked sparse vector is
//     dense (no saving) and its index set would reveal which coordinates a client changed
//     most, which is what secure aggregation hides.
//
// The encoded form (EncodeUpdate/DecodeUpdate) is what "bytes up" counts. Layout, all
// integers and floats little-endian:
//   header   "CLUC" magic (4), version u8 (= 1), kind u8 (0 none, 1 int8, 2 topk),
//            flags u16 (= 0), entries u32 (trainable entries), elements u32 (their total n)
//   counts   entries x u32: elements of each trainable entry, in layout order
//   none     n x f32
//   int8     chunk u32, then per entry ceil(count / chunk) x f32 scales, then n x i8
//            (in [-127, 127])
//   topk     k u32, k x u32 indices (strictly increasing, < n), k x f32 values
// The decoder checks every length, count, index and value against the receiver's own layout
// and mask before it allocates anything for the payload. On a real wire these bytes travel as
// Update.compressed, a Data field of the versioned Cap'n Proto update message
// (common/federated.capnp; edge/fl_client.cc encodes, federated/aggregator_service.cc decodes).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "federated/weights.h"

namespace cleave::federated {

inline constexpr uint8_t kUpdateEncodingVersion = 1;
inline constexpr uint32_t kInt8ChunkElements = 256;

struct CompressionConfig {
  std::string kind = "none";    // none | int8 | topk
  double topk_fraction = 0.01;  // topk: share of the trainable coordinates sent, in (0, 1]
  bool error_feedback = true;   // int8/topk: carry what was not sent into the next round
  uint64_t seed = 1;            // int8: stochastic rounding (with the round and client)
  nlohmann::json ToJson() const;
  // Every key optional; unknown keys, wrong types and invalid values are InvalidArgument.
  static Result<CompressionConfig> FromJson(const nlohmann::json& json);
  // InvalidArgument naming the key (compression.kind, compression.topk_fraction).
  Status Validate() const;
};

// OK when `config` can run with the given strategy and secure-aggregation setting (see the
// header comment); FailedPrecondition for topk with secure aggregation, InvalidArgument
// for topk with a coordinate-wise robust strategy. `config` itself should be valid.
Status CheckCompressionCompatible(const CompressionConfig& config, bool secure_aggregation,
                                  const std::string& strategy_name);

// One client's error-feedback memory. Owned by the client (in `cleave sim`, by the
// Simulation, one per client that has trained); not thread-safe: one EncodeUpdate at a time
// per state. `residual` has one tensor per layout entry, undefined for entries never
// compressed; empty before the first round.
struct ErrorFeedbackState {
  Weights residual;
};

// Compresses the client's delta trained - global over the `trainable` entries (both full
// layout, float32, same shapes). With `feedback` non-null and config.error_feedback (and a
// lossy kind), compresses delta + feedback->residual and updates the residual. The rounding
// stream of int8 is drawn from (config.seed, round, client). InvalidArgument when the
// weights' count or shapes differ, a value is not finite, the mask has the wrong size, or
// the trainable values number more than 2^32 - 1; the residual is unchanged then.
Result<std::string> EncodeUpdate(const CompressionConfig& config, const Weights& global,
                                 const Weights& trained, const std::vector<bool>& trainable,
                                 uint64_t round, uint64_t client,
                                 ErrorFeedbackState* feedback = nullptr);

// The delta encoded in `bytes`, full layout: decoded values on the trainable entries, zeros
// elsewhere. InvalidArgument for anything that does not match `layout` and `trainable`
// (bad magic, unknown kind, flags, truncated or trailing bytes, wrong entry or element
// counts, index out of range or not increasing, NaN/Inf or negative scales and values);
// VersionMismatch for another encoding version. Never aborts on hostile input.
Result<Weights> DecodeUpdate(std::string_view bytes, const WeightsLayout& layout,
                             const std::vector<bool>& trainable);

// What a compressing client and the server do to one update, in one call (the simulator's
// path): encodes trained - global (EncodeUpdate), decodes it (DecodeUpdate) and overwrites
// `trained`'s trainable entries in place with global + decoded delta. Returns the encoded
// size in bytes. `trained` is unchanged on error.
Result<int64_t> CompressRoundTrip(const CompressionConfig& config, const WeightsLayout& layout,
                                  const Weights& global, Weights& trained,
                                  const std::vector<bool>& trainable, uint64_t round,
                                  uint64_t client, ErrorFeedbackState* feedback = nullptr);

}  // namespace cleave::federated
