// Fixed-point encoding of clipped float updates into Z_{2^32}, the ring secure aggregation
// (common/secure_aggregation.h) sums in, and decoding of the sum.
//
// Encoding of one coordinate x with clip c and f fractional bits:
//   x' = clamp(x, -c, c);  q = round(x' * 2^f)  (nearest, or stochastic: floor(x' 2^f + u),
//   u ~ U[0, 1), which is unbiased: E[q] = x' 2^f);  word = q mod 2^32 (two's complement).
// Every |q| <= Q = ceil(c * 2^f), so a sum of at most m encodings lies in [-mQ, mQ]. Decoding
// reads the 32-bit sum as a signed integer and divides by 2^f; it is exact (the modular sum
// never wraps) when m * Q <= 2^31 - 1. Create() checks exactly that headroom for the largest
// number of summands the caller will add, and refuses parameters that could wrap.
// Resolution is 2^-f per coordinate per client; the quantization error of a sum of m
// encodings is at most m * 2^-(f+1) with nearest rounding.
//
// A codec is an immutable value: thread-safe, copyable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/crypto.h"
#include "common/status.h"

namespace cleave {

class FixedPointCodec {
 public:
  static constexpr int kMaxFractionalBits = 30;

  // `clip` > 0 and finite, `fractional_bits` in 0..30, `max_summands` >= 1 (the most encoded
  // vectors that will ever be added before decoding, e.g. the clients of a round).
  // InvalidArgument naming the figures when max_summands * ceil(clip * 2^f) > 2^31 - 1.
  [[nodiscard]] static Result<FixedPointCodec> Create(double clip, int fractional_bits,
                                                      uint32_t max_summands);

  double clip() const { return clip_; }
  int fractional_bits() const { return fractional_bits_; }
  uint32_t max_summands() const { return max_summands_; }
  // Q = ceil(clip * 2^f): the largest magnitude of one encoded coordinate.
  uint32_t max_magnitude() const { return max_magnitude_; }

  // Encodes `count` floats at `values` (borrowed for the call) with round-to-nearest.
  // InvalidArgument for a NaN or infinite coordinate. `clipped`, when given, receives how
  // many coordinates were outside [-clip, clip].
  [[nodiscard]] Result<std::vector<uint32_t>> Encode(const float* values, size_t count,
                                                     size_t* clipped = nullptr) const;
  [[nodiscard]] Result<std::vector<uint32_t>> Encode(const std::vector<float>& values,
                                                     size_t* clipped = nullptr) const {
    return Encode(values.data(), values.size(), clipped);
  }
  // As Encode, with unbiased stochastic rounding driven by the AES-CTR stream of
  // `rounding_seed` (deterministic for a given seed, so simulations stay reproducible).
  [[nodiscard]] Result<std::vector<uint32_t>> EncodeStochastic(const float* values, size_t count,
                                                               const crypto::Key256& rounding_seed,
                                                               size_t* clipped = nullptr) const;

  // The real-valued sum of `summands` encoded vectors from their modular sum `sum`.
  // FailedPrecondition when `summands` exceeds max_summands() (the sum may have wrapped).
  [[nodiscard]] Result<std::vector<double>> DecodeSum(const std::vector<uint32_t>& sum,
                                                      uint32_t summands) const;

 private:
  FixedPointCodec(double clip, int fractional_bits, uint32_t max_summands, uint32_t max_magnitude)
      : clip_(clip),
        fractional_bits_(fractional_bits),
        max_summands_(max_summands),
        max_magnitude_(max_magnitude) {}

  double clip_;
  int fractional_bits_;
  uint32_t max_summands_;
  uint32_t max_magnitude_;
};

}  // namespace cleave
