// RandomAccessFile: a regular file read at any offset (pread), without loading it.
//
// Dataset readers use it so a file larger than memory is read one record at a time. Unlike a
// memory mapping, a file that shrinks while open (truncated or rewritten by another process)
// gives DataLoss on the read that meets the missing bytes instead of a SIGBUS that would end
// the process. ReadAt may be called from several threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/status.h"

namespace cleave {

class RandomAccessFile {
 public:
  // Opens the regular file at `path` for reading and notes its size. Errors: NotFound (no
  // such file), IoError (cannot open or stat it, or not a regular file), each naming the path.
  static Result<RandomAccessFile> Open(const std::string& path);

  RandomAccessFile() = default;
  ~RandomAccessFile();
  RandomAccessFile(RandomAccessFile&& other) noexcept;
  RandomAccessFile& operator=(RandomAccessFile&& other) noexcept;
  RandomAccessFile(const RandomAccessFile&) = delete;
  RandomAccessFile& operator=(const RandomAccessFile&) = delete;

  // Whether a file is open (false for a default-constructed or moved-from object).
  bool is_open() const { return fd_ >= 0; }
  // The size at Open.
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Reads `n` bytes at `offset` into `dst`. Errors: InvalidArgument when the range passes
  // the size at Open or no file is open; DataLoss when the file ended before the range did
  // (it shrank since Open), naming the path; IoError when the OS refuses the read.
  Status ReadAt(uint64_t offset, size_t n, uint8_t* dst) const;

 private:
  void Close();

  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

}  // namespace cleave
