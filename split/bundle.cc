#include "split/bundle.h"

#include <fcntl.h>
#include <stdio.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <system_error>

#include "common/file_util.h"
#include "common/mutex.h"
#include "common/signing.h"
#include "common/thread_annotations.h"

namespace cleave {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kManifestName[] = "manifest.json";
constexpr char kSignatureName[] = "manifest.sig";
constexpr char kFormatName[] = "cleave-bundle";

std::string Quoted(const std::string& s) { return "'" + s + "'"; }

// A listed file name must stay inside the bundle directory and not shadow the manifest.
Status ValidateFileName(const std::string& name) {
  if (name.empty()) return Status::InvalidArgument("bundle file name is empty");
  if (name.find('/') != std::string::npos || name.find('\\') != std::string::npos ||
      name.find('\0') != std::string::npos || name.find("..") != std::string::npos || name == ".") {
    return Status::InvalidArgument("bundle file name " + Quoted(name) +
                                   " must be a plain file name (no '/', '\\', '..' or NUL)");
  }
  if (name == kManifestName || name == kSignatureName) {
    return Status::InvalidArgument("bundle file name " + Quoted(name) + " is reserved");
  }
  return Status::Ok();
}

bool IsLowerHexSha256(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

Status ErrorCodeStatus(const std::string& what, const std::error_code& ec) {
  std::string message = what + ": " + ec.message();
  if (ec == std::errc::no_such_file_or_directory) return Status::NotFound(std::move(message));
  return Status::IoError(std::move(message));
}

// Renames `from` to `to`; with `exchange` both must exist and swap atomically (Linux
// renameat2 RENAME_EXCHANGE). Returns 0 or errno.
int RenameEntry(const fs::path& from, const fs::path& to, bool exchange) {
  if (!exchange) return ::rename(from.c_str(), to.c_str()) == 0 ? 0 : errno;
#ifdef RENAME_EXCHANGE
  return ::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE) == 0 ? 0
                                                                                         : errno;
#else
  return ENOSYS;
#endif
}

// Checks a manifest's "files" object and fills `files`. Errors name the offending key.
Status ParseFileList(const json& list, std::map<std::string, BundleFileInfo>* files) {
  if (!list.is_object()) return Status::InvalidArgument("manifest key \"files\" must be an object");
  for (const auto& [name, entry] : list.items()) {
    const std::string key = "files." + name;
    CLEAVE_RETURN_IF_ERROR(ValidateFileName(name).WithContext("manifest key \"" + key + "\""));
    if (!entry.is_object()) {
      return Status::InvalidArgument("manifest key \"" + key + "\" must be an object");
    }
    auto sha = entry.find("sha256");
    if (sha == entry.end() || !sha->is_string() || !IsLowerHexSha256(sha->get<std::string>())) {
      return Status::InvalidArgument("manifest key \"" + key +
                                     ".sha256\" must be 64 lowercase hex characters");
    }
    auto bytes = entry.find("bytes");
    if (bytes == entry.end() || !bytes->is_number_unsigned()) {
      return Status::InvalidArgument("manifest key \"" + key +
                                     ".bytes\" must be a non-negative integer");
    }
    (*files)[name] = BundleFileInfo{sha->get<std::string>(), bytes->get<uint64_t>()};
  }
  return Status::Ok();
}

Status CheckDigest(const std::string& name, const BundleFileInfo& expected,
                   const FileDigest& actual) {
  if (actual.bytes != expected.bytes) {
    return Status::DataLoss("bundle file " + Quoted(name) + " has " + std::to_string(actual.bytes) +
                            " bytes, manifest says " + std::to_string(expected.bytes));
  }
  if (actual.sha256 != expected.sha256) {
    return Status::DataLoss("bundle file " + Quoted(name) + " SHA-256 mismatch: manifest says " +
                            expected.sha256 + ", file has " + actual.sha256);
  }
  return Status::Ok();
}

// The listed file must be a regular file (a FIFO would block the reader; a directory or a
// symlink is not what was hashed at commit time).
Status CheckRegularFile(const fs::path& path, const std::string& name) {
  std::error_code ec;
  fs::file_status st = fs::symlink_status(path, ec);
  if (ec || st.type() == fs::file_type::not_found) {
    return Status::DataLoss("bundle file " + Quoted(name) + " is listed in the manifest but " +
                            (ec && ec != std::errc::no_such_file_or_directory
                                 ? "cannot be inspected: " + ec.message()
                                 : std::string("missing")));
  }
  if (st.type() != fs::file_type::regular) {
    return Status::DataLoss("bundle file " + Quoted(name) + " is not a regular file");
  }
  return Status::Ok();
}

// Open() rejects unlisted entries, so refuse to publish anything the manifest won't list.
Status CheckOnlyListedEntries(const fs::path& staging, const std::map<std::string, bool>& names) {
  std::error_code ec;
  for (fs::directory_iterator it(staging, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string entry = it->path().filename().string();
    if (names.count(entry) == 0) {
      return Status::FailedPrecondition("staging directory holds unlisted entry " + Quoted(entry) +
                                        "; write only names given to StagingPath()/AddFile()");
    }
  }
  if (ec) return ErrorCodeStatus("cannot list " + Quoted(staging.string()), ec);
  return Status::Ok();
}

// The manifest's "files" object. Files a producer wrote through StagingPath() are fsynced
// here (AddFile() already fsynced its own).
Result<json> HashStagedFiles(const fs::path& staging, const std::map<std::string, bool>& names) {
  json files = json::object();
  for (const auto& [name, written_by_us] : names) {
    const fs::path path = staging / name;
    if (!written_by_us) {
      std::error_code ec;
      if (fs::symlink_status(path, ec).type() != fs::file_type::regular) {
        return Status::FailedPrecondition("StagingPath(" + Quoted(name) +
                                          ") was requested but no regular file was written there");
      }
      CLEAVE_RETURN_IF_ERROR(FsyncFile(path));
    }
    CLEAVE_ASSIGN_OR_RETURN(FileDigest digest, DigestFile(path));
    files[name] = {{"sha256", digest.sha256}, {"bytes", digest.bytes}};
  }
  return files;
}

// Renames the complete, fsynced `staging` directory to `dir`. An existing bundle at `dir` is
// swapped out atomically where the filesystem allows it (readers never find `dir` missing);
// otherwise it is moved aside, and deleted only once the new bundle is in place. Sets
// *published as soon as the new bundle is visible at `dir`.
Status PublishStaging(const fs::path& staging, const fs::path& dir, bool* published) {
  const fs::path parent = dir.parent_path();
  std::error_code ec;
  const fs::file_status existing = fs::symlink_status(dir, ec);
  if (existing.type() == fs::file_type::not_found) {
    if (int err = RenameEntry(staging, dir, /*exchange=*/false)) {
      return Status::IoError("cannot rename " + Quoted(staging.string()) + " to " +
                             Quoted(dir.string()) + ": " + std::strerror(err));
    }
    *published = true;
    return FsyncDirectory(parent);
  }
  if (existing.type() != fs::file_type::directory) {
    return Status::FailedPrecondition("refusing to replace " + Quoted(dir.string()) +
                                      ": it exists and is not a directory");
  }
  // Never delete a directory that is not a bundle (a mistyped --out must not wipe $HOME).
  if (!fs::is_empty(dir, ec) && !fs::exists(dir / kManifestName, ec)) {
    return Status::FailedPrecondition("refusing to replace " + Quoted(dir.string()) +
                                      ": it is a non-empty directory without " + kManifestName);
  }
  fs::path old_bundle = staging;  // after an exchange, staging holds the old bundle
  if (RenameEntry(staging, dir, /*exchange=*/true) != 0) {
    old_bundle = parent / ("." + dir.filename().string() + ".old-" + UniqueSuffix());
    if (int err = RenameEntry(dir, old_bundle, /*exchange=*/false)) {
      return Status::IoError("cannot move old bundle " + Quoted(dir.string()) +
                             " aside: " + std::strerror(err));
    }
    if (int err = RenameEntry(staging, dir, /*exchange=*/false)) {
      int restore_err = RenameEntry(old_bundle, dir, /*exchange=*/false);
      return Status::IoError("cannot rename " + Quoted(staging.string()) + " to " +
                             Quoted(dir.string()) + ": " + std::strerror(err) +
                             (restore_err
                                  ? "; the old bundle is left at " + Quoted(old_bundle.string())
                                  : std::string("; the old bundle was restored")));
    }
  }
  *published = true;
  Status synced = FsyncDirectory(parent);
  fs::remove_all(old_bundle, ec);  // the new bundle is in place; leftovers are harmless
  return synced;
}

// ---------------------------------------------------------------------------------------
// Signatures

struct Trust {
  Mutex mu;
  std::string public_pem GUARDED_BY(mu);  // empty: signatures are not required
  std::string fingerprint GUARDED_BY(mu);
};
Trust& GlobalTrust() {
  static Trust trust;
  return trust;
}

std::string Hex(std::string_view bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

Result<std::string> Unhex(const std::string& hex) {
  if (hex.size() % 2 != 0) return Status::InvalidArgument("odd number of hex digits");
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) {
    int v = 0;
    for (size_t j = i; j < i + 2; ++j) {
      const char c = hex[j];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) return Status::InvalidArgument("not a lowercase hex digit");
      v = v * 16 + d;
    }
    out += static_cast<char>(v);
  }
  return out;
}

// Verifies `dir`'s manifest.sig over `manifest` (the exact bytes read) with `public_pem`.
Status CheckSignature(const fs::path& dir, const std::string& manifest,
                      const std::string& public_pem, const std::string& fingerprint) {
  const std::string where = "bundle " + Quoted(dir.string());
  Result<std::string> text = ReadFileToString(dir / kSignatureName);
  if (text.status().code() == StatusCode::kNotFound) {
    return Status::FailedPrecondition(where + " is not signed (no " + kSignatureName +
                                      ") and bundles must be signed by key " + fingerprint);
  }
  if (!text.ok()) return text.status();
  json sig;
  try {
    sig = json::parse(*text);
  } catch (const json::exception& e) {
    return Status::DataLoss(std::string(kSignatureName) + " of " + where +
                            " is not valid JSON: " + e.what());
  }
  if (!sig.is_object() || sig.value("algorithm", "") != "ed25519" || !sig.contains("signature") ||
      !sig["signature"].is_string()) {
    return Status::DataLoss(std::string(kSignatureName) + " of " + where +
                            " must be {\"algorithm\": \"ed25519\", \"signature\": <hex>, ...}");
  }
  Result<std::string> raw = Unhex(sig["signature"].get<std::string>());
  if (!raw.ok()) {
    return Status::DataLoss(std::string(kSignatureName) + " of " + where + ": " +
                            raw.status().message());
  }
  Status verified = signing::VerifyEd25519(public_pem, manifest, *raw);
  if (!verified.ok()) {
    const std::string signer = sig.value("key_sha256", std::string("an unnamed key"));
    return Status::DataLoss(where + ": the signature does not verify with the trusted key " +
                            fingerprint + " (signed by " + signer +
                            "): the bundle was changed after signing or signed by another key");
  }
  return Status::Ok();
}

}  // namespace

Status SetTrustedBundleKey(const std::string& public_pem) {
  std::string fingerprint;
  if (!public_pem.empty()) {
    if (public_pem.find("PRIVATE KEY") != std::string::npos) {
      return Status::InvalidArgument(
          "the trusted bundle key must be a public key, not a secret one");
    }
    CLEAVE_ASSIGN_OR_RETURN(fingerprint, signing::Ed25519Fingerprint(public_pem));
  }
  Trust& trust = GlobalTrust();
  MutexLock lock(&trust.mu);
  trust.public_pem = public_pem;
  trust.fingerprint = fingerprint;
  return Status::Ok();
}

Status TrustBundleKeyFile(const std::string& path) {
  if (path.empty()) return SetTrustedBundleKey("");
  Result<std::string> pem = signing::ReadKeyFile(path, /*secret=*/false);
  if (!pem.ok()) return pem.status().WithContext("cannot read the trusted bundle key");
  return SetTrustedBundleKey(*pem).WithContext("trusted bundle key " + path);
}

std::string TrustedBundleKeyFingerprint() {
  Trust& trust = GlobalTrust();
  MutexLock lock(&trust.mu);
  return trust.fingerprint;
}

Status SignBundle(const fs::path& dir, const std::string& secret_pem) {
  CLEAVE_ASSIGN_OR_RETURN(const Bundle bundle, Bundle::Open(dir, /*require_signature=*/false));
  CLEAVE_ASSIGN_OR_RETURN(std::string signature,
                          signing::SignEd25519(secret_pem, bundle.manifest_bytes()));
  CLEAVE_ASSIGN_OR_RETURN(std::string fingerprint, signing::Ed25519Fingerprint(secret_pem));
  const json sig = {{"algorithm", "ed25519"},
                    {"key_sha256", fingerprint},
                    {"manifest_sha256", bundle.manifest_sha256()},
                    {"signature", Hex(signature)}};
  return WriteFileAtomic(bundle.dir() / kSignatureName, sig.dump(2) + "\n");
}

Status VerifyBundleSignature(const Bundle& bundle, const std::string& public_pem) {
  CLEAVE_ASSIGN_OR_RETURN(std::string fingerprint, signing::Ed25519Fingerprint(public_pem));
  return CheckSignature(bundle.dir(), bundle.manifest_bytes(), public_pem, fingerprint);
}

// ---------------------------------------------------------------------------------------
// BundleWriter

BundleWriter::BundleWriter(fs::path dir) {
  std::error_code ec;
  fs::path absolute = fs::absolute(dir, ec);
  dir_ = (ec ? dir : absolute).lexically_normal();
  if (!dir_.has_filename()) dir_ = dir_.parent_path();  // "out/bundle/" -> "out/bundle"
  staging_ = dir_.parent_path() / ("." + dir_.filename().string() + ".staging-" + UniqueSuffix());
}

BundleWriter::~BundleWriter() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);  // best effort: nothing was published
}

Status BundleWriter::EnsureStaging() {
  std::error_code ec;
  if (fs::is_directory(staging_, ec)) return Status::Ok();
  if (dir_.filename().empty() || dir_.filename() == "..") {
    return Status::InvalidArgument("bundle directory " + Quoted(dir_.string()) +
                                   " does not name a directory");
  }
  fs::create_directories(dir_.parent_path(), ec);
  if (ec) return ErrorCodeStatus("cannot create " + Quoted(dir_.parent_path().string()), ec);
  if (!fs::create_directory(staging_, ec) || ec) {
    return ErrorCodeStatus("cannot create staging directory " + Quoted(staging_.string()),
                           ec ? ec : std::make_error_code(std::errc::file_exists));
  }
  return Status::Ok();
}

Status BundleWriter::AddFile(const std::string& name, const std::string& bytes) {
  if (committed_) return Status::FailedPrecondition("bundle already committed");
  CLEAVE_RETURN_IF_ERROR(ValidateFileName(name));
  if (names_.count(name) > 0) {
    return Status::AlreadyExists("bundle file " + Quoted(name) + " was already added");
  }
  CLEAVE_RETURN_IF_ERROR(EnsureStaging());
  CLEAVE_RETURN_IF_ERROR(WriteFileDurable(staging_ / name, bytes));
  names_[name] = true;
  return Status::Ok();
}

Result<fs::path> BundleWriter::StagingPath(const std::string& name) {
  if (committed_) return Status::FailedPrecondition("bundle already committed");
  CLEAVE_RETURN_IF_ERROR(ValidateFileName(name));
  auto it = names_.find(name);
  if (it != names_.end() && it->second) {
    return Status::AlreadyExists("bundle file " + Quoted(name) + " was already added");
  }
  CLEAVE_RETURN_IF_ERROR(EnsureStaging());
  names_[name] = false;  // written by the producer; hashed and fsynced at Commit()
  return staging_ / name;
}

Status BundleWriter::Commit(const std::string& kind, const json& model) {
  if (committed_) return Status::FailedPrecondition("bundle already committed");
  CLEAVE_RETURN_IF_ERROR(EnsureStaging());
  CLEAVE_RETURN_IF_ERROR(CheckOnlyListedEntries(staging_, names_));
  CLEAVE_ASSIGN_OR_RETURN(json files, HashStagedFiles(staging_, names_));
  json manifest = {{"format", kFormatName},
                   {"format_version", kBundleFormatVersion},
                   {"created_unix", static_cast<int64_t>(std::time(nullptr))},
                   {"kind", kind},
                   {"model", model},
                   {"files", std::move(files)}};
  CLEAVE_RETURN_IF_ERROR(WriteFileDurable(staging_ / kManifestName, manifest.dump(2) + "\n"));
  CLEAVE_RETURN_IF_ERROR(FsyncDirectory(staging_));
  return PublishStaging(staging_, dir_, &committed_);
}

// ---------------------------------------------------------------------------------------
// Bundle

Result<Bundle> Bundle::Open(const fs::path& dir) { return Open(dir, true); }

Result<Bundle> Bundle::Open(const fs::path& dir, bool require_signature) {
  std::error_code ec;
  Bundle bundle;
  fs::path absolute = fs::absolute(dir, ec);
  bundle.dir_ = (ec ? dir : absolute).lexically_normal();
  if (!bundle.dir_.has_filename()) bundle.dir_ = bundle.dir_.parent_path();
  const std::string where = " in bundle " + Quoted(bundle.dir_.string());

  if (!fs::is_directory(bundle.dir_, ec)) {
    return Status::NotFound("bundle directory " + Quoted(bundle.dir_.string()) +
                            " does not exist or is not a directory");
  }
  CLEAVE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(bundle.dir_ / kManifestName));
  bundle.manifest_sha256_ = Sha256Hex(text);
  if (require_signature) {
    std::string public_pem, fingerprint;
    {
      Trust& trust = GlobalTrust();
      MutexLock lock(&trust.mu);
      public_pem = trust.public_pem;
      fingerprint = trust.fingerprint;
    }
    if (!public_pem.empty()) {
      CLEAVE_RETURN_IF_ERROR(CheckSignature(bundle.dir_, text, public_pem, fingerprint));
    }
  }

  json manifest;
  try {
    manifest = json::parse(text);
  } catch (const json::exception& e) {
    return Status::InvalidArgument(std::string(kManifestName) + where +
                                   " is not valid JSON: " + e.what());
  }
  auto bad_key = [&](const std::string& key, const std::string& expected) {
    return Status::InvalidArgument(std::string(kManifestName) + where + ": key \"" + key + "\" " +
                                   expected);
  };
  if (!manifest.is_object()) return bad_key("(top level)", "must be an object");

  auto format = manifest.find("format");
  if (format == manifest.end() || !format->is_string()) {
    return bad_key("format", "must be the string \"" + std::string(kFormatName) + "\"");
  }
  if (format->get<std::string>() != kFormatName) {
    return bad_key("format", "is " + format->dump() + ", expected \"" + kFormatName + "\"");
  }
  auto version = manifest.find("format_version");
  if (version == manifest.end() || !version->is_number_integer()) {
    return bad_key("format_version", "must be an integer");
  }
  if (version->get<int64_t>() != kBundleFormatVersion) {
    return Status::VersionMismatch(
        "bundle " + Quoted(bundle.dir_.string()) + " has format_version " +
        std::to_string(version->get<int64_t>()) + "; this build reads version " +
        std::to_string(kBundleFormatVersion));
  }
  auto created = manifest.find("created_unix");
  if (created == manifest.end() || !created->is_number_integer()) {
    return bad_key("created_unix", "must be an integer");
  }
  auto kind = manifest.find("kind");
  if (kind == manifest.end() || !kind->is_string()) return bad_key("kind", "must be a string");
  bundle.kind_ = kind->get<std::string>();
  auto model = manifest.find("model");
  if (model == manifest.end() || !model->is_object()) return bad_key("model", "must be an object");
  bundle.model_ = *model;
  auto files = manifest.find("files");
  if (files == manifest.end()) return bad_key("files", "is missing");
  CLEAVE_RETURN_IF_ERROR(
      ParseFileList(*files, &bundle.files_).WithContext(std::string(kManifestName) + where));

  // Every directory entry must be the manifest, the reserved signature, or a listed file.
  for (fs::directory_iterator it(bundle.dir_, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string entry = it->path().filename().string();
    if (entry != kManifestName && entry != kSignatureName && bundle.files_.count(entry) == 0) {
      return Status::DataLoss("bundle " + Quoted(bundle.dir_.string()) + " holds unlisted entry " +
                              Quoted(entry));
    }
  }
  if (ec) return ErrorCodeStatus("cannot list bundle " + Quoted(bundle.dir_.string()), ec);

  for (const auto& [name, info] : bundle.files_) {
    const fs::path path = bundle.dir_ / name;
    CLEAVE_RETURN_IF_ERROR(CheckRegularFile(path, name));
    Result<FileDigest> digest = DigestFile(path);
    if (!digest.ok()) {
      return digest.status().code() == StatusCode::kNotFound
                 ? Status::DataLoss("bundle file " + Quoted(name) + " disappeared while reading")
                 : digest.status();
    }
    CLEAVE_RETURN_IF_ERROR(CheckDigest(name, info, *digest));
  }
  bundle.manifest_bytes_ = std::move(text);
  return bundle;
}

Status Bundle::CheckKind(const std::string& kind) const {
  if (kind_ == kind) return Status::Ok();
  return Status::InvalidArgument("bundle " + dir_.string() + " is of kind '" + kind_ + "', not '" +
                                 kind + "'");
}

Result<fs::path> Bundle::PathOf(const std::string& name) const {
  if (!HasFile(name)) {
    return Status::NotFound("bundle " + Quoted(dir_.string()) + " lists no file " + Quoted(name));
  }
  return dir_ / name;
}

Result<std::string> Bundle::ReadVerified(const std::string& name) const {
  CLEAVE_ASSIGN_OR_RETURN(fs::path path, PathOf(name));
  Result<std::string> bytes = ReadFileToString(path);
  if (!bytes.ok()) {
    return bytes.status().code() == StatusCode::kNotFound
               ? Status::DataLoss("bundle file " + Quoted(name) + " is missing")
               : bytes.status();
  }
  FileDigest digest{Sha256Hex(*bytes), bytes->size()};
  CLEAVE_RETURN_IF_ERROR(CheckDigest(name, files_.at(name), digest));
  return bytes;
}

}  // namespace cleave
