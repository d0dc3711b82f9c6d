// VersionDirectory: numbered versions of a model under one root directory, as used by the
// hot reload of cleave-cloud (cloud.model_repository) and cleave-edge (edge.model_repository).
//
// Layout: <root>/<version>/ where <version> is a decimal number (1, 2, 17...). Other names
// are ignored: temporary names such as ".tmp-3" or "3.partial", files, anything not purely
// digits. Publishers make a version appear atomically by writing it under a temporary name
// and renaming it into place (BundleWriter does this when given the final <root>/<version>).
//
// The directory only decides *which* version to try; loading, verifying and warming it up
// belong to the caller, who reports the result with MarkCurrent or MarkBad. A bad version is
// remembered together with a fingerprint of its directory (inode, sizes and mtimes of its
// entries) and not offered again until that fingerprint changes. Versions at or below the
// current one are never offered (no automatic downgrade).
//
// PeriodicReload runs a callback every interval, and soon after a SIGHUP (common/shutdown.h
// ReloadGeneration), on its own thread.
//
// Threads: VersionDirectory is not thread-safe; use it from one thread at a time (the
// PeriodicReload thread, or the caller before it starts).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/mutex.h"
#include "common/status.h"
#include "common/thread_annotations.h"

namespace cleave {

class VersionDirectory {
 public:
  struct Candidate {
    uint64_t version = 0;
    std::filesystem::path dir;
    std::string fingerprint;
  };

  explicit VersionDirectory(std::filesystem::path root) : root_(std::move(root)) {}

  // The numeric version directories under the root, ascending. NotFound if the root is not
  // a directory; IoError if it cannot be listed.
  Result<std::vector<uint64_t>> ListVersions() const;

  // The highest version if it is newer than current() and not remembered as bad with an
  // unchanged directory; nullopt when there is nothing to try. Errors of ListVersions.
  Result<std::optional<Candidate>> Next() const;

  // The caller loaded `candidate`: it becomes current (and is forgotten as bad).
  void MarkCurrent(const Candidate& candidate);
  // The caller could not load `candidate`: not offered again until its directory changes.
  void MarkBad(const Candidate& candidate);

  uint64_t current() const { return current_; }
  bool IsBad(uint64_t version) const { return bad_.count(version) > 0; }
  const std::filesystem::path& root() const { return root_; }

  // "17" -> 17; 0 for anything that is not 1..19 plain digits (0 is never a version).
  static uint64_t ParseVersion(const std::string& name);
  // Changes whenever `dir` is replaced (rename: new inode) or an entry in it is added,
  // removed, resized or rewritten.
  static std::string Fingerprint(const std::filesystem::path& dir);

 private:
  std::filesystem::path root_;
  uint64_t current_ = 0;
  std::map<uint64_t, std::string> bad_;  // version -> fingerprint when it failed
};

// Calls `tick` every `interval_ms` (>= 1) and within ~100 ms of a SIGHUP, on its own
// thread, until destroyed (the destructor joins; a tick in progress finishes first).
class PeriodicReload {
 public:
  PeriodicReload(int64_t interval_ms, std::function<void()> tick);
  ~PeriodicReload();
  PeriodicReload(const PeriodicReload&) = delete;
  PeriodicReload& operator=(const PeriodicReload&) = delete;

 private:
  void Loop() EXCLUDES(mu_);
  const int64_t interval_ms_;
  std::function<void()> tick_;
  Mutex mu_;
  CondVar wake_;
  bool stop_ GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace cleave
