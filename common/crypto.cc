#include "common/crypto.h"

#include <algorithm>
#include <climits>
#include <cstring>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/rand.h>

namespace cleave::crypto {
namespace {

// Keystream chunk: large enough to amortize the EVP call, small enough for the stack.
constexpr size_t kStreamChunkWords = 1024;

// OpenSSL's EVP update functions take int lengths.
Status CheckIntLength(size_t size, const char* what) {
  if (size > static_cast<size_t>(INT_MAX)) {
    return Status::InvalidArgument(std::string(what) + " of " + std::to_string(size) +
                                   " bytes is larger than OpenSSL accepts in one call");
  }
  return Status::Ok();
}

Result<EvpPkeyPtr> RawX25519Key(const Key256& raw, bool secret) {
  EVP_PKEY* key =
      secret ? EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, raw.data(), raw.size())
             : EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, raw.data(), raw.size());
  if (key == nullptr) {
    return Status::InvalidArgument(std::string("cannot load a raw X25519 ") +
                                   (secret ? "secret" : "public") + " key: " + OpenSslErrorText());
  }
  return EvpPkeyPtr(key);
}

Result<Key256> RawPublicKey(EVP_PKEY* key) {
  Key256 out{};
  size_t length = out.size();
  if (EVP_PKEY_get_raw_public_key(key, out.data(), &length) != 1 || length != out.size()) {
    return Status::Internal("cannot read the raw X25519 public key: " + OpenSslErrorText());
  }
  return out;
}

Result<Key256> RawSecretKey(EVP_PKEY* key) {
  Key256 out{};
  size_t length = out.size();
  if (EVP_PKEY_get_raw_private_key(key, out.data(), &length) != 1 || length != out.size()) {
    return Status::Internal("cannot read the raw X25519 secret key: " + OpenSslErrorText());
  }
  return out;
}

// One HKDF-SHA256 call through EVP_KDF; `mode` is one of EVP_KDF_HKDF_MODE_*.
Status HkdfDerive(int mode, ByteView key, ByteView salt, ByteView info, uint8_t* out,
                  size_t out_size) {
  EvpKdfPtr kdf(EVP_KDF_fetch(nullptr, OSSL_KDF_NAME_HKDF, nullptr));
  if (!kdf) return Status::Internal("HKDF is not available: " + OpenSslErrorText());
  EvpKdfCtxPtr ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) return Status::Internal("EVP_KDF_CTX_new failed: " + OpenSslErrorText());
  // OpenSSL needs a non-null key pointer even for an empty input keying material.
  static const uint8_t kEmpty[1] = {0};
  char digest[] = "SHA256";
  OSSL_PARAM params[6];
  OSSL_PARAM* p = params;
  *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
  *p++ = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
  *p++ = OSSL_PARAM_construct_octet_string(
      OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(key.empty() ? kEmpty : key.data()), key.size());
  // An absent salt is HashLen zero bytes (RFC 5869 section 2.2), which is what HMAC does
  // with an empty key; an absent info is the empty string.
  if (!salt.empty()) {
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<uint8_t*>(salt.data()),
                                             salt.size());
  }
  if (!info.empty()) {
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<uint8_t*>(info.data()),
                                             info.size());
  }
  *p = OSSL_PARAM_construct_end();
  if (EVP_KDF_derive(ctx.get(), out, out_size, params) != 1) {
    return Status::Internal("HKDF-SHA256 failed: " + OpenSslErrorText());
  }
  return Status::Ok();
}

}  // namespace

std::string OpenSslErrorText() {
  std::string text;
  while (const unsigned long code = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof(buf));
    if (!text.empty()) text += "; ";
    text += buf;
  }
  return text.empty() ? "no OpenSSL error recorded" : text;
}

void Cleanse(void* data, size_t size) { OPENSSL_cleanse(data, size); }

Result<Bytes> RandomBytes(size_t size) {
  CLEAVE_RETURN_IF_ERROR(CheckIntLength(size, "a random byte request"));
  Bytes out(size);
  if (size > 0 && RAND_bytes(out.data(), static_cast<int>(size)) != 1) {
    return Status::Internal("the OpenSSL random generator failed: " + OpenSslErrorText());
  }
  return out;
}

Result<Key256> RandomKey() {
  Key256 key{};
  if (RAND_bytes(key.data(), static_cast<int>(key.size())) != 1) {
    return Status::Internal("the OpenSSL random generator failed: " + OpenSslErrorText());
  }
  return key;
}

// ---- X25519 ----

Result<X25519KeyPair> GenerateX25519() {
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_X25519, nullptr));
  EVP_PKEY* raw = nullptr;
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 || EVP_PKEY_keygen(ctx.get(), &raw) != 1) {
    return Status::Internal("X25519 key generation failed: " + OpenSslErrorText());
  }
  EvpPkeyPtr key(raw);
  X25519KeyPair pair;
  CLEAVE_ASSIGN_OR_RETURN(pair.secret_key, RawSecretKey(key.get()));
  CLEAVE_ASSIGN_OR_RETURN(pair.public_key, RawPublicKey(key.get()));
  return pair;
}

Result<X25519KeyPair> X25519FromSecret(const Key256& secret_key) {
  CLEAVE_ASSIGN_OR_RETURN(EvpPkeyPtr key, RawX25519Key(secret_key, /*secret=*/true));
  X25519KeyPair pair;
  pair.secret_key = secret_key;
  CLEAVE_ASSIGN_OR_RETURN(pair.public_key, RawPublicKey(key.get()));
  return pair;
}

Result<Key256> X25519Agree(const Key256& secret_key, const Key256& peer_public_key) {
  CLEAVE_ASSIGN_OR_RETURN(EvpPkeyPtr own, RawX25519Key(secret_key, /*secret=*/true));
  CLEAVE_ASSIGN_OR_RETURN(EvpPkeyPtr peer, RawX25519Key(peer_public_key, /*secret=*/false));
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new(own.get(), nullptr));
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1) {
    return Status::Internal("X25519 setup failed: " + OpenSslErrorText());
  }
  if (EVP_PKEY_derive_set_peer(ctx.get(), peer.get()) != 1) {
    return Status::InvalidArgument("the peer's X25519 public key is unusable: " +
                                   OpenSslErrorText());
  }
  Key256 shared{};
  size_t length = shared.size();
  if (EVP_PKEY_derive(ctx.get(), shared.data(), &length) != 1 || length != shared.size()) {
    // OpenSSL refuses an all-zero result, which only a low-order peer point produces.
    return Status::InvalidArgument(
        "X25519 agreement failed (is the peer key a low-order point?): " + OpenSslErrorText());
  }
  uint8_t any = 0;
  for (uint8_t b : shared) any |= b;
  if (any == 0) {
    return Status::InvalidArgument("X25519 agreement gave all zeros: low-order peer key");
  }
  return shared;
}

// ---- HKDF-SHA256 ----

Result<Key256> HkdfExtract(ByteView salt, ByteView ikm) {
  Key256 prk{};
  CLEAVE_RETURN_IF_ERROR(
      HkdfDerive(EVP_KDF_HKDF_MODE_EXTRACT_ONLY, ikm, salt, ByteView(), prk.data(), prk.size()));
  return prk;
}

Result<Bytes> HkdfExpand(const Key256& prk, ByteView info, size_t length) {
  if (length == 0 || length > 255 * kKeyBytes) {
    return Status::InvalidArgument("HKDF-SHA256 output length must be 1.." +
                                   std::to_string(255 * kKeyBytes) + " bytes, not " +
                                   std::to_string(length));
  }
  Bytes okm(length);
  CLEAVE_RETURN_IF_ERROR(
      HkdfDerive(EVP_KDF_HKDF_MODE_EXPAND_ONLY, prk, ByteView(), info, okm.data(), okm.size()));
  return okm;
}

Result<Bytes> Hkdf(ByteView salt, ByteView ikm, ByteView info, size_t length) {
  CLEAVE_ASSIGN_OR_RETURN(Key256 prk, HkdfExtract(salt, ikm));
  auto okm = HkdfExpand(prk, info, length);
  Cleanse(prk);
  return okm;
}

Result<Key256> HkdfKey(ByteView salt, ByteView ikm, ByteView info) {
  CLEAVE_ASSIGN_OR_RETURN(Bytes okm, Hkdf(salt, ikm, info, kKeyBytes));
  Key256 key{};
  std::memcpy(key.data(), okm.data(), key.size());
  Cleanse(okm.data(), okm.size());
  return key;
}

// ---- AES-256-GCM ----

Result<Bytes> AeadSeal(const Key256& key, ByteView plaintext, ByteView associated_data) {
  CLEAVE_RETURN_IF_ERROR(CheckIntLength(plaintext.size(), "a plaintext"));
  CLEAVE_RETURN_IF_ERROR(CheckIntLength(associated_data.size(), "associated data"));
  Bytes sealed(kAeadNonceBytes + plaintext.size() + kAeadTagBytes);
  if (RAND_bytes(sealed.data(), static_cast<int>(kAeadNonceBytes)) != 1) {
    return Status::Internal("the OpenSSL random generator failed: " + OpenSslErrorText());
  }
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  int length = 0;
  if (!ctx ||
      EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), sealed.data()) != 1 ||
      (!associated_data.empty() &&
       EVP_EncryptUpdate(ctx.get(), nullptr, &length, associated_data.data(),
                         static_cast<int>(associated_data.size())) != 1) ||
      (!plaintext.empty() &&
       EVP_EncryptUpdate(ctx.get(), sealed.data() + kAeadNonceBytes, &length, plaintext.data(),
                         static_cast<int>(plaintext.size())) != 1) ||
      EVP_EncryptFinal_ex(ctx.get(), sealed.data() + kAeadNonceBytes + plaintext.size(), &length) !=
          1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, static_cast<int>(kAeadTagBytes),
                          sealed.data() + kAeadNonceBytes + plaintext.size()) != 1) {
    return Status::Internal("AES-256-GCM encryption failed: " + OpenSslErrorText());
  }
  return sealed;
}

Result<Bytes> AeadOpen(const Key256& key, ByteView sealed, ByteView associated_data) {
  if (sealed.size() < kAeadOverheadBytes) {
    return Status::InvalidArgument("a sealed message is at least " +
                                   std::to_string(kAeadOverheadBytes) + " bytes, got " +
                                   std::to_string(sealed.size()));
  }
  CLEAVE_RETURN_IF_ERROR(CheckIntLength(sealed.size(), "a sealed message"));
  CLEAVE_RETURN_IF_ERROR(CheckIntLength(associated_data.size(), "associated data"));
  const size_t text_size = sealed.size() - kAeadOverheadBytes;
  const uint8_t* nonce = sealed.data();
  const uint8_t* text = sealed.data() + kAeadNonceBytes;
  // The tag buffer is copied: EVP_CTRL_GCM_SET_TAG takes a non-const pointer.
  uint8_t tag[kAeadTagBytes];
  std::memcpy(tag, text + text_size, kAeadTagBytes);
  Bytes plaintext(text_size);
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  int length = 0;
  if (!ctx || EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), nonce) != 1 ||
      (!associated_data.empty() &&
       EVP_DecryptUpdate(ctx.get(), nullptr, &length, associated_data.data(),
                         static_cast<int>(associated_data.size())) != 1) ||
      (text_size > 0 && EVP_DecryptUpdate(ctx.get(), plaintext.data(), &length, text,
                                          static_cast<int>(text_size)) != 1) ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, static_cast<int>(kAeadTagBytes), tag) !=
          1) {
    return Status::Internal("AES-256-GCM decryption setup failed: " + OpenSslErrorText());
  }
  if (EVP_DecryptFinal_ex(ctx.get(), plaintext.data() + text_size, &length) != 1) {
    ERR_clear_error();
    Cleanse(plaintext.data(), plaintext.size());
    return Status::DataLoss(
        "authenticated decryption failed: the message was tampered with, misdirected, or "
        "sealed under another key or associated data");
  }
  return plaintext;
}

// ---- Mask generator ----

Result<MaskStream> MaskStream::Create(const Key256& seed) {
  static const uint8_t kZeroCounter[16] = {0};
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx ||
      EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_ctr(), nullptr, seed.data(), kZeroCounter) != 1) {
    return Status::Internal("AES-256-CTR setup failed: " + OpenSslErrorText());
  }
  return MaskStream(std::move(ctx));
}

Status MaskStream::NextBytes(uint8_t* out, size_t size) {
  if (!ctx_) return Status::FailedPrecondition("the mask stream was moved from");
  // Encrypting zeros in place yields the keystream itself.
  std::memset(out, 0, size);
  while (size > 0) {
    const size_t step = std::min<size_t>(size, 1 << 20);
    int length = 0;
    if (EVP_EncryptUpdate(ctx_.get(), out, &length, out, static_cast<int>(step)) != 1 ||
        static_cast<size_t>(length) != step) {
      return Status::Internal("AES-256-CTR keystream failed: " + OpenSslErrorText());
    }
    out += step;
    size -= step;
  }
  return Status::Ok();
}

Status MaskStream::NextWords(uint32_t* out, size_t count) {
  uint8_t bytes[kStreamChunkWords * 4];
  while (count > 0) {
    const size_t step = std::min(count, kStreamChunkWords);
    CLEAVE_RETURN_IF_ERROR(NextBytes(bytes, step * 4));
    for (size_t i = 0; i < step; ++i) {
      const uint8_t* b = bytes + 4 * i;
      out[i] = static_cast<uint32_t>(b[0]) | static_cast<uint32_t>(b[1]) << 8 |
               static_cast<uint32_t>(b[2]) << 16 | static_cast<uint32_t>(b[3]) << 24;
    }
    out += step;
    count -= step;
  }
  Cleanse(bytes, sizeof(bytes));
  return Status::Ok();
}

Result<std::vector<uint32_t>> ExpandSeed(const Key256& seed, size_t count) {
  CLEAVE_ASSIGN_OR_RETURN(MaskStream stream, MaskStream::Create(seed));
  std::vector<uint32_t> words(count);
  CLEAVE_RETURN_IF_ERROR(stream.NextWords(words.data(), words.size()));
  return words;
}

Status AddSeedStream(const Key256& seed, bool subtract, uint32_t* acc, size_t count) {
  CLEAVE_ASSIGN_OR_RETURN(MaskStream stream, MaskStream::Create(seed));
  uint32_t words[kStreamChunkWords];
  while (count > 0) {
    const size_t step = std::min(count, kStreamChunkWords);
    CLEAVE_RETURN_IF_ERROR(stream.NextWords(words, step));
    if (subtract) {
      for (size_t i = 0; i < step; ++i) acc[i] -= words[i];
    } else {
      for (size_t i = 0; i < step; ++i) acc[i] += words[i];
    }
    acc += step;
    count -= step;
  }
  Cleanse(words, sizeof(words));
  return Status::Ok();
}

}  // namespace cleave::crypto
