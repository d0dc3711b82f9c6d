// Ed25519 signatures (RFC 8032) through OpenSSL 3's EVP interface: the signing keys of model
// bundles (split/bundle.h, `cleave bundle sign|verify`, `cleave keys generate`).
//
// Keys travel as PEM files: the secret key as PKCS#8 ("PRIVATE KEY"), written with mode
// 0600, the public key as SubjectPublicKeyInfo ("PUBLIC KEY"). A key's fingerprint is the
// SHA-256 (hex) of its 32 raw public bytes, short enough for logs and error messages.
// Signatures are the 64 raw bytes Ed25519 defines. Every function is thread-safe and never
// throws; malformed keys or signatures are errors, never crashes.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "common/status.h"

namespace cleave::signing {

inline constexpr size_t kEd25519SignatureBytes = 64;

struct Ed25519KeyPair {
  std::string secret_pem;
  std::string public_pem;
};

// A fresh key pair from OpenSSL's CSPRNG.
Result<Ed25519KeyPair> GenerateEd25519();

// The 64-byte signature of `message`. InvalidArgument when `secret_pem` is not an Ed25519
// private key.
Result<std::string> SignEd25519(std::string_view secret_pem, std::string_view message);

// OK when `signature` is `message`'s signature under `public_pem`. InvalidArgument for a
// malformed key or a signature of the wrong length; DataLoss when it does not verify.
Status VerifyEd25519(std::string_view public_pem, std::string_view message,
                     std::string_view signature);

// Fingerprint of a public key (or of the public half of a secret key).
Result<std::string> Ed25519Fingerprint(std::string_view pem);

// Reads a PEM key file, refusing (FailedPrecondition) a secret key file
// that group or others can read.
Result<std::string> ReadKeyFile(const std::filesystem::path& path, bool secret);

// Writes a key pair to `<prefix>.key` (secret, mode 0600) and `<prefix>.pub`, atomically;
// AlreadyExists when either file exists and `overwrite` is false.
Status WriteEd25519KeyPair(const Ed25519KeyPair& pair, const std::filesystem::path& prefix,
                           bool overwrite);

}  // namespace cleave::signing
