#include "edge/model_repository.h"

#include <optional>
#include <string>

#include <torch/torch.h>

#include "common/logging.h"
#include "split/compute_runtime.h"

namespace cleave::edge {

Result<ServableEngine> LoadEdgeEngine(const std::filesystem::path& dir,
                                      const split::EdgeModel::Options& options, bool warm) {
  const std::string where = dir.string();
  Result<Bundle> bundle = Bundle::Open(dir);
  if (!bundle.ok()) return bundle.status().WithContext("cannot load bundle " + where);
  Result<std::unique_ptr<split::EdgeModel>> model = split::EdgeModel::Load(*bundle, options);
  if (!model.ok()) return model.status().WithContext("cannot load the head of " + where);
  GetLogger("edge")->info("loaded bundle {} (head {}, engine {})", where,
                          options.int8 ? "int8" : "fp32", (*model)->engine());
  ServableEngine out;
  out.dir = dir;
  out.engine = std::make_unique<EdgeEngine>(std::move(model).value());
  out.bundle = std::move(bundle).value();
  if (warm) {
    const int size = out.engine->image_size();
    Status s = out.engine->Decide(torch::zeros({1, 1, size, size}), {0}, {-1.0f}, {1000}).status();
    if (!s.ok()) return s.WithContext("warm-up of " + where);
  }
  return out;
}

ModelRepository::ModelRepository(std::filesystem::path root, split::EdgeModel::Options options,
                                 int compute_threads, Loader loader)
    : versions_(std::move(root)), compute_threads_(compute_threads), loader_(std::move(loader)) {
  if (!loader_) {
    loader_ = [options](const std::filesystem::path& dir, bool warm) {
      return LoadEdgeEngine(dir, options, warm);
    };
  }
}

Result<ServableEngine> ModelRepository::LoadFirst() {
  CLEAVE_ASSIGN_OR_RETURN(std::optional<VersionDirectory::Candidate> candidate, versions_.Next());
  if (!candidate) {
    return Status::NotFound("model repository " + versions_.root().string() +
                            " holds no version directory (1/, 2/, ...) to serve");
  }
  Result<ServableEngine> loaded = loader_(candidate->dir, /*warm=*/false);
  if (!loaded.ok()) {
    return loaded.status().WithContext("model version " + std::to_string(candidate->version));
  }
  versions_.MarkCurrent(*candidate);
  loaded->version = candidate->version;
  return loaded;
}

Result<std::unique_ptr<ServableEngine>> ModelRepository::Poll() {
  auto log = GetLogger("edge");
  Result<std::optional<VersionDirectory::Candidate>> next = versions_.Next();
  if (!next.ok()) {
    log->warn("model repository: {}", next.status().ToString());
    return next.status();
  }
  if (!next->has_value()) return std::unique_ptr<ServableEngine>();
  const VersionDirectory::Candidate& candidate = **next;
  if (compute_threads_ > 0) split::SetComputeThreads(compute_threads_);  // this thread's own
  log->info("model repository: loading version {} from {}", candidate.version,
            candidate.dir.string());
  Result<ServableEngine> loaded = loader_(candidate.dir, /*warm=*/true);
  if (loaded.ok() && !loaded->engine) {
    loaded = Status::Internal("the loader returned no engine for version " +
                              std::to_string(candidate.version));
  }
  if (!loaded.ok()) {
    versions_.MarkBad(candidate);
    log->error("model version {} refused; still serving version {}: {}", candidate.version,
               versions_.current(), loaded.status().ToString());
    return loaded.status().WithContext("model version " + std::to_string(candidate.version) +
                                       " refused; still serving version " +
                                       std::to_string(versions_.current()));
  }
  versions_.MarkCurrent(candidate);
  auto out = std::make_unique<ServableEngine>(std::move(loaded).value());
  out->version = candidate.version;
  return out;
}

RepositoryPoller::RepositoryPoller(ModelRepository& repository, int64_t interval_ms,
                                   std::function<void(std::unique_ptr<ServableEngine>)> on_version)
    : repository_(repository), on_version_(std::move(on_version)), reload_(interval_ms, [this] {
        Result<std::unique_ptr<ServableEngine>> polled = repository_.Poll();  // errors logged
        if (polled.ok() && *polled) on_version_(std::move(polled).value());
      }) {}

RepositoryPoller::~RepositoryPoller() = default;  // reload_ stops and joins first

}  // namespace cleave::edge
