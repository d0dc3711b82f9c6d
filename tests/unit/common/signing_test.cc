#include "common/signing.h"

#include <sys/stat.h>

#include <filesystem>

#include <gtest/gtest.h>

#include "common/file_util.h"

namespace cleave::signing {
namespace {

namespace fs = std::filesystem;

TEST(SigningTest, SignsAndVerifiesAndRejectsEveryChange) {
  auto pair = GenerateEd25519();
  ASSERT_TRUE(pair.ok()) << pair.status().ToString();
  EXPECT_NE(pair->secret_pem.find("PRIVATE KEY"), std::string::npos);
  EXPECT_NE(pair->public_pem.find("PUBLIC KEY"), std::string::npos);
  const std::string message = "{\"format\": \"cleave-bundle\"}";
  auto sig = SignEd25519(pair->secret_pem, message);
  ASSERT_TRUE(sig.ok()) << sig.status().ToString();
  EXPECT_EQ(sig->size(), kEd25519SignatureBytes);
  EXPECT_TRUE(VerifyEd25519(pair->public_pem, message, *sig).ok());
  // Ed25519 is deterministic: the same key and message sign the same way.
  EXPECT_EQ(*SignEd25519(pair->secret_pem, message), *sig);

  std::string changed = message;
  changed[3] ^= 1;
  EXPECT_EQ(VerifyEd25519(pair->public_pem, changed, *sig).code(), StatusCode::kDataLoss);
  std::string bad_sig = *sig;
  bad_sig[10] ^= 0x40;
  EXPECT_EQ(VerifyEd25519(pair->public_pem, message, bad_sig).code(), StatusCode::kDataLoss);
  EXPECT_EQ(VerifyEd25519(pair->public_pem, message, sig->substr(1)).code(),
            StatusCode::kInvalidArgument);
  auto other = GenerateEd25519();
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(VerifyEd25519(other->public_pem, message, *sig).code(), StatusCode::kDataLoss);

  // Fingerprints: 64 hex digits, the same for both halves of a pair, distinct across pairs.
  auto fp = Ed25519Fingerprint(pair->public_pem);
  ASSERT_TRUE(fp.ok());
  EXPECT_EQ(fp->size(), 64u);
  EXPECT_EQ(*Ed25519Fingerprint(pair->secret_pem), *fp);
  EXPECT_NE(*Ed25519Fingerprint(other->public_pem), *fp);
}

TEST(SigningTest, MalformedKeysAreErrors) {
  EXPECT_EQ(SignEd25519("not a key", "m").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(VerifyEd25519("", "m", std::string(64, 'x')).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Ed25519Fingerprint("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Ed25519Fingerprint(std::string(1 << 17, 'k')).status().code(),
            StatusCode::kInvalidArgument);
  // A public key where a secret one is needed.
  auto pair = GenerateEd25519();
  ASSERT_TRUE(pair.ok());
  EXPECT_EQ(SignEd25519(pair->public_pem, "m").status().code(), StatusCode::kInvalidArgument);
}

TEST(SigningTest, KeyFilesAreWrittenPrivateAndNeverClobbered) {
  const fs::path dir = fs::temp_directory_path() / ("cleave_test_keys_" + UniqueSuffix());
  ASSERT_TRUE(fs::create_directories(dir));
  auto pair = GenerateEd25519();
  ASSERT_TRUE(pair.ok());
  ASSERT_TRUE(WriteEd25519KeyPair(*pair, dir / "signer", false).ok());
  struct stat st {};
  ASSERT_EQ(::stat((dir / "signer.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(*ReadKeyFile(dir / "signer.key", true), pair->secret_pem);
  EXPECT_EQ(*ReadKeyFile(dir / "signer.pub", false), pair->public_pem);
  auto again = GenerateEd25519();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(WriteEd25519KeyPair(*again, dir / "signer", false).code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(*ReadKeyFile(dir / "signer.key", true), pair->secret_pem);  // untouched
  ASSERT_TRUE(WriteEd25519KeyPair(*again, dir / "signer", true).ok());
  EXPECT_EQ(*ReadKeyFile(dir / "signer.key", true), again->secret_pem);
  // A secret key others can read is refused; a missing file is NotFound.
  ASSERT_EQ(::chmod((dir / "signer.key").c_str(), 0644), 0);
  EXPECT_EQ(ReadKeyFile(dir / "signer.key", true).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(ReadKeyFile(dir / "nope.pub", false).status().code(), StatusCode::kNotFound);
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace
}  // namespace cleave::signing
