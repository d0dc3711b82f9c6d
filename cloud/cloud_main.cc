// cleave-cloud: serves the tail of a split model (decoder + remaining blocks) on a ZeroMQ
// ROUTER socket. See cloud/tail_server.h for the serving loop, cloud/lm_server.h for
// lm-split bundles, and common/cli/daemon.h for the start-up path.
#include <torch/torch.h>

#include <filesystem>
#include <memory>
#include <vector>

#include "cloud/cloud_config.h"
#include "cloud/lm_server.h"
#include "cloud/model_repository.h"
#include "cloud/tail_server.h"
#include "common/cli/daemon.h"
#include "common/curve.h"
#include "common/logging.h"
#include "split/bundle.h"
#include "split/compute_runtime.h"
#include "split/lm_train.h"
#include "split/split_runtime.h"

namespace {

namespace cloud = cleave::cloud;
namespace split = cleave::split;
using cleave::Status;
using Models = std::vector<std::unique_ptr<split::CloudModel>>;

constexpr char kDescription[] =
    "cleave-cloud: the cloud tail service. For a vision-split bundle it receives quantized "
    "bottleneck features (or whole "
    "PNG images) from cleave-edge daemons over ZeroMQ, runs the decoder and the tail of the "
    "split model, and replies with class scores.\n\nEvery key of the TOML config file can "
    "be given as a flag (--section.key value); flags win over the file.";

// CURVE on the service socket when cloud.curve_secret_key is set: only edges in
// cloud.curve_allow_list are admitted. Destroy the handler before `context`.
cleave::Result<std::unique_ptr<cleave::ZapHandler>> SecureServiceSocket(
    cleave::TransportContext& context, const cleave::cli::Daemon& daemon,
    cleave::SocketOptions& socket) {
  return cleave::SetUpCurveServer(context, daemon.config().GetString("cloud.curve_secret_key"),
                                  daemon.config().GetString("cloud.curve_allow_list"), socket,
                                  &daemon.metrics()->CurveRefused("cloud"));
}

// Hard-token routing: layers [K, N) of an lm-split bundle with per-session KV caches.
Status ServeLm(cleave::cli::Daemon& daemon, const std::string& bundle_dir) {
  const cleave::Config& config = daemon.config();
  const bool serve_tokens = config.GetBool("cloud.lm_serve_tokens");
  auto lm = split::ReadLmBundle(bundle_dir, /*edge=*/serve_tokens, /*cloud=*/true);
  if (!lm.ok()) return lm.status().WithContext("cannot load the cloud part of " + bundle_dir);
  CLEAVE_ASSIGN_OR_RETURN(cloud::LmContextOptions contexts,
                          cloud::LmContextOptionsFromConfig(config));
  const std::string name = std::filesystem::path(bundle_dir).filename().string();
  auto service = std::make_unique<cloud::LmTailService>(name, std::move(lm->model), contexts,
                                                        cleave::SystemClock(), serve_tokens);
  cleave::TransportContext context;
  cloud::LmServerOptions options;
  options.metrics = daemon.metrics();
  CLEAVE_RETURN_IF_ERROR(cloud::ReadServingOptions(config, options));
  CLEAVE_ASSIGN_OR_RETURN(auto zap, SecureServiceSocket(context, daemon, options.socket));
  CLEAVE_ASSIGN_OR_RETURN(auto server,
                          cloud::LmServer::Create(context, options, std::move(service)));
  CLEAVE_RETURN_IF_ERROR(server->WarmUp());
  CLEAVE_RETURN_IF_ERROR(daemon.BecomeReady(server->endpoint()));
  cleave::GetLogger("cloud")->info("serving the cloud layers of language model '{}' on {}", name,
                                   server->endpoint());
  return server->Run(&cleave::cli::Daemon::StopRequested);
}

// The vision tail: one model copy per worker (CloudModel serves one caller at a time),
// `version` > 0 when they come from `repository`, which then keeps being watched.
Status ServeVision(cleave::cli::Daemon& daemon, Models models, uint64_t version,
                   cloud::ModelRepository* repository) {
  const cleave::Config& config = daemon.config();
  const std::string model_name = models.front()->model_name();
  CLEAVE_ASSIGN_OR_RETURN(cloud::TailServerOptions options,
                          cloud::TailServerOptionsFromConfig(config));
  options.metrics = daemon.metrics();
  options.model_version = version;
  cleave::TransportContext context;
  CLEAVE_ASSIGN_OR_RETURN(auto zap, SecureServiceSocket(context, daemon, options.socket));
  CLEAVE_ASSIGN_OR_RETURN(auto server,
                          cloud::TailServer::Create(context, options, std::move(models)));
  CLEAVE_RETURN_IF_ERROR(server->WarmUp());
  nlohmann::json ready = nlohmann::json::object();
  if (version > 0) ready["model_version"] = version;
  CLEAVE_RETURN_IF_ERROR(daemon.BecomeReady(server->endpoint(), ready));
  cleave::GetLogger("cloud")->info("serving the tail of model '{}' (version {}) on {}", model_name,
                                   version, server->endpoint());
  // Hot reload: new versions are verified and warmed on the poller's thread, then swapped in.
  std::unique_ptr<cloud::RepositoryPoller> poller;
  if (repository) {
    cloud::TailServer* tail = server.get();
    poller = std::make_unique<cloud::RepositoryPoller>(
        *repository, config.GetInt("cloud.reload_interval_ms"),
        [tail](std::unique_ptr<cloud::ServableVersion> next) {
          if (Status s = tail->SwapModels(next->version, std::move(next->models)); !s.ok()) {
            cleave::GetLogger("cloud")->error("cannot swap to model version {}: {}", next->version,
                                              s.ToString());
          }
        });
  }
  Status run = server->Run(&cleave::cli::Daemon::StopRequested);
  poller.reset();  // before the server goes
  return run;
}

Status Serve(cleave::cli::Daemon& daemon) {
  const cleave::Config& config = daemon.config();
  auto log = cleave::GetLogger("cloud");
  CLEAVE_RETURN_IF_ERROR(cleave::TrustBundleKeyFile(config.GetString("cloud.bundle_public_key")));
  CLEAVE_ASSIGN_OR_RETURN(const int workers, cloud::CloudWorkers(config));
  CLEAVE_ASSIGN_OR_RETURN(const split::CloudModel::Options model_options,
                          cloud::CloudModelOptionsFromConfig(config));
  log->info("vision tails compute in {} (cloud.precision = {})",
            split::TailPrecisionName(model_options.precision), config.GetString("cloud.precision"));
  const std::string repository_dir = config.GetString("cloud.model_repository");
  if (!repository_dir.empty()) {
    cloud::ModelRepository repository(repository_dir, workers, nullptr, model_options);
    auto first = repository.Poll();  // verifies and warms up the highest version
    if (!first.ok()) {
      return first.status().WithContext("cannot serve from model repository " + repository_dir);
    }
    if (!*first) {
      return Status::NotFound("model repository " + repository_dir +
                              " holds no numbered version directory");
    }
    log->info("loaded model version {} from {} (manifest sha256 {}) for {} worker(s)",
              (*first)->version, repository_dir, (*first)->manifest_sha256.substr(0, 12), workers);
    return ServeVision(daemon, std::move((*first)->models), (*first)->version, &repository);
  }
  const std::string bundle_dir = config.GetString("cloud.bundle");
  auto bundle = cleave::Bundle::Open(bundle_dir);
  if (!bundle.ok()) return bundle.status().WithContext("cannot load bundle " + bundle_dir);
  if (bundle->kind() == "lm-split") return ServeLm(daemon, bundle_dir);
  Models models;
  for (int w = 0; w < workers; ++w) {
    auto model = split::CloudModel::Load(*bundle, model_options);
    if (!model.ok()) return model.status().WithContext("cannot load the tail of " + bundle_dir);
    models.push_back(std::move(model).value());
  }
  log->info("loaded bundle {} (manifest sha256 {}) for {} worker(s)", bundle_dir,
            bundle->manifest_sha256().substr(0, 12), workers);
  return ServeVision(daemon, std::move(models), 0, nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  split::TuneAllocatorForServing();
  cleave::cli::DaemonSpec spec;
  spec.component = "cloud";
  spec.schema = cloud::CloudSchema();
  spec.prepare = [](const cleave::Config& config) {
    CLEAVE_RETURN_IF_ERROR(cloud::CheckCloudConfig(config));
    split::SetComputeThreads(
        static_cast<int>(std::max<int64_t>(1, config.GetInt("cloud.threads"))));
    return Status::Ok();
  };
  spec.declare_metrics = [](cleave::Metrics& metrics) {
    metrics.ConnectedEdges();
    metrics.CurveRefused("cloud");
  };
  spec.run = Serve;
  return cleave::cli::RunDaemonMain(argc, argv, "cleave-cloud", kDescription, std::move(spec));
}
