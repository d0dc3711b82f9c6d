#include "common/random_access_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace cleave {
namespace {

Status RandomAccessOsError(const std::string& what, const std::string& path, int error) {
  std::string message = "cannot " + what + " '" + path + "': " + std::strerror(error);
  return error == ENOENT ? Status::NotFound(message) : Status::IoError(message);
}

}  // namespace

Result<RandomAccessFile> RandomAccessFile::Open(const std::string& path) {
  RandomAccessFile file;
  file.path_ = path;
  do {
    file.fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (file.fd_ < 0 && errno == EINTR);
  if (file.fd_ < 0) return RandomAccessOsError("open", path, errno);
  struct stat info;
  if (::fstat(file.fd_, &info) != 0) return RandomAccessOsError("stat", path, errno);
  if (!S_ISREG(info.st_mode)) return Status::IoError("'" + path + "' is not a regular file");
  file.size_ = static_cast<uint64_t>(info.st_size);
  return file;
}

RandomAccessFile::~RandomAccessFile() { Close(); }

RandomAccessFile::RandomAccessFile(RandomAccessFile&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      size_(std::exchange(other.size_, 0)) {}

RandomAccessFile& RandomAccessFile::operator=(RandomAccessFile&& other) noexcept {
  if (this != &other) {
    Close();
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void RandomAccessFile::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Status RandomAccessFile::ReadAt(uint64_t offset, size_t n, uint8_t* dst) const {
  if (fd_ < 0) return Status::InvalidArgument("read from a file that is not open");
  if (offset > size_ || n > size_ - offset) {
    return Status::InvalidArgument("read of " + std::to_string(n) + " bytes at offset " +
                                   std::to_string(offset) + " passes the end of '" + path_ + "' (" +
                                   std::to_string(size_) + " bytes)");
  }
  size_t done = 0;
  while (done < n) {
    const ssize_t got = ::pread(fd_, dst + done, n - done, static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      return RandomAccessOsError("read", path_, errno);
    }
    if (got == 0) {
      return Status::DataLoss("'" + path_ + "' ended at byte " + std::to_string(offset + done) +
                              " while " + std::to_string(size_) +
                              " were there when it was opened: it shrank while in use");
    }
    done += static_cast<size_t>(got);
  }
  return Status::Ok();
}

}  // namespace cleave
