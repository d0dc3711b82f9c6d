// Cryptographic building blocks over OpenSSL 3's EVP interface, for secure aggregation
// (common/secure_aggregation.h) and anything else that needs key agreement, key derivation,
// authenticated encryption or a keyed stream of pseudorandom words.
//
//   X25519          key agreement on raw 32-byte keys (RFC 7748)
//   HKDF-SHA256     extract-then-expand key derivation (RFC 5869)
//   AES-256-GCM     authenticated encryption with associated data (NIST SP 800-38D)
//   AES-256-CTR     the mask generator: a 256-bit seed expanded into a keystream of words
//   RAND_bytes      OpenSSL's CSPRNG for keys, seeds and nonces
//
// Every function is thread-safe (no shared mutable state; OpenSSL 3 is thread-safe), never
// throws, and reports failures as a Status carrying OpenSSL's error text. Secrets are plain
// byte arrays owned by the caller; callers that keep them longer than a call should wipe them
// with Cleanse() when done.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <openssl/evp.h>
#include <openssl/kdf.h>

#include "common/status.h"

namespace cleave::crypto {

inline constexpr size_t kKeyBytes = 32;
// A 256-bit key, seed, X25519 scalar or X25519 public u-coordinate.
using Key256 = std::array<uint8_t, kKeyBytes>;
using Bytes = std::vector<uint8_t>;

// A borrowed, read-only byte range (C++17 has no std::span). It never owns: what it points
// at must outlive it.
class ByteView {
 public:
  ByteView() = default;
  ByteView(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  ByteView(const Bytes& bytes) : data_(bytes.data()), size_(bytes.size()) {}  // NOLINT
  template <size_t N>
  ByteView(const std::array<uint8_t, N>& a) : data_(a.data()), size_(N) {}  // NOLINT
  // Text labels, info strings and messages (the bytes, without a terminating NUL).
  ByteView(std::string_view s)  // NOLINT
      : data_(reinterpret_cast<const uint8_t*>(s.data())), size_(s.size()) {}
  ByteView(const std::string& s) : ByteView(std::string_view(s)) {}  // NOLINT
  ByteView(const char* s) : ByteView(std::string_view(s)) {}         // NOLINT

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// RAII owners for OpenSSL handles (std::unique_ptr with deleters that call the *_free).
struct EvpPkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct EvpPkeyCtxDeleter {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct EvpCipherCtxDeleter {
  void operator()(EVP_CIPHER_CTX* p) const { EVP_CIPHER_CTX_free(p); }
};
struct EvpMdCtxDeleter {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
struct EvpKdfDeleter {
  void operator()(EVP_KDF* p) const { EVP_KDF_free(p); }
};
struct EvpKdfCtxDeleter {
  void operator()(EVP_KDF_CTX* p) const { EVP_KDF_CTX_free(p); }
};
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, EvpPkeyDeleter>;
using EvpPkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, EvpPkeyCtxDeleter>;
using EvpCipherCtxPtr = std::unique_ptr<EVP_CIPHER_CTX, EvpCipherCtxDeleter>;
using EvpMdCtxPtr = std::unique_ptr<EVP_MD_CTX, EvpMdCtxDeleter>;
using EvpKdfPtr = std::unique_ptr<EVP_KDF, EvpKdfDeleter>;
using EvpKdfCtxPtr = std::unique_ptr<EVP_KDF_CTX, EvpKdfCtxDeleter>;

// Every error queued on this thread by OpenSSL, oldest first, joined with "; " (the queue is
// cleared). "no OpenSSL error recorded" when the queue is empty.
std::string OpenSslErrorText();

// Overwrites `size` bytes at `data` in a way the compiler cannot elide.
void Cleanse(void* data, size_t size);
template <size_t N>
void Cleanse(std::array<uint8_t, N>& a) {
  Cleanse(a.data(), N);
}

// `size` bytes from OpenSSL's CSPRNG. Internal error if the generator is not seeded.
[[nodiscard]] Result<Bytes> RandomBytes(size_t size);
// A fresh random 256-bit key or seed.
[[nodiscard]] Result<Key256> RandomKey();

// ---- X25519 (RFC 7748) ----

struct X25519KeyPair {
  Key256 secret_key;  // the raw scalar; OpenSSL clamps it on use
  Key256 public_key;  // the raw u-coordinate, X25519(secret_key, 9)
};

// A fresh key pair from the CSPRNG.
[[nodiscard]] Result<X25519KeyPair> GenerateX25519();
// The key pair whose secret is `secret_key` (its public half computed), e.g. for a secret
// reconstructed from shares or a known-answer test.
[[nodiscard]] Result<X25519KeyPair> X25519FromSecret(const Key256& secret_key);
// The shared secret X25519(secret_key, peer_public_key). InvalidArgument when the peer key is
// a low-order point (the result would be all zeros, RFC 7748 section 6.1).
[[nodiscard]] Result<Key256> X25519Agree(const Key256& secret_key, const Key256& peer_public_key);

// ---- HKDF-SHA256 (RFC 5869) ----

// The pseudorandom key HMAC-SHA256(salt, ikm). An empty salt means HashLen zero bytes.
[[nodiscard]] Result<Key256> HkdfExtract(ByteView salt, ByteView ikm);
// `length` bytes of output keying material from `prk` and `info`; InvalidArgument when
// `length` is 0 or above 255 * 32 (the RFC's limit).
[[nodiscard]] Result<Bytes> HkdfExpand(const Key256& prk, ByteView info, size_t length);
// Extract then expand.
[[nodiscard]] Result<Bytes> Hkdf(ByteView salt, ByteView ikm, ByteView info, size_t length);
// A 256-bit key: Hkdf(salt, ikm, info, 32).
[[nodiscard]] Result<Key256> HkdfKey(ByteView salt, ByteView ikm, ByteView info);

// ---- AES-256-GCM authenticated encryption ----

inline constexpr size_t kAeadNonceBytes = 12;
inline constexpr size_t kAeadTagBytes = 16;
inline constexpr size_t kAeadOverheadBytes = kAeadNonceBytes + kAeadTagBytes;

// Encrypts and authenticates `plaintext`, and authenticates `associated_data`, under `key`
// with a fresh random 96-bit nonce. Returns nonce || ciphertext || tag
// (plaintext.size() + kAeadOverheadBytes bytes). Random nonces are safe for up to 2^32
// messages per key (NIST SP 800-38D section 8.3); callers should derive a key per purpose.
[[nodiscard]] Result<Bytes> AeadSeal(const Key256& key, ByteView plaintext,
                                     ByteView associated_data);
// The plaintext of a message sealed by AeadSeal with the same key and associated data.
// InvalidArgument when `sealed` is shorter than kAeadOverheadBytes; DataLoss when the tag
// does not verify (a tampered or misdirected message, or the wrong key or associated data).
[[nodiscard]] Result<Bytes> AeadOpen(const Key256& key, ByteView sealed, ByteView associated_data);

// ---- Mask generator: AES-256-CTR keystream from a 256-bit seed ----

// The keystream of AES-256-CTR keyed by the full 256-bit seed, with an all-zero initial
// 128-bit counter block: block i is AES_seed(i) (counter as a big-endian 128-bit integer).
// Words are read from the keystream as little-endian uint32, so the expansion is the same on
// every platform. Different seeds give computationally independent streams, so a seed must
// be used for one purpose only (derive per-purpose seeds with HKDF).
//
// One MaskStream belongs to one thread at a time. Move-only.
class MaskStream {
 public:
  [[nodiscard]] static Result<MaskStream> Create(const Key256& seed);

  // The next `size` keystream bytes into `out`.
  [[nodiscard]] Status NextBytes(uint8_t* out, size_t size);
  // The next `count` words into `out`.
  [[nodiscard]] Status NextWords(uint32_t* out, size_t count);

 private:
  explicit MaskStream(EvpCipherCtxPtr ctx) : ctx_(std::move(ctx)) {}
  EvpCipherCtxPtr ctx_;
};

// The first `count` words of the seed's stream.
[[nodiscard]] Result<std::vector<uint32_t>> ExpandSeed(const Key256& seed, size_t count);
// acc[i] += word[i] (or -= when `subtract`) modulo 2^32 for the first `count` words of the
// seed's stream, without materializing the stream.
[[nodiscard]] Status AddSeedStream(const Key256& seed, bool subtract, uint32_t* acc, size_t count);

}  // namespace cleave::crypto
