// ModelRepository: numbered versions of a vision-split bundle for cleave-cloud hot reload.
//
// Layout and the choice of version: common/version_directory.h (<root>/<version>/, each a
// complete bundle, split/bundle.h; published by renaming into place).
//
// Every version loads through Bundle::Open, so hashes are always checked and, when the
// process trusts a bundle key (SetTrustedBundleKey / cloud.bundle_public_key), the signature
// too. A version that fails to open, load or warm up is logged and remembered as bad together
// with a fingerprint of its directory (inode, mtimes and sizes of its entries); it is not
// retried until that fingerprint changes. The current version keeps serving meanwhile.
//
// Threads: Poll and current_version are not thread-safe with each other; call them from one
// thread at a time (RepositoryPoller does). ListVersions is a pure read of the directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/version_directory.h"
#include "split/split_runtime.h"

namespace cleave::cloud {

// A loaded, verified and warmed version, ready to be handed to TailServer::SwapModels.
struct ServableVersion {
  uint64_t version = 0;
  std::filesystem::path dir;
  std::string manifest_sha256;
  std::vector<std::unique_ptr<split::CloudModel>> models;  // warm copies, one per worker
};

// Runs one input of each kind (features, 28x28 image) through `model` so the first request
// does not pay for lazy initialization and a broken model is found before it serves.
Status WarmUpCloudModel(split::CloudModel& model);

// Opens the bundle at `dir` through the verified path, requires kind "vision-split", loads
// `copies` CloudModels and warms each. The errors of each step, with `dir` as context.
Result<std::vector<std::unique_ptr<split::CloudModel>>> LoadWarmCloudModels(
    const std::filesystem::path& dir, int copies, const split::CloudModel::Options& options = {});

class ModelRepository {
 public:
  // Loads one version directory into warm model copies. Injectable for tests.
  using Loader = std::function<Result<std::vector<std::unique_ptr<split::CloudModel>>>(
      const std::filesystem::path& dir)>;

  // `copies` models per version (>= 1). `loader` null = LoadWarmCloudModels(dir, copies,
  // options).
  ModelRepository(std::filesystem::path root, int copies, Loader loader = nullptr,
                  const split::CloudModel::Options& options = {});

  // The numeric version directories under the root, ascending. NotFound if the root is not
  // a directory; IoError if it cannot be listed.
  Result<std::vector<uint64_t>> ListVersions() const { return versions_.ListVersions(); }

  // Scans the root. If the highest numeric version is newer than current_version() and not
  // remembered as bad (with an unchanged directory), loads it: on success it becomes current
  // and is returned; on failure it is remembered as bad, logged, and the error returned (the
  // caller keeps serving what it has). Returns null when there is nothing new to load.
  // A version lower than the current one is never loaded (no automatic downgrade).
  Result<std::unique_ptr<ServableVersion>> Poll();

  // The version last returned by Poll (0 before any).
  uint64_t current_version() const { return versions_.current(); }
  // Whether `version` is remembered as bad (for tests and diagnostics).
  bool IsBad(uint64_t version) const { return versions_.IsBad(version); }
  const std::filesystem::path& root() const { return versions_.root(); }

 private:
  VersionDirectory versions_;
  Loader loader_;
};

// Calls repository.Poll() every `interval_ms` (and soon after a SIGHUP, see
// common/shutdown.h ReloadGeneration) on its own thread, handing each new version to
// `on_version`. Failed polls are logged by the repository. The repository and the callback
// must outlive the poller; the destructor stops and joins the thread.
class RepositoryPoller {
 public:
  RepositoryPoller(ModelRepository& repository, int64_t interval_ms,
                   std::function<void(std::unique_ptr<ServableVersion>)> on_version);
  ~RepositoryPoller();
  RepositoryPoller(const RepositoryPoller&) = delete;
  RepositoryPoller& operator=(const RepositoryPoller&) = delete;

 private:
  ModelRepository& repository_;
  std::function<void(std::unique_ptr<ServableVersion>)> on_version_;
  PeriodicReload reload_;  // last: its thread uses the members above
};

}  // namespace cleave::cloud
