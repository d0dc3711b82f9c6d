#include "common/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace cleave {
namespace {

// Closes a file descriptor when the opening function returns, whatever the path.
class MappedFileDescriptor {
 public:
  explicit MappedFileDescriptor(int fd) : fd_(fd) {}
  ~MappedFileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  MappedFileDescriptor(const MappedFileDescriptor&) = delete;
  MappedFileDescriptor& operator=(const MappedFileDescriptor&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

Status MappedFileOsError(const std::string& what, const std::string& path, int error) {
  std::string message = "cannot " + what + " '" + path + "': " + std::strerror(error);
  return error == ENOENT ? Status::NotFound(message) : Status::IoError(message);
}

}  // namespace

Result<MappedFile> MappedFile::Open(const std::string& path) {
  int raw_fd;
  do {
    raw_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (raw_fd < 0 && errno == EINTR);
  if (raw_fd < 0) return MappedFileOsError("open", path, errno);
  MappedFileDescriptor fd(raw_fd);
  struct stat info;
  if (::fstat(fd.get(), &info) != 0) return MappedFileOsError("stat", path, errno);
  if (!S_ISREG(info.st_mode)) return Status::IoError("'" + path + "' is not a regular file");
  MappedFile file;
  file.path_ = path;
  if (info.st_size == 0) return file;
  void* data =
      ::mmap(nullptr, static_cast<size_t>(info.st_size), PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (data == MAP_FAILED) return MappedFileOsError("map", path, errno);
  file.data_ = static_cast<const uint8_t*>(data);
  file.size_ = static_cast<size_t>(info.st_size);
  return file;  // the mapping stays valid after the descriptor closes
}

MappedFile::~MappedFile() { Unmap(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    Unmap();
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void MappedFile::Unmap() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace cleave
