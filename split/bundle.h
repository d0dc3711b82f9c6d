// Model bundles: a directory holding manifest.json plus the files it lists.
//
// manifest.json = {
//   "format": "cleave-bundle", "format_version": 1,
//   "created_unix": <int>, "kind": "<what the model is, e.g. vision-split>",
//   "model": { ...free-form description written by the producer (architecture, split
//              point, exits, thresholds, quantization parameters)... },
//   "files": { "<name>": {"sha256": "<hex>", "bytes": <int>}, ... }
// }
// A bundle is written atomically: every file goes to a sibling staging directory, is
// fsynced, then the directory is renamed into place (replacing an older bundle only after
// the new one is complete). Opening a bundle verifies the format version and the size and
// SHA-256 of every listed file and refuses unlisted names; any mismatch is DataLoss naming
// the file.
//
// Signatures: manifest.sig = {"algorithm": "ed25519", "key_sha256": <signer's fingerprint>,
// "manifest_sha256": ..., "signature": <hex>} signs the exact bytes of manifest.json, which
// lists the size and SHA-256 of every file, so it covers the whole bundle. It is not listed
// in "files" (signing adds it to a finished bundle). A process with a trusted key
// (SetTrustedBundleKey, set by daemons from their config) refuses, in every Bundle::Open,
// bundles that are unsigned (FailedPrecondition) or whose signature does not verify with
// that key (DataLoss): one switch covers every load path, hot reloads included.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace cleave {

inline constexpr int kBundleFormatVersion = 1;

struct BundleFileInfo {
  std::string sha256;  // lowercase hex
  uint64_t bytes = 0;
};

// Collects files and a model description, then commits them as one bundle directory.
// Not thread-safe. Nothing is visible at `dir` until Commit() succeeds; a destroyed,
// uncommitted writer removes its staging directory.
class BundleWriter {
 public:
  // `dir` is the final bundle directory (its parent must exist or be creatable).
  explicit BundleWriter(std::filesystem::path dir);
  ~BundleWriter();
  BundleWriter(const BundleWriter&) = delete;
  BundleWriter& operator=(const BundleWriter&) = delete;

  // Adds a file with these bytes. `name` is a plain file name (no '/', not "manifest.json").
  Status AddFile(const std::string& name, const std::string& bytes);
  // Path inside the staging directory where a producer may write `name` itself (e.g.
  // torch::save); the file is hashed at Commit(). Creates the staging directory.
  Result<std::filesystem::path> StagingPath(const std::string& name);

  // Writes manifest.json with `kind` and `model`, fsyncs, and renames into place.
  // Replacing: an existing bundle at `dir` is swapped out atomically where the filesystem
  // supports renameat2(RENAME_EXCHANGE), else moved aside and removed only after the rename
  // succeeded. Refuses (FailedPrecondition) to replace a non-directory or a non-empty
  // directory without manifest.json, a StagingPath() name that was never written, and any
  // staging entry not added through AddFile()/StagingPath(). Later calls fail.
  Status Commit(const std::string& kind, const nlohmann::json& model);

 private:
  Status EnsureStaging();
  std::filesystem::path dir_;
  std::filesystem::path staging_;
  std::map<std::string, bool> names_;
  bool committed_ = false;
};

// A verified, opened bundle. Immutable after Open(); safe to share across threads.
class Bundle {
 public:
  // Reads and verifies `dir` (see the file comment). Errors: NotFound (no directory or
  // manifest), InvalidArgument (malformed manifest), VersionMismatch, DataLoss (hash/size).
  // DataLoss also covers a listed file that is missing or not a regular file, and any
  // directory entry other than manifest.json, manifest.sig and the listed files (so a
  // file copied in by hand, which nothing verified, is never mistaken for the model's).
  // Listed names must be plain (no '/', '\\', "..", NUL; not manifest.json/.sig).
  // With a trusted key set, the signature is checked first, over the manifest bytes read.
  static Result<Bundle> Open(const std::filesystem::path& dir);
  // As above; `require_signature` false skips the trusted-key check (signing tools only).
  static Result<Bundle> Open(const std::filesystem::path& dir, bool require_signature);

  const std::filesystem::path& dir() const { return dir_; }
  const std::string& kind() const { return kind_; }
  const nlohmann::json& model() const { return model_; }
  const std::map<std::string, BundleFileInfo>& files() const { return files_; }
  // SHA-256 of manifest.json itself: identifies this exact bundle (for logs and replies).
  const std::string& manifest_sha256() const { return manifest_sha256_; }
  // The exact manifest.json bytes that were verified (what a signature covers).
  const std::string& manifest_bytes() const { return manifest_bytes_; }

  // OK when the bundle is of `kind`; InvalidArgument naming both kinds otherwise.
  Status CheckKind(const std::string& kind) const;

  bool HasFile(const std::string& name) const { return files_.count(name) > 0; }
  // Absolute path of a listed file; NotFound for unlisted names.
  Result<std::filesystem::path> PathOf(const std::string& name) const;
  // Re-reads a listed file and checks its hash again (guards against changes after Open).
  Result<std::string> ReadVerified(const std::string& name) const;

 private:
  std::filesystem::path dir_;
  std::string kind_;
  nlohmann::json model_;
  std::map<std::string, BundleFileInfo> files_;
  std::string manifest_sha256_;
  std::string manifest_bytes_;
};

// Requires every later Bundle::Open in this process to carry a valid signature by this
// Ed25519 public key (PEM); "" lifts the requirement. InvalidArgument for a malformed or
// secret key. Thread-safe; daemons call it once at start-up.
Status SetTrustedBundleKey(const std::string& public_pem);
// Daemon start-up: reads the public key file at `path` and trusts it ("" = no requirement).
// Errors name the file.
Status TrustBundleKeyFile(const std::string& path);
// Fingerprint of the trusted key, "" when none.
std::string TrustedBundleKeyFingerprint();

// Signs the bundle at `dir` (verified first; any trusted-key requirement is not applied)
// with an Ed25519 secret key (PEM), writing manifest.sig atomically.
Status SignBundle(const std::filesystem::path& dir, const std::string& secret_pem);
// Checks `bundle`'s manifest.sig against `public_pem` (errors as for a trusted key).
Status VerifyBundleSignature(const Bundle& bundle, const std::string& public_pem);

}  // namespace cleave
