// MappedFile: a whole file mapped read-only into memory (mmap), unmapped on destruction.
//
// Dataset readers use it so a file larger than memory is paged in on demand by the kernel
// instead of being read up front. The mapping is private and read-only: the bytes are the
// file's contents at open time as long as nobody truncates or rewrites the file meanwhile
// (a file truncated under a live mapping makes the kernel signal SIGBUS on access, as for
// every mmap reader). Reading bytes() from several threads at once is safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/status.h"

namespace cleave {

class MappedFile {
 public:
  // Maps the regular file at `path`. An empty file gives an empty mapping (size() == 0).
  // Errors: NotFound (no such file), IoError (cannot open, stat or map it; not a regular
  // file), each naming the path and the OS reason.
  static Result<MappedFile> Open(const std::string& path);

  MappedFile() = default;
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  // The file's bytes; valid while this object lives. nullptr when empty.
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void Unmap();

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace cleave
