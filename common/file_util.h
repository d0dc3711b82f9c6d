// Small, durable file helpers: whole-file reads, crash-safe writes and SHA-256 digests.
//
// Every function reports failure as a Status naming the path and the OS reason
// (strerror), never by throwing. All functions are safe to call concurrently on
// different paths; concurrent writers to the same path race like the OS does (the last
// rename wins, but no reader ever sees a partially written file from WriteFileAtomic).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "common/status.h"

namespace cleave {

// Reads a whole regular file. NotFound if it does not exist; IoError (with strerror) for
// anything else the OS refuses, including reading a directory.
Result<std::string> ReadFileToString(const std::filesystem::path& path);

// ReadFileToString for files that must stay small (an image, a config): InvalidArgument
// naming the path and the limit if the file holds more than `max_bytes`. A regular file is
// refused by its size before anything is read; other files (a pipe) are read up to the limit.
Result<std::string> ReadFileToStringBounded(const std::filesystem::path& path, uint64_t max_bytes);

// Replaces `path` with `bytes` atomically: writes a temporary file in the same directory,
// fsyncs it, renames it over `path` and fsyncs the directory. After a crash `path` holds
// either the old or the new contents, never a mix. The parent directory must exist
// (NotFound otherwise). The temporary file is removed on failure. `mode` is the new file's
// permission bits from its creation (before the umask), e.g. 0600 for secrets.
Status WriteFileAtomic(const std::filesystem::path& path, std::string_view bytes,
                       unsigned mode = 0644);

// Creates or truncates `path`, writes `bytes` and fsyncs the file. Not atomic: a crash can
// leave a partial file, so use it only inside a directory that is published later by
// rename (e.g. a bundle staging directory), and fsync that directory before publishing.
Status WriteFileDurable(const std::filesystem::path& path, std::string_view bytes);

// fsyncs an existing file (e.g. one written by a third-party library) so its data is on
// disk before the directory holding it is published.
Status FsyncFile(const std::filesystem::path& path);

// fsyncs a directory so that entries created, renamed or removed in it survive a crash.
Status FsyncDirectory(const std::filesystem::path& dir);

// Key files. ReadPrivateFile reads a file that must not be readable by group or others
// (FailedPrecondition naming the file otherwise: "chmod 600 it"). WriteKeyPairFiles writes
// `<prefix>.key` (mode 0600) and `<prefix>.pub` (0644) atomically; AlreadyExists when either
// exists and `overwrite` is false.
Result<std::string> ReadPrivateFile(const std::filesystem::path& path);
Status WriteKeyPairFiles(const std::filesystem::path& prefix, std::string_view secret_text,
                         std::string_view public_text, bool overwrite);

// Lowercase hex SHA-256 (64 characters) of `bytes`. Returns an empty string only if
// OpenSSL itself fails (out of memory); an empty digest never matches a real one.
std::string Sha256Hex(std::string_view bytes);

// Lowercase hex SHA-256 of a file's contents, streamed in fixed-size chunks (memory use does
// not grow with the file). Errors as for ReadFileToString; Internal if OpenSSL fails.
Result<std::string> Sha256File(const std::filesystem::path& path);

// Size and SHA-256 of a file computed in one pass, so both describe the same contents.
struct FileDigest {
  std::string sha256;  // lowercase hex
  uint64_t bytes = 0;
};
Result<FileDigest> DigestFile(const std::filesystem::path& path);

// A temporary-name suffix that does not repeat within a process and is very unlikely to
// collide across processes ("<pid>-<counter>-<random hex>"). For staging names.
std::string UniqueSuffix();

}  // namespace cleave
