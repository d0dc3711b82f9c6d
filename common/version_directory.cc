#include "common/version_directory.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <system_error>

#include "common/shutdown.h"

namespace cleave {
namespace {

std::string StatStamp(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return "?";
  return std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) + ":" +
         std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
}

}  // namespace

uint64_t VersionDirectory::ParseVersion(const std::string& name) {
  if (name.empty() || name.size() > 19) return 0;
  if (!std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return 0;
  }
  return std::stoull(name);
}

std::string VersionDirectory::Fingerprint(const std::filesystem::path& dir) {
  std::string out = StatStamp(dir);
  std::error_code ec;
  std::vector<std::string> entries;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    entries.push_back(entry.path().filename().string() + "=" + StatStamp(entry.path()));
  }
  std::sort(entries.begin(), entries.end());
  for (const std::string& e : entries) out += "|" + e;
  return out;
}

Result<std::vector<uint64_t>> VersionDirectory::ListVersions() const {
  std::error_code ec;
  if (!std::filesystem::is_directory(root_, ec)) {
    return Status::NotFound("model repository " + root_.string() + " is not a directory");
  }
  std::vector<uint64_t> versions;
  std::filesystem::directory_iterator it(root_, ec);
  if (ec) return Status::IoError("cannot list " + root_.string() + ": " + ec.message());
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (ec) return Status::IoError("cannot list " + root_.string() + ": " + ec.message());
    const uint64_t version = ParseVersion(it->path().filename().string());
    std::error_code dir_ec;
    if (version > 0 && it->is_directory(dir_ec)) versions.push_back(version);
  }
  std::sort(versions.begin(), versions.end());
  return versions;
}

Result<std::optional<VersionDirectory::Candidate>> VersionDirectory::Next() const {
  CLEAVE_ASSIGN_OR_RETURN(std::vector<uint64_t> versions, ListVersions());
  if (versions.empty() || versions.back() <= current_) return std::optional<Candidate>();
  Candidate c;
  c.version = versions.back();
  c.dir = root_ / std::to_string(c.version);
  c.fingerprint = Fingerprint(c.dir);
  if (auto bad = bad_.find(c.version); bad != bad_.end() && bad->second == c.fingerprint) {
    return std::optional<Candidate>();  // already refused; wait for it to change
  }
  return std::optional<Candidate>(std::move(c));
}

void VersionDirectory::MarkCurrent(const Candidate& candidate) {
  bad_.erase(candidate.version);
  current_ = candidate.version;
}

void VersionDirectory::MarkBad(const Candidate& candidate) {
  bad_[candidate.version] = candidate.fingerprint;
}

PeriodicReload::PeriodicReload(int64_t interval_ms, std::function<void()> tick)
    : interval_ms_(std::max<int64_t>(1, interval_ms)),
      tick_(std::move(tick)),
      thread_([this] { Loop(); }) {}

PeriodicReload::~PeriodicReload() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
  }
  wake_.NotifyAll();
  if (thread_.joinable()) thread_.join();
}

void PeriodicReload::Loop() {
  // Short ticks so a SIGHUP (ReloadGeneration moving) triggers a scan without waiting for the
  // whole interval.
  constexpr int64_t kTickMs = 100;
  unsigned long generation = ReloadGeneration();
  auto next = std::chrono::steady_clock::now() + std::chrono::milliseconds(interval_ms_);
  MutexLock lock(&mu_);
  while (!stop_) {
    wake_.WaitFor(&mu_, std::chrono::milliseconds(std::min(kTickMs, interval_ms_)));
    if (stop_) break;
    const unsigned long now_generation = ReloadGeneration();
    if (std::chrono::steady_clock::now() < next && now_generation == generation) continue;
    generation = now_generation;
    lock.Unlock();
    tick_();
    next = std::chrono::steady_clock::now() + std::chrono::milliseconds(interval_ms_);
    lock.Lock();
  }
}

}  // namespace cleave
