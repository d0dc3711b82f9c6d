// Shamir t-of-n secret sharing (Shamir, "How to Share a Secret", CACM 1979) over the prime
// field GF(p), p = 2^61 - 1 (a Mersenne prime: reduction is a shift and an add, products fit
// in 128 bits, no big-number library needed).
//
// A secret of L bytes is cut into ceil(L / 7) chunks of at most 7 bytes (56 bits < p, read
// little-endian), and each chunk is shared with its own independent random polynomial of
// degree t - 1, so a share carries one field element per chunk (a 32-byte key: 5 elements,
// 40 bytes). Each chunk is information-theoretically hidden from any t - 1 shares, hence so is
// the whole secret. Secure aggregation (common/secure_aggregation.h) shares 32-byte seeds and
// X25519 secret keys this way, with the evaluation point of a client's share derived from its
// position in the round.
//
// Every function is thread-safe and never throws; malformed shares are errors, never crashes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/crypto.h"
#include "common/status.h"

namespace cleave::shamir {

inline constexpr uint64_t kPrime = (uint64_t{1} << 61) - 1;
// Secret bytes per field element (7 * 8 = 56 bits, always below kPrime).
inline constexpr size_t kChunkBytes = 7;
// Largest secret Split accepts (the use here is 32-byte keys; this only bounds work).
inline constexpr size_t kMaxSecretBytes = 4096;
// Most shares Split makes of one secret.
inline constexpr size_t kMaxShares = 1 << 20;

// Field elements a share of a `secret_bytes`-byte secret holds.
constexpr size_t ElementsFor(size_t secret_bytes) {
  return (secret_bytes + kChunkBytes - 1) / kChunkBytes;
}

struct Share {
  uint32_t x = 0;           // evaluation point, never 0 (the polynomial's value at 0 is the secret)
  std::vector<uint64_t> y;  // the polynomials' values at x, one per chunk, each < kPrime
};

// Shares of `secret` at the evaluation points `xs` (distinct, non-zero), any `threshold` of
// which reconstruct it and fewer reveal nothing. Randomness comes from OpenSSL's CSPRNG.
// InvalidArgument for an empty or oversized secret, more than kMaxShares points, a threshold
// outside 1..xs.size(), or a zero or repeated point.
[[nodiscard]] Result<std::vector<Share>> Split(crypto::ByteView secret, uint32_t threshold,
                                               const std::vector<uint32_t>& xs);
// Split at the points 1..num_shares.
[[nodiscard]] Result<std::vector<Share>> Split(crypto::ByteView secret, uint32_t threshold,
                                               uint32_t num_shares);

// The `secret_bytes`-byte secret from at least `threshold` shares made by Split.
// FailedPrecondition with both counts when fewer than `threshold` shares are given;
// InvalidArgument for a repeated point or a share whose element count does not fit
// `secret_bytes`; OutOfRange for a zero point or an element >= kPrime. The first `threshold`
// shares are interpolated and every further share is checked against them, so a corrupt or
// mixed-up share among more than `threshold` is DataLoss rather than a silently wrong secret
// (with exactly `threshold` shares a wrong share cannot be detected, only a chunk that does
// not fit its byte width). Cost: O(threshold^2 + shares * threshold) per chunk.
[[nodiscard]] Result<crypto::Bytes> Reconstruct(const std::vector<Share>& shares,
                                                uint32_t threshold, size_t secret_bytes);

}  // namespace cleave::shamir
