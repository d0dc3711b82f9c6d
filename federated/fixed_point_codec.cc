#include "federated/fixed_point_codec.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

namespace cleave {
namespace {

constexpr int64_t kHeadroom = (int64_t{1} << 31) - 1;

std::string Figure(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

// Clamps one coordinate, counting clipped ones; InvalidArgument for NaN or infinity.
Status ClampCoordinate(float value, size_t index, double clip, double* out, size_t* clipped) {
  if (!std::isfinite(value)) {
    return Status::InvalidArgument("update coordinate " + std::to_string(index) +
                                   " is not finite (" + Figure(value) + ")");
  }
  double x = value;
  if (x > clip || x < -clip) {
    ++*clipped;
    x = std::clamp(x, -clip, clip);
  }
  *out = x;
  return Status::Ok();
}

uint32_t ToWord(int64_t q) { return static_cast<uint32_t>(static_cast<uint64_t>(q)); }

}  // namespace

Result<FixedPointCodec> FixedPointCodec::Create(double clip, int fractional_bits,
                                                uint32_t max_summands) {
  if (!(clip > 0) || !std::isfinite(clip)) {
    return Status::InvalidArgument("the clipping bound must be positive and finite, not " +
                                   Figure(clip));
  }
  if (fractional_bits < 0 || fractional_bits > kMaxFractionalBits) {
    return Status::InvalidArgument("fractional bits must be 0.." +
                                   std::to_string(kMaxFractionalBits) + ", not " +
                                   std::to_string(fractional_bits));
  }
  if (max_summands < 1) return Status::InvalidArgument("at least one summand is needed");
  const double scaled = std::ceil(std::ldexp(clip, fractional_bits));
  const double worst = scaled * static_cast<double>(max_summands);
  if (worst > static_cast<double>(kHeadroom)) {
    // The largest f that would fit, to make the error actionable.
    int fits = -1;
    for (int f = fractional_bits - 1; f >= 0; --f) {
      if (std::ceil(std::ldexp(clip, f)) * max_summands <= static_cast<double>(kHeadroom)) {
        fits = f;
        break;
      }
    }
    std::string hint = fits >= 0 ? "; use at most " + std::to_string(fits) + " fractional bits"
                                 : "; lower the clipping bound or the number of clients";
    return Status::InvalidArgument(
        "fixed-point headroom exceeded: " + std::to_string(max_summands) + " summands x ceil(" +
        Figure(clip) + " x 2^" + std::to_string(fractional_bits) + ") = " + Figure(worst) +
        " > 2^31 - 1, so the sum modulo 2^32 could wrap" + hint);
  }
  return FixedPointCodec(clip, fractional_bits, max_summands, static_cast<uint32_t>(scaled));
}

Result<std::vector<uint32_t>> FixedPointCodec::Encode(const float* values, size_t count,
                                                      size_t* clipped) const {
  size_t clipped_count = 0;
  std::vector<uint32_t> words(count);
  for (size_t i = 0; i < count; ++i) {
    double x = 0;
    CLEAVE_RETURN_IF_ERROR(ClampCoordinate(values[i], i, clip_, &x, &clipped_count));
    // |x 2^f| <= clip 2^f, so |q| <= ceil(clip 2^f) = max_magnitude_.
    words[i] = ToWord(std::llround(std::ldexp(x, fractional_bits_)));
  }
  if (clipped != nullptr) *clipped = clipped_count;
  return words;
}

Result<std::vector<uint32_t>> FixedPointCodec::EncodeStochastic(const float* values, size_t count,
                                                                const crypto::Key256& rounding_seed,
                                                                size_t* clipped) const {
  CLEAVE_ASSIGN_OR_RETURN(crypto::MaskStream stream, crypto::MaskStream::Create(rounding_seed));
  size_t clipped_count = 0;
  std::vector<uint32_t> words(count);
  uint32_t random[2];
  for (size_t i = 0; i < count; ++i) {
    double x = 0;
    CLEAVE_RETURN_IF_ERROR(ClampCoordinate(values[i], i, clip_, &x, &clipped_count));
    CLEAVE_RETURN_IF_ERROR(stream.NextWords(random, 2));
    // 53 uniform bits: u in [0, 1).
    const uint64_t bits = (static_cast<uint64_t>(random[0]) << 21) | (random[1] >> 11);
    const double u = std::ldexp(static_cast<double>(bits), -53);
    // floor(x 2^f + u) <= ceil(x 2^f) <= max_magnitude_ and >= -max_magnitude_.
    words[i] = ToWord(static_cast<int64_t>(std::floor(std::ldexp(x, fractional_bits_) + u)));
  }
  if (clipped != nullptr) *clipped = clipped_count;
  return words;
}

Result<std::vector<double>> FixedPointCodec::DecodeSum(const std::vector<uint32_t>& sum,
                                                       uint32_t summands) const {
  if (summands > max_summands_) {
    return Status::FailedPrecondition("cannot decode a sum of " + std::to_string(summands) +
                                      " encodings: the codec's headroom " + "covers at most " +
                                      std::to_string(max_summands_));
  }
  std::vector<double> decoded(sum.size());
  for (size_t i = 0; i < sum.size(); ++i) {
    // Two's complement read of the 32-bit ring element.
    const int64_t signed_sum =
        sum[i] >= (uint32_t{1} << 31) ? static_cast<int64_t>(sum[i]) - (int64_t{1} << 32) : sum[i];
    decoded[i] = std::ldexp(static_cast<double>(signed_sum), -fractional_bits_);
  }
  return decoded;
}

}  // namespace cleave
