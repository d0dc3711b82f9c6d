#include "common/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>

#include <openssl/evp.h>

#include "common/crypto.h"

namespace cleave {
namespace {

namespace fs = std::filesystem;

constexpr size_t kChunkBytes = 1 << 16;

std::string Quoted(const fs::path& path) { return "'" + path.string() + "'"; }

// "<what> '<path>': <strerror>", NotFound for ENOENT so callers can tell "absent" apart.
Status ErrnoStatus(const std::string& what, const fs::path& path, int err) {
  std::string message = what + " " + Quoted(path) + ": " + std::strerror(err);
  if (err == ENOENT) return Status::NotFound(std::move(message));
  return Status::IoError(std::move(message));
}

// Owns a POSIX file descriptor; closing errors are reported by Close() when they matter.
class UniqueFd {
 public:
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Closes now; returns errno on failure (a failed close can mean lost writes on NFS).
  int Close() {
    int fd = fd_;
    fd_ = -1;
    return (fd >= 0 && ::close(fd) != 0) ? errno : 0;
  }

 private:
  int fd_;
};

UniqueFd OpenRetrying(const fs::path& path, int flags, mode_t mode = 0) {
  int fd;
  do {
    fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  } while (fd < 0 && errno == EINTR);
  return UniqueFd(fd);
}

// Writes all of `bytes`, resuming after partial writes and EINTR. Returns errno or 0.
int WriteAll(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return 0;
}

// Reads up to `size` bytes; returns bytes read (0 at EOF) or -1 with errno set.
ssize_t ReadSome(int fd, char* buf, size_t size) {
  ssize_t n;
  do {
    n = ::read(fd, buf, size);
  } while (n < 0 && errno == EINTR);
  return n;
}

int FsyncRetrying(int fd) {
  int rc;
  do {
    rc = ::fsync(fd);
  } while (rc != 0 && errno == EINTR);
  return rc == 0 ? 0 : errno;
}

fs::path ParentOrDot(const fs::path& path) {
  fs::path parent = path.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

using crypto::EvpMdCtxPtr;

// Incremental SHA-256 over OpenSSL's EVP interface.
class Sha256Hasher {
 public:
  Sha256Hasher() : ctx_(EVP_MD_CTX_new()) {
    ok_ = ctx_ != nullptr && EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) == 1;
  }
  void Update(const void* data, size_t size) {
    if (ok_ && size > 0) ok_ = EVP_DigestUpdate(ctx_.get(), data, size) == 1;
  }
  // Lowercase hex digest, or "" if any OpenSSL call failed.
  std::string FinishHex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (!ok_ || EVP_DigestFinal_ex(ctx_.get(), digest, &length) != 1) return "";
    static const char kHex[] = "0123456789abcdef";
    std::string hex(2 * length, '0');
    for (unsigned int i = 0; i < length; ++i) {
      hex[2 * i] = kHex[digest[i] >> 4];
      hex[2 * i + 1] = kHex[digest[i] & 0xf];
    }
    return hex;
  }

 private:
  EvpMdCtxPtr ctx_;
  bool ok_ = false;
};

}  // namespace

Result<std::string> ReadFileToStringBounded(const fs::path& path, uint64_t max_bytes) {
  UniqueFd fd = OpenRetrying(path, O_RDONLY);
  if (!fd.valid()) return ErrnoStatus("cannot open", path, errno);
  const auto too_large = [&] {
    return Status::InvalidArgument("file " + Quoted(path) + " is larger than the limit of " +
                                   std::to_string(max_bytes) + " bytes");
  };
  std::string contents;
  struct stat st;
  if (::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
    if (static_cast<uint64_t>(st.st_size) > max_bytes) return too_large();
    contents.reserve(static_cast<size_t>(st.st_size));
  }
  char buf[kChunkBytes];
  for (;;) {
    ssize_t n = ReadSome(fd.get(), buf, sizeof(buf));
    if (n < 0) return ErrnoStatus("cannot read", path, errno);
    if (n == 0) break;
    if (static_cast<uint64_t>(n) > max_bytes - contents.size()) return too_large();  // grew
    contents.append(buf, static_cast<size_t>(n));
  }
  return contents;
}

Result<std::string> ReadFileToString(const fs::path& path) {
  return ReadFileToStringBounded(path, std::numeric_limits<uint64_t>::max());
}

Status WriteFileDurable(const fs::path& path, std::string_view bytes) {
  UniqueFd fd = OpenRetrying(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (!fd.valid()) return ErrnoStatus("cannot create", path, errno);
  if (int err = WriteAll(fd.get(), bytes)) return ErrnoStatus("cannot write", path, err);
  if (int err = FsyncRetrying(fd.get())) return ErrnoStatus("cannot fsync", path, err);
  if (int err = fd.Close()) return ErrnoStatus("cannot close", path, err);
  return Status::Ok();
}

Status WriteFileAtomic(const fs::path& path, std::string_view bytes, unsigned mode) {
  if (!path.has_filename()) {
    return Status::InvalidArgument("cannot write " + Quoted(path) + ": not a file path");
  }
  const fs::path dir = ParentOrDot(path);
  const fs::path temp = dir / ("." + path.filename().string() + ".tmp-" + UniqueSuffix());
  UniqueFd fd = OpenRetrying(temp, O_WRONLY | O_CREAT | O_EXCL, static_cast<mode_t>(mode));
  if (!fd.valid()) return ErrnoStatus("cannot create temporary file", temp, errno);

  Status status;
  if (int err = WriteAll(fd.get(), bytes)) {
    status = ErrnoStatus("cannot write", temp, err);
  } else if (int err = FsyncRetrying(fd.get())) {
    status = ErrnoStatus("cannot fsync", temp, err);
  } else if (int err = fd.Close()) {
    status = ErrnoStatus("cannot close", temp, err);
  } else if (::rename(temp.c_str(), path.c_str()) != 0) {
    status = ErrnoStatus("cannot rename " + Quoted(temp) + " to", path, errno);
  } else {
    return FsyncDirectory(dir);
  }
  fd.Close();
  ::unlink(temp.c_str());
  return status;
}

Status FsyncFile(const fs::path& path) {
  UniqueFd fd = OpenRetrying(path, O_RDONLY);
  if (!fd.valid()) return ErrnoStatus("cannot open", path, errno);
  if (int err = FsyncRetrying(fd.get())) return ErrnoStatus("cannot fsync", path, err);
  return Status::Ok();
}

Status FsyncDirectory(const fs::path& dir) {
  UniqueFd fd = OpenRetrying(dir, O_RDONLY | O_DIRECTORY);
  if (!fd.valid()) return ErrnoStatus("cannot open directory", dir, errno);
  if (int err = FsyncRetrying(fd.get())) return ErrnoStatus("cannot fsync directory", dir, err);
  return Status::Ok();
}

Result<std::string> ReadPrivateFile(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    return Status::FailedPrecondition("secret key file " + Quoted(path) +
                                      " is readable by group or others; chmod 600 it");
  }
  return ReadFileToString(path);
}

Status WriteKeyPairFiles(const fs::path& prefix, std::string_view secret_text,
                         std::string_view public_text, bool overwrite) {
  const fs::path secret = prefix.string() + ".key";
  const fs::path pub = prefix.string() + ".pub";
  std::error_code ec;
  if (!overwrite) {
    for (const auto& p : {secret, pub}) {
      if (fs::exists(p, ec)) {
        return Status::AlreadyExists(p.string() + " exists (pass --force to replace it)");
      }
    }
  }
  CLEAVE_RETURN_IF_ERROR(WriteFileAtomic(secret, secret_text, 0600));
  return WriteFileAtomic(pub, public_text, 0644);
}

std::string Sha256Hex(std::string_view bytes) {
  Sha256Hasher hasher;
  hasher.Update(bytes.data(), bytes.size());
  return hasher.FinishHex();
}

Result<FileDigest> DigestFile(const fs::path& path) {
  UniqueFd fd = OpenRetrying(path, O_RDONLY);
  if (!fd.valid()) return ErrnoStatus("cannot open", path, errno);
  Sha256Hasher hasher;
  FileDigest digest;
  char buf[kChunkBytes];
  for (;;) {
    ssize_t n = ReadSome(fd.get(), buf, sizeof(buf));
    if (n < 0) return ErrnoStatus("cannot read", path, errno);
    if (n == 0) break;
    hasher.Update(buf, static_cast<size_t>(n));
    digest.bytes += static_cast<uint64_t>(n);
  }
  digest.sha256 = hasher.FinishHex();
  if (digest.sha256.empty()) {
    return Status::Internal("OpenSSL SHA-256 failed while hashing " + Quoted(path));
  }
  return digest;
}

Result<std::string> Sha256File(const fs::path& path) {
  CLEAVE_ASSIGN_OR_RETURN(FileDigest digest, DigestFile(path));
  return std::move(digest.sha256);
}

std::string UniqueSuffix() {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%ld-%llu-%08llx", static_cast<long>(::getpid()),
                static_cast<unsigned long long>(counter.fetch_add(1)),
                static_cast<unsigned long long>(rng() & 0xffffffffULL));
  return buf;
}

}  // namespace cleave
