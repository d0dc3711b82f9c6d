#include "common/shamir.h"

#include <algorithm>
#include <string>
#include <unordered_set>

#include <openssl/rand.h>

namespace cleave::shamir {
namespace {

__extension__ typedef unsigned __int128 Uint128;

uint64_t Reduce(uint64_t v) {
  // v < 2^62 + 2^61 in every caller: at most two subtractions.
  if (v >= kPrime) v -= kPrime;
  if (v >= kPrime) v -= kPrime;
  return v;
}
uint64_t Add(uint64_t a, uint64_t b) { return Reduce(a + b); }
uint64_t Sub(uint64_t a, uint64_t b) { return a >= b ? a - b : a + kPrime - b; }
uint64_t Mul(uint64_t a, uint64_t b) {
  const Uint128 product = static_cast<Uint128>(a) * b;  // < 2^122
  // 2^61 = 1 (mod p): fold the high bits onto the low ones.
  const uint64_t low = static_cast<uint64_t>(product) & kPrime;
  const uint64_t high = static_cast<uint64_t>(product >> 61);
  return Reduce(low + high);
}
uint64_t Pow(uint64_t base, uint64_t exponent) {
  uint64_t result = 1;
  while (exponent > 0) {
    if (exponent & 1) result = Mul(result, base);
    base = Mul(base, base);
    exponent >>= 1;
  }
  return result;
}
// Fermat: a^(p-2) = a^-1 for a != 0.
uint64_t Inverse(uint64_t a) { return Pow(a, kPrime - 2); }

// `count` uniform field elements from the CSPRNG (61 random bits, the single value p
// rejected: no modulo bias).
Status RandomElements(std::vector<uint64_t>& out, size_t count) {
  out.resize(count);
  size_t filled = 0;
  while (filled < count) {
    const size_t want = count - filled;
    std::vector<uint64_t> raw(want);
    if (RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()),
                   static_cast<int>(want * sizeof(uint64_t))) != 1) {
      return Status::Internal("the OpenSSL random generator failed: " + crypto::OpenSslErrorText());
    }
    for (uint64_t r : raw) {
      r &= kPrime;
      if (r != kPrime) out[filled++] = r;
    }
    crypto::Cleanse(raw.data(), raw.size() * sizeof(uint64_t));
  }
  return Status::Ok();
}

// The chunks of a secret as field elements (little-endian, 7 bytes each, the last shorter).
std::vector<uint64_t> ToElements(crypto::ByteView secret) {
  std::vector<uint64_t> elements(ElementsFor(secret.size()), 0);
  for (size_t i = 0; i < secret.size(); ++i) {
    elements[i / kChunkBytes] |= static_cast<uint64_t>(secret.data()[i]) << (8 * (i % kChunkBytes));
  }
  return elements;
}

// The Lagrange coefficients c_j with P(point) = sum_j c_j * P(xs[j]) for any polynomial P of
// degree < xs.size(): c_j = w_j * prod_{m != j} (point - x_m), with the barycentric weights
// w_j = 1 / prod_{m != j} (x_j - x_m) precomputed. Prefix/suffix products avoid divisions.
std::vector<uint64_t> LagrangeAt(const std::vector<uint64_t>& xs,
                                 const std::vector<uint64_t>& weights, uint64_t point) {
  const size_t t = xs.size();
  std::vector<uint64_t> prefix(t + 1, 1), suffix(t + 1, 1);
  for (size_t j = 0; j < t; ++j) prefix[j + 1] = Mul(prefix[j], Sub(point, xs[j]));
  for (size_t j = t; j-- > 0;) suffix[j] = Mul(suffix[j + 1], Sub(point, xs[j]));
  std::vector<uint64_t> coefficients(t);
  for (size_t j = 0; j < t; ++j) {
    coefficients[j] = Mul(weights[j], Mul(prefix[j], suffix[j + 1]));
  }
  return coefficients;
}

Status ValidateShare(const Share& share, size_t elements, size_t secret_bytes) {
  if (share.x == 0) {
    return Status::OutOfRange("share point 0 is reserved for the secret itself");
  }
  if (share.y.size() != elements) {
    return Status::InvalidArgument("share " + std::to_string(share.x) + " holds " +
                                   std::to_string(share.y.size()) + " field elements; a " +
                                   std::to_string(secret_bytes) + "-byte secret needs " +
                                   std::to_string(elements));
  }
  for (uint64_t v : share.y) {
    if (v >= kPrime) {
      return Status::OutOfRange("share " + std::to_string(share.x) +
                                " holds a value outside the field (>= 2^61 - 1)");
    }
  }
  return Status::Ok();
}

}  // namespace

Result<std::vector<Share>> Split(crypto::ByteView secret, uint32_t threshold,
                                 const std::vector<uint32_t>& xs) {
  if (secret.empty() || secret.size() > kMaxSecretBytes) {
    return Status::InvalidArgument("a secret to share must be 1.." +
                                   std::to_string(kMaxSecretBytes) + " bytes, not " +
                                   std::to_string(secret.size()));
  }
  if (xs.size() > kMaxShares) {
    return Status::InvalidArgument("at most " + std::to_string(kMaxShares) + " shares, not " +
                                   std::to_string(xs.size()));
  }
  if (threshold < 1 || threshold > xs.size()) {
    return Status::InvalidArgument("threshold " + std::to_string(threshold) +
                                   " must be between 1 and the number of shares (" +
                                   std::to_string(xs.size()) + ")");
  }
  std::unordered_set<uint32_t> seen;
  for (uint32_t x : xs) {
    if (x == 0) return Status::InvalidArgument("share point 0 would reveal the secret");
    if (!seen.insert(x).second) {
      return Status::InvalidArgument("share point " + std::to_string(x) + " is repeated");
    }
  }
  // coefficients[e * (t - 1) + k] is the degree-(k + 1) coefficient of chunk e's polynomial.
  std::vector<uint64_t> constant = ToElements(secret);
  const size_t elements = constant.size();
  std::vector<uint64_t> coefficients;
  CLEAVE_RETURN_IF_ERROR(RandomElements(coefficients, elements * (threshold - 1)));

  std::vector<Share> shares(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    shares[i].x = xs[i];
    shares[i].y.resize(elements);
    for (size_t e = 0; e < elements; ++e) {
      // Horner from the highest coefficient down to the secret chunk.
      uint64_t value = 0;
      for (size_t k = threshold - 1; k-- > 0;) {
        value = Add(Mul(value, xs[i]), coefficients[e * (threshold - 1) + k]);
      }
      shares[i].y[e] = Add(Mul(value, xs[i]), constant[e]);
    }
  }
  crypto::Cleanse(coefficients.data(), coefficients.size() * sizeof(uint64_t));
  crypto::Cleanse(constant.data(), constant.size() * sizeof(uint64_t));
  return shares;
}

Result<std::vector<Share>> Split(crypto::ByteView secret, uint32_t threshold, uint32_t num_shares) {
  std::vector<uint32_t> xs(num_shares);
  for (uint32_t i = 0; i < num_shares; ++i) xs[i] = i + 1;
  return Split(secret, threshold, xs);
}

Result<crypto::Bytes> Reconstruct(const std::vector<Share>& shares, uint32_t threshold,
                                  size_t secret_bytes) {
  if (threshold < 1) return Status::InvalidArgument("the threshold must be at least 1");
  if (secret_bytes == 0 || secret_bytes > kMaxSecretBytes) {
    return Status::InvalidArgument("a shared secret is 1.." + std::to_string(kMaxSecretBytes) +
                                   " bytes, not " + std::to_string(secret_bytes));
  }
  if (shares.size() < threshold) {
    return Status::FailedPrecondition("cannot reconstruct the secret from " +
                                      std::to_string(shares.size()) + " shares: threshold is " +
                                      std::to_string(threshold));
  }
  const size_t elements = ElementsFor(secret_bytes);
  std::unordered_set<uint32_t> seen;
  for (const Share& share : shares) {
    CLEAVE_RETURN_IF_ERROR(ValidateShare(share, elements, secret_bytes));
    if (!seen.insert(share.x).second) {
      return Status::InvalidArgument("share point " + std::to_string(share.x) +
                                     " appears more than once");
    }
  }

  std::vector<uint64_t> xs(threshold);
  for (size_t j = 0; j < threshold; ++j) xs[j] = shares[j].x;
  std::vector<uint64_t> weights(threshold);
  for (size_t j = 0; j < threshold; ++j) {
    uint64_t denominator = 1;
    for (size_t m = 0; m < threshold; ++m) {
      if (m != j) denominator = Mul(denominator, Sub(xs[j], xs[m]));
    }
    weights[j] = Inverse(denominator);  // non-zero: the points are distinct
  }
  // The value at the point whose Lagrange coefficients are `c`, for chunk `e`.
  auto interpolate = [&](size_t e, const std::vector<uint64_t>& c) {
    uint64_t value = 0;
    for (size_t j = 0; j < threshold; ++j) value = Add(value, Mul(c[j], shares[j].y[e]));
    return value;
  };

  // Every share beyond the threshold must lie on the interpolated polynomials.
  for (size_t k = threshold; k < shares.size(); ++k) {
    const std::vector<uint64_t> c = LagrangeAt(xs, weights, shares[k].x);
    for (size_t e = 0; e < elements; ++e) {
      if (interpolate(e, c) != shares[k].y[e]) {
        return Status::DataLoss("share " + std::to_string(shares[k].x) +
                                " is inconsistent with the others: corrupt, forged, or from "
                                "another secret");
      }
    }
  }

  const std::vector<uint64_t> at_zero = LagrangeAt(xs, weights, 0);
  crypto::Bytes secret(secret_bytes);
  for (size_t e = 0; e < elements; ++e) {
    const uint64_t chunk = interpolate(e, at_zero);
    const size_t width = std::min(kChunkBytes, secret_bytes - e * kChunkBytes);
    if (chunk >> (8 * width) != 0) {
      crypto::Cleanse(secret.data(), secret.size());
      return Status::DataLoss(
          "the reconstructed value does not fit the secret's width: the shares are corrupt or "
          "belong to different secrets");
    }
    for (size_t b = 0; b < width; ++b) {
      secret[e * kChunkBytes + b] = static_cast<uint8_t>(chunk >> (8 * b));
    }
  }
  return secret;
}

}  // namespace cleave::shamir
