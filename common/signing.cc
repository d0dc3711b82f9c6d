#include "common/signing.h"

#include <memory>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "common/crypto.h"
#include "common/file_util.h"

namespace cleave::signing {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using crypto::EvpMdCtxPtr;
using crypto::EvpPkeyCtxPtr;
using crypto::OpenSslErrorText;
using Pkey = crypto::EvpPkeyPtr;

Result<Pkey> ReadPem(std::string_view pem, bool secret) {
  if (pem.size() > (1 << 16)) return Status::InvalidArgument("key PEM is implausibly large");
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return Status::Internal("BIO_new_mem_buf failed");
  // A null passphrase callback with an empty passphrase: encrypted keys fail cleanly instead
  // of prompting on the terminal.
  static char kEmpty[] = "";
  EVP_PKEY* key = secret ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, kEmpty)
                         : PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, kEmpty);
  if (key == nullptr) {
    return Status::InvalidArgument(std::string("not a PEM ") + (secret ? "private" : "public") +
                                   " key (" + OpenSslErrorText() + ")");
  }
  Pkey owned(key);
  if (EVP_PKEY_get_base_id(key) != EVP_PKEY_ED25519) {
    return Status::InvalidArgument(std::string("the ") + (secret ? "private" : "public") +
                                   " key is not an Ed25519 key");
  }
  return owned;
}

Result<std::string> ToPem(EVP_PKEY* key, bool secret) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!bio) return Status::Internal("BIO_new failed");
  const int ok =
      secret ? PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr)
             : PEM_write_bio_PUBKEY(bio.get(), key);
  if (ok != 1) return Status::Internal("cannot write PEM: " + OpenSslErrorText());
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

}  // namespace

Result<Ed25519KeyPair> GenerateEd25519() {
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr));
  EVP_PKEY* raw = nullptr;
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 || EVP_PKEY_keygen(ctx.get(), &raw) != 1) {
    return Status::Internal("Ed25519 key generation failed: " + OpenSslErrorText());
  }
  Pkey key(raw);
  Ed25519KeyPair pair;
  CLEAVE_ASSIGN_OR_RETURN(pair.secret_pem, ToPem(key.get(), true));
  CLEAVE_ASSIGN_OR_RETURN(pair.public_pem, ToPem(key.get(), false));
  return pair;
}

Result<std::string> SignEd25519(std::string_view secret_pem, std::string_view message) {
  CLEAVE_ASSIGN_OR_RETURN(Pkey key, ReadPem(secret_pem, true));
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  std::string signature(kEd25519SignatureBytes, '\0');
  size_t length = signature.size();
  // Ed25519 is a one-shot scheme: no digest (null) and EVP_DigestSign over the message.
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(signature.data()), &length,
                     reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1 ||
      length != kEd25519SignatureBytes) {
    return Status::Internal("Ed25519 signing failed: " + OpenSslErrorText());
  }
  return signature;
}

Status VerifyEd25519(std::string_view public_pem, std::string_view message,
                     std::string_view signature) {
  if (signature.size() != kEd25519SignatureBytes) {
    return Status::InvalidArgument("an Ed25519 signature is " +
                                   std::to_string(kEd25519SignatureBytes) + " bytes, not " +
                                   std::to_string(signature.size()));
  }
  CLEAVE_ASSIGN_OR_RETURN(Pkey key, ReadPem(public_pem, false));
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1) {
    return Status::Internal("Ed25519 verification setup failed: " + OpenSslErrorText());
  }
  const int ok = EVP_DigestVerify(
      ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
      reinterpret_cast<const unsigned char*>(message.data()), message.size());
  ERR_clear_error();
  if (ok != 1) return Status::DataLoss("the Ed25519 signature does not verify");
  return Status::Ok();
}

Result<std::string> Ed25519Fingerprint(std::string_view pem) {
  const bool secret = pem.find("PRIVATE KEY") != std::string_view::npos;
  CLEAVE_ASSIGN_OR_RETURN(Pkey key, ReadPem(pem, secret));
  unsigned char raw[32];
  size_t length = sizeof(raw);
  if (EVP_PKEY_get_raw_public_key(key.get(), raw, &length) != 1 || length != sizeof(raw)) {
    return Status::Internal("cannot read the raw public key: " + OpenSslErrorText());
  }
  return Sha256Hex(std::string_view(reinterpret_cast<const char*>(raw), length));
}

Result<std::string> ReadKeyFile(const std::filesystem::path& path, bool secret) {
  return secret ? ReadPrivateFile(path) : ReadFileToString(path);
}

Status WriteEd25519KeyPair(const Ed25519KeyPair& pair, const std::filesystem::path& prefix,
                           bool overwrite) {
  return WriteKeyPairFiles(prefix, pair.secret_pem, pair.public_pem, overwrite);
}

}  // namespace cleave::signing
