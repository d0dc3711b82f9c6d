// ModelRepository (edge): numbered versions of a vision-split bundle for cleave-edge hot
// reload (edge.model_repository); the edge's counterpart of cloud/model_repository.h.
//
// Layout and the choice of version: common/version_directory.h (<root>/<version>/, each a
// complete bundle, split/bundle.h; published by renaming into place).
//
// Every version loads through Bundle::Open, so hashes are always checked and, when the
// process trusts a bundle key (SetTrustedBundleKey / edge.bundle_public_key), the signature
// too. A later version that fails to open, load or warm up is logged ("model version N
// refused; still serving version M: ...") and remembered as bad together with a fingerprint
// of its directory; it is not retried until that fingerprint changes. The version serving
// meanwhile keeps serving.
//
// Threads: LoadFirst, Poll and current_version are not thread-safe with each other; call
// them from one thread at a time (LoadFirst before the poller starts, then the poller).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>

#include "common/status.h"
#include "common/version_directory.h"
#include "edge/edge_engine.h"
#include "split/bundle.h"
#include "split/split_runtime.h"

namespace cleave::edge {

// A loaded and verified head, ready for EdgeServer::Create or EdgeServer::SwapEngine.
struct ServableEngine {
  uint64_t version = 0;  // 0 for a bundle that is not part of a repository
  std::filesystem::path dir;
  std::unique_ptr<EdgeEngine> engine;
  Bundle bundle;  // as opened and verified (federated learning reads its fp32 model)
};

// Opens the bundle at `dir` through the verified path, loads its head with `options`
// (logging "loaded bundle <dir> (head int8|fp32, engine <name>)") and, with `warm`, runs one
// blank image through it so a broken head is found before it serves. The errors of each
// step, with `dir` as context.
Result<ServableEngine> LoadEdgeEngine(const std::filesystem::path& dir,
                                      const split::EdgeModel::Options& options, bool warm);

class ModelRepository {
 public:
  // Loads one version directory, warm or not. Injectable for tests.
  using Loader = std::function<Result<ServableEngine>(const std::filesystem::path& dir, bool warm)>;

  // `loader` null = LoadEdgeEngine(dir, options, warm). `compute_threads` > 0 sets the
  // libtorch intra-op threads of the thread that loads a later version (the poller's), as
  // the daemon's main thread has them.
  explicit ModelRepository(std::filesystem::path root, split::EdgeModel::Options options = {},
                           int compute_threads = 0, Loader loader = nullptr);

  // Start-up: loads the highest version, not warmed (the server warms before serving), and
  // makes it current. NotFound when the root holds no version directory; the errors of
  // ListVersions; a load error with "model version N" as context (nothing is marked bad:
  // the daemon does not start).
  Result<ServableEngine> LoadFirst();

  // Scans the root. If the highest numeric version is newer than current_version() and not
  // remembered as bad (with an unchanged directory), loads and warms it: on success it
  // becomes current and is returned; on failure it is remembered as bad, logged, and the
  // error returned (the caller keeps serving what it has). Null when there is nothing new.
  // A version lower than the current one is never loaded (no automatic downgrade).
  Result<std::unique_ptr<ServableEngine>> Poll();

  // The version last loaded (0 before any).
  uint64_t current_version() const { return versions_.current(); }
  // Whether `version` is remembered as bad (for tests and diagnostics).
  bool IsBad(uint64_t version) const { return versions_.IsBad(version); }
  const std::filesystem::path& root() const { return versions_.root(); }

 private:
  VersionDirectory versions_;
  int compute_threads_;
  Loader loader_;
};

// Calls repository.Poll() every `interval_ms` (and soon after a SIGHUP, see
// common/shutdown.h ReloadGeneration) on its own thread, handing each new version to
// `on_version` (EdgeServer::SwapEngine). Failed polls are logged by the repository. The
// repository and the callback must outlive the poller; the destructor stops and joins the
// thread (a load in progress finishes first).
class RepositoryPoller {
 public:
  RepositoryPoller(ModelRepository& repository, int64_t interval_ms,
                   std::function<void(std::unique_ptr<ServableEngine>)> on_version);
  ~RepositoryPoller();
  RepositoryPoller(const RepositoryPoller&) = delete;
  RepositoryPoller& operator=(const RepositoryPoller&) = delete;

 private:
  ModelRepository& repository_;
  std::function<void(std::unique_ptr<ServableEngine>)> on_version_;
  PeriodicReload reload_;  // last: its thread uses the members above
};

}  // namespace cleave::edge
