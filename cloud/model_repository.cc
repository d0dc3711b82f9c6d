#include "cloud/model_repository.h"

#include <algorithm>
#include <chrono>
#include <system_error>

#include "common/logging.h"
#include "split/bundle.h"
#include "split/vision_bundle.h"

namespace cleave::cloud {

Status WarmUpCloudModel(split::CloudModel& model) {
  // Every split point's tail: a request may name any of them.
  for (int split = 0; split < model.num_splits(); ++split) {
    const std::vector<uint32_t>& shape = model.feature_shape(split);
    std::vector<int64_t> sizes = {1};
    sizes.insert(sizes.end(), shape.begin(), shape.end());
    CLEAVE_RETURN_IF_ERROR(
        model.RunTail(torch::zeros(sizes), split).status().WithContext("warm-up"));
  }
  const split::VisionModelSpec& spec = model.info().spec;
  return model.RunFull(torch::zeros({1, spec.input_channels, spec.image_size, spec.image_size}))
      .status()
      .WithContext("warm-up");
}

Result<std::vector<std::unique_ptr<split::CloudModel>>> LoadWarmCloudModels(
    const std::filesystem::path& dir, int copies, const split::CloudModel::Options& options) {
  const std::string where = "bundle " + dir.string();
  Result<Bundle> bundle = Bundle::Open(dir);
  if (!bundle.ok()) return bundle.status().WithContext(where);
  if (bundle->kind() != split::kVisionSplitKind) {
    return Status::InvalidArgument(where + " is a '" + bundle->kind() +
                                   "' bundle; a model repository serves only '" +
                                   split::kVisionSplitKind + "' bundles");
  }
  std::vector<std::unique_ptr<split::CloudModel>> models;
  for (int i = 0; i < std::max(1, copies); ++i) {
    Result<std::unique_ptr<split::CloudModel>> model = split::CloudModel::Load(*bundle, options);
    if (!model.ok()) return model.status().WithContext(where);
    CLEAVE_RETURN_IF_ERROR(WarmUpCloudModel(**model).WithContext(where));
    models.push_back(std::move(model).value());
  }
  return models;
}

ModelRepository::ModelRepository(std::filesystem::path root, int copies, Loader loader,
                                 const split::CloudModel::Options& options)
    : versions_(std::move(root)), loader_(std::move(loader)) {
  if (!loader_) {
    loader_ = [copies, options](const std::filesystem::path& dir) {
      return LoadWarmCloudModels(dir, copies, options);
    };
  }
}

Result<std::unique_ptr<ServableVersion>> ModelRepository::Poll() {
  Result<std::optional<VersionDirectory::Candidate>> next = versions_.Next();
  if (!next.ok()) {
    GetLogger("cloud")->warn("model repository: {}", next.status().ToString());
    return next.status();
  }
  if (!next->has_value()) return std::unique_ptr<ServableVersion>();
  const VersionDirectory::Candidate& candidate = **next;
  auto log = GetLogger("cloud");
  log->info("model repository: loading version {} from {}", candidate.version,
            candidate.dir.string());
  Result<std::vector<std::unique_ptr<split::CloudModel>>> models = loader_(candidate.dir);
  if (models.ok() && models->empty()) {
    models = Status::Internal("the loader returned no model for version " +
                              std::to_string(candidate.version));
  }
  if (!models.ok()) {
    versions_.MarkBad(candidate);
    Status error = models.status().WithContext(
        "model version " + std::to_string(candidate.version) + " refused; still serving version " +
        std::to_string(versions_.current()));
    log->error("{}", error.ToString());
    return error;
  }
  versions_.MarkCurrent(candidate);
  auto out = std::make_unique<ServableVersion>();
  out->version = candidate.version;
  out->dir = candidate.dir;
  // Hash of what was loaded, for logs; a fake loader may have used no bundle.
  if (Result<Bundle> bundle = Bundle::Open(candidate.dir); bundle.ok()) {
    out->manifest_sha256 = bundle->manifest_sha256();
  }
  out->models = std::move(models).value();
  return out;
}

RepositoryPoller::RepositoryPoller(ModelRepository& repository, int64_t interval_ms,
                                   std::function<void(std::unique_ptr<ServableVersion>)> on_version)
    : repository_(repository), on_version_(std::move(on_version)), reload_(interval_ms, [this] {
        Result<std::unique_ptr<ServableVersion>> polled = repository_.Poll();  // errors logged
        if (polled.ok() && *polled) on_version_(std::move(polled).value());
      }) {}

RepositoryPoller::~RepositoryPoller() = default;  // reload_ stops and joins first

}  // namespace cleave::cloud
