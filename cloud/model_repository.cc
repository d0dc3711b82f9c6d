#include "cloud/model_repository.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <system_error>

#include "common/logging.h"
#include "common/shutdown.h"
#include "split/bundle.h"
#include "split/vision_bundle.h"

namespace cleave::cloud {
namespace {

// "17" -> 17; anything but 1..19 plain digits (no sign, no dot, no leading temp prefix) -> 0,
// which is never a valid version.
uint64_t ParseVersion(const std::string& name) {
  if (name.empty() || name.size() > 19) return 0;
  if (!std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return 0;
  }
  return std::stoull(name);
}

std::string StatStamp(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return "?";
  return std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) + ":" +
         std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
}

// Changes whenever the directory is replaced (rename: new inode) or any entry in it is
// added, removed, resized or rewritten.
std::string Fingerprint(const std::filesystem::path& dir) {
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

}  // namespace

Status WarmUpCloudModel(split::CloudModel& model) {
  const std::vector<uint32_t>& shape = model.feature_shape();
  std::vector<int64_t> sizes = {1};
  sizes.insert(sizes.end(), shape.begin(), shape.end());
  CLEAVE_RETURN_IF_ERROR(model.RunTail(torch::zeros(sizes)).status().WithContext("warm-up"));
  return model.RunFull(torch::zeros({1, 1, 28, 28})).status().WithContext("warm-up");
}

Result<std::vector<std::unique_ptr<split::CloudModel>>> LoadWarmCloudModels(
    const std::filesystem::path& dir, int copies) {
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
    Result<std::unique_ptr<split::CloudModel>> model = split::CloudModel::Load(*bundle);
    if (!model.ok()) return model.status().WithContext(where);
    CLEAVE_RETURN_IF_ERROR(WarmUpCloudModel(**model).WithContext(where));
    models.push_back(std::move(model).value());
  }
  return models;
}

ModelRepository::ModelRepository(std::filesystem::path root, int copies, Loader loader)
    : root_(std::move(root)), loader_(std::move(loader)) {
  if (!loader_) {
    loader_ = [copies](const std::filesystem::path& dir) {
      return LoadWarmCloudModels(dir, copies);
    };
  }
}

Result<std::vector<uint64_t>> ModelRepository::ListVersions() const {
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

Result<std::unique_ptr<ServableVersion>> ModelRepository::Poll() {
  Result<std::vector<uint64_t>> listed = ListVersions();
  if (!listed.ok()) {
    GetLogger("cloud")->warn("model repository: {}", listed.status().ToString());
    return listed.status();
  }
  const std::vector<uint64_t>& versions = *listed;
  if (versions.empty() || versions.back() <= current_) return std::unique_ptr<ServableVersion>();
  const uint64_t version = versions.back();
  const std::filesystem::path dir = root_ / std::to_string(version);
  const std::string fingerprint = Fingerprint(dir);
  if (auto bad = bad_.find(version); bad != bad_.end() && bad->second == fingerprint) {
    return std::unique_ptr<ServableVersion>();  // already refused; wait for it to change
  }
  auto log = GetLogger("cloud");
  log->info("model repository: loading version {} from {}", version, dir.string());
  Result<std::vector<std::unique_ptr<split::CloudModel>>> models = loader_(dir);
  if (!models.ok()) {
    bad_[version] = fingerprint;
    Status error =
        models.status().WithContext("model version " + std::to_string(version) +
                                    " refused; still serving version " + std::to_string(current_));
    log->error("{}", error.ToString());
    return error;
  }
  if (models->empty()) {
    bad_[version] = fingerprint;
    return Status::Internal("the loader returned no model for version " + std::to_string(version));
  }
  bad_.erase(version);
  auto out = std::make_unique<ServableVersion>();
  out->version = version;
  out->dir = dir;
  // Hash of what was loaded, for logs; a fake loader may have used no bundle.
  if (Result<Bundle> bundle = Bundle::Open(dir); bundle.ok()) {
    out->manifest_sha256 = bundle->manifest_sha256();
  }
  out->models = std::move(models).value();
  current_ = version;
  return out;
}

RepositoryPoller::RepositoryPoller(ModelRepository& repository, int64_t interval_ms,
                                   std::function<void(std::unique_ptr<ServableVersion>)> on_version)
    : repository_(repository),
      interval_ms_(std::max<int64_t>(1, interval_ms)),
      on_version_(std::move(on_version)),
      thread_([this] { Loop(); }) {}

RepositoryPoller::~RepositoryPoller() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void RepositoryPoller::Loop() {
  // Short ticks so a SIGHUP (ReloadGeneration moving) triggers a scan without waiting for the
  // whole interval.
  constexpr int64_t kTickMs = 100;
  unsigned long generation = ReloadGeneration();
  auto next = std::chrono::steady_clock::now() + std::chrono::milliseconds(interval_ms_);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    wake_.wait_for(lock, std::chrono::milliseconds(std::min(kTickMs, interval_ms_)));
    if (stop_) break;
    const unsigned long now_generation = ReloadGeneration();
    if (std::chrono::steady_clock::now() < next && now_generation == generation) continue;
    generation = now_generation;
    lock.unlock();
    Result<std::unique_ptr<ServableVersion>> polled = repository_.Poll();  // errors are logged
    if (polled.ok() && *polled) on_version_(std::move(polled).value());
    next = std::chrono::steady_clock::now() + std::chrono::milliseconds(interval_ms_);
    lock.lock();
  }
}

}  // namespace cleave::cloud
