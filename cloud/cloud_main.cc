// cleave-cloud: serves the tail of a split model (decoder + remaining blocks) on a ZeroMQ
// ROUTER socket. See cloud/tail_server.h for the serving loop.
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>

#include "cloud/lm_server.h"
#include "cloud/model_repository.h"
#include "cloud/tail_server.h"
#include "common/admin_http.h"
#include "common/config.h"
#include "common/curve.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/shutdown.h"
#include "split/bundle.h"
#include "split/compute_runtime.h"
#include "split/lm_train.h"
#include "split/split_runtime.h"

namespace {

using cleave::ConfigType;

cleave::ConfigSchema CloudSchema() {
  cleave::ConfigSchema schema;
  schema
      .Add("cloud.bundle", ConfigType::kString, "",
           "model bundle directory: a vision-split bundle (`cleave train`) or an lm-split "
           "bundle (`cleave train-lm`); its cloud part is served. Exactly one of cloud.bundle "
           "and cloud.model_repository")
      .Add("cloud.model_repository", ConfigType::kString, "",
           "directory of numbered vision-split bundle versions (<dir>/1, <dir>/2, ...): the "
           "highest version that verifies and warms up is served, and newer versions are "
           "hot-reloaded without dropping requests. Exactly one of cloud.bundle and "
           "cloud.model_repository")
      .Add("cloud.reload_interval_ms", ConfigType::kInt, "2000",
           "how often cloud.model_repository is scanned for a new version, in milliseconds "
           "(SIGHUP also triggers a scan)")
      .Add("cloud.bundle_public_key", ConfigType::kString, "",
           "Ed25519 public key file (cleave keys generate); when set, only bundles signed by it "
           "load")
      .Add("cloud.curve_secret_key", ConfigType::kString, "",
           "CURVE key file of this service (cleave keys generate --type curve); needs "
           "cloud.curve_allow_list: only listed edges are admitted")
      .Add("cloud.curve_allow_list", ConfigType::kString, "",
           "file of allowed client CURVE public keys, one per line; re-read on change or SIGHUP")
      .Add("cloud.listen", ConfigType::kString, "tcp://127.0.0.1:5560",
           "ZeroMQ endpoint edges connect to (port 0 picks a free port)")
      .Add("cloud.max_batch", ConfigType::kInt, "64",
           "most waiting requests computed together in one batch (1 with max_queue_delay_us = 0 "
           "disables batching)")
      .Add("cloud.max_queue_delay_us", ConfigType::kInt, "2000",
           "longest the oldest waiting request waits for a fuller batch, in microseconds (0 = "
           "compute whatever is waiting at once)")
      .Add("cloud.max_queue", ConfigType::kInt, "1024",
           "most accepted requests waiting for a batch; beyond it requests are answered "
           "`overloaded` at once")
      .Add("cloud.max_queue_wait_us", ConfigType::kInt, "0",
           "admit a request only while its estimated queueing time (the modelled compute time "
           "of the work ahead of it / workers) is at most this many microseconds; beyond it "
           "requests are answered `overloaded` at once, which bounds the latency of admitted "
           "requests under overload (0 = bound by cloud.max_queue only)")
      .Add("cloud.workers", ConfigType::kInt, "1",
           "compute threads, each with its own copy of the model")
      .Add("cloud.threads", ConfigType::kInt, "2", "libtorch intra-op threads of each worker")
      .Add("cloud.precision", ConfigType::kString, "auto",
           "arithmetic of the vision tail: fp32, bf16 (weights and activations in bfloat16, "
           "fp32 accumulation; needs AVX-512) or auto (bf16 where the CPU computes it natively "
           "- AMX or AVX512-BF16 - else fp32). Measure a bundle's bf16 accuracy with `cleave "
           "bench split --tail-precision bf16` before relying on it")
      .Add("cloud.max_message_bytes", ConfigType::kInt, "4194304",
           "larger incoming messages are dropped by the transport")
      .Add("cloud.lm_memory_budget_bytes", ConfigType::kInt, "536870912",
           "lm-split bundles: KV-cache bytes of all sessions before LRU eviction")
      .Add("cloud.lm_session_ttl_seconds", ConfigType::kInt, "600",
           "lm-split bundles: a session idle this long loses its cache")
      .Add("cloud.lm_max_sessions", ConfigType::kInt, "4096",
           "lm-split bundles: most sessions kept at once")
      .Add("cloud.lm_serve_tokens", ConfigType::kBool, "true",
           "lm-split bundles: also load the edge part and serve token requests (the "
           "cloud-only configuration, every layer in the cloud)")
      .Add("cloud.admin_listen", ConfigType::kString, "",
           "host:port of the admin HTTP server (/metrics, /healthz, /readyz; port 0 picks a "
           "free port); empty = none")
      .Add("cloud.ready_file", ConfigType::kString, "",
           "once serving, write {\"endpoint\":...,\"pid\":...,\"admin\":...} here (for "
           "supervisors/tests)")
      .Add("log.level", ConfigType::kString, "info", "trace|debug|info|warn|error|off");
  return schema;
}

int Fail(const cleave::Status& status) {
  std::fprintf(stderr, "cleave-cloud: %s\n", status.ToString().c_str());
  return 1;
}

// The admin port and what it exports; `admin` is null without cloud.admin_listen.
struct Observability {
  std::shared_ptr<cleave::Metrics> metrics = std::make_shared<cleave::Metrics>();
  std::unique_ptr<cleave::AdminServer> admin;
};

// Warm-up, then the ready file and /readyz: the service is ready only once a model has run.
// `model_version` > 0 (a model repository) is added to the ready file.
int BecomeReady(const cleave::Config& config, const std::string& endpoint, cleave::Status warm_up,
                Observability& obs, uint64_t model_version = 0) {
  if (!warm_up.ok()) return Fail(warm_up);
  if (obs.admin) obs.admin->SetReady(true);  // first, so the ready file implies /readyz 200
  const std::string ready_file = config.GetString("cloud.ready_file");
  if (!ready_file.empty()) {
    nlohmann::json ready = {{"endpoint", endpoint}, {"pid", ::getpid()}};
    if (obs.admin) ready["admin"] = obs.admin->url();
    if (model_version > 0) ready["model_version"] = model_version;
    if (cleave::Status s = cleave::WriteFileAtomic(ready_file, ready.dump()); !s.ok()) {
      return Fail(s);
    }
  }
  return 0;
}

// Hard-token routing: layers [K, N) of an lm-split bundle with per-session KV caches.
int ServeLm(const cleave::Config& config, const std::string& bundle_dir, Observability& obs) {
  auto log = cleave::GetLogger("cloud");
  const bool serve_tokens = config.GetBool("cloud.lm_serve_tokens");
  auto lm = cleave::split::ReadLmBundle(bundle_dir, /*edge=*/serve_tokens, /*cloud=*/true);
  if (!lm.ok()) return Fail(lm.status().WithContext("cannot load the cloud part of " + bundle_dir));
  cleave::cloud::LmContextOptions contexts;
  contexts.memory_budget_bytes = config.GetInt("cloud.lm_memory_budget_bytes");
  contexts.idle_ttl_micros = config.GetInt("cloud.lm_session_ttl_seconds") * 1'000'000;
  contexts.max_sessions =
      static_cast<size_t>(std::max<int64_t>(0, config.GetInt("cloud.lm_max_sessions")));
  if (cleave::Status s = contexts.Validate(); !s.ok()) return Fail(s);
  const std::string name = std::filesystem::path(bundle_dir).filename().string();
  auto service = std::make_unique<cleave::cloud::LmTailService>(
      name, std::move(lm->model), contexts, cleave::SystemClock(), serve_tokens);
  cleave::TransportContext context;
  cleave::cloud::LmServerOptions options;
  options.listen = config.GetString("cloud.listen");
  options.socket.max_message_bytes = config.GetInt("cloud.max_message_bytes");
  options.metrics = obs.metrics;
  const int64_t max_queue = config.GetInt("cloud.max_queue");
  if (max_queue < 1) {
    return Fail(cleave::Status::InvalidArgument("cloud.max_queue must be >= 1, got " +
                                                std::to_string(max_queue)));
  }
  options.max_queue = static_cast<size_t>(max_queue);
  options.max_queue_wait_us = config.GetInt("cloud.max_queue_wait_us");
  auto zap = cleave::SetUpCurveServer(context, config.GetString("cloud.curve_secret_key"),
                                      config.GetString("cloud.curve_allow_list"), options.socket,
                                      &obs.metrics->CurveRefused("cloud"));
  if (!zap.ok()) return Fail(zap.status());
  auto server = cleave::cloud::LmServer::Create(context, options, std::move(service));
  if (!server.ok()) return Fail(server.status());
  if (int rc = BecomeReady(config, (*server)->endpoint(), (*server)->WarmUp(), obs); rc != 0) {
    return rc;
  }
  log->info("serving the cloud layers of language model '{}' on {}", name, (*server)->endpoint());
  cleave::Status run = (*server)->Run([] { return cleave::ShutdownRequested(); });
  if (obs.admin) obs.admin->SetReady(false, "shutting down");
  if (!run.ok()) return Fail(run);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  cleave::split::TuneAllocatorForServing();
  CLI::App app{
      "cleave-cloud: the cloud tail service. For a vision-split bundle it receives quantized "
      "bottleneck features (or whole "
      "PNG images) from cleave-edge daemons over ZeroMQ, runs the decoder and the tail of the "
      "split model, and replies with class scores.\n\nEvery key of the TOML config file can "
      "be given as a flag (--section.key value); flags win over the file."};
  cleave::ConfigSchema schema = CloudSchema();
  std::string config_path;
  std::map<std::string, std::string> flags;
  cleave::Config::AddFlags(app, schema, &config_path, &flags);
  CLI11_PARSE(app, argc, argv);

  cleave::Result<cleave::Config> config = cleave::Config::Load(schema, config_path, flags);
  if (!config.ok()) return Fail(config.status());
  if (cleave::Status s = cleave::InitLogging(config->GetString("log.level")); !s.ok()) {
    return Fail(s);
  }
  auto log = cleave::GetLogger("cloud");
  const std::string bundle_dir = config->GetString("cloud.bundle");
  const std::string repository_dir = config->GetString("cloud.model_repository");
  if (bundle_dir.empty() == repository_dir.empty()) {
    return Fail(cleave::Status::InvalidArgument(
        bundle_dir.empty()
            ? "no model: set exactly one of cloud.bundle (one bundle directory) and "
              "cloud.model_repository (a directory of numbered versions)"
            : "cloud.bundle and cloud.model_repository are both set; set exactly one"));
  }
  const int64_t reload_interval_ms = config->GetInt("cloud.reload_interval_ms");
  if (reload_interval_ms < 1) {
    return Fail(cleave::Status::InvalidArgument("cloud.reload_interval_ms must be >= 1, got " +
                                                std::to_string(reload_interval_ms)));
  }
  cleave::split::SetComputeThreads(
      static_cast<int>(std::max<int64_t>(1, config->GetInt("cloud.threads"))));
  cleave::InstallShutdownHandlers();
  // Before the bundle loads, so probes see "not ready" rather than nothing while it does.
  Observability obs;
  obs.metrics->Service("cloud");  // every series exists (at 0) while the model loads
  obs.metrics->ConnectedEdges();
  obs.metrics->CurveRefused("cloud");
  auto admin =
      cleave::StartAdminServer("cloud", "cloud.admin_listen",
                               config->GetString("cloud.admin_listen"), obs.metrics->registry());
  if (!admin.ok()) return Fail(admin.status());
  obs.admin = std::move(admin).value();

  if (cleave::Status s = cleave::TrustBundleKeyFile(config->GetString("cloud.bundle_public_key"));
      !s.ok()) {
    return Fail(s);
  }
  const int64_t workers = config->GetInt("cloud.workers");
  if (workers < 1 || workers > 256) {
    return Fail(cleave::Status::InvalidArgument("cloud.workers must be in [1, 256], got " +
                                                std::to_string(workers)));
  }
  cleave::Result<cleave::split::TailPrecision> precision =
      cleave::split::ParseTailPrecision(config->GetString("cloud.precision"));
  if (!precision.ok()) return Fail(precision.status().WithContext("cloud.precision"));
  cleave::split::CloudModel::Options model_options;
  model_options.precision = *precision;
  log->info("vision tails compute in {} (cloud.precision = {})",
            cleave::split::TailPrecisionName(*precision), config->GetString("cloud.precision"));
  // One model copy per worker: CloudModel serves one caller at a time.
  std::vector<std::unique_ptr<cleave::split::CloudModel>> models;
  std::unique_ptr<cleave::cloud::ModelRepository> repository;
  uint64_t model_version = 0;
  if (!repository_dir.empty()) {
    repository = std::make_unique<cleave::cloud::ModelRepository>(
        repository_dir, static_cast<int>(workers), nullptr, model_options);
    auto first = repository->Poll();  // verifies and warms up the highest version
    if (!first.ok()) {
      return Fail(
          first.status().WithContext("cannot serve from model repository " + repository_dir));
    }
    if (!*first) {
      return Fail(cleave::Status::NotFound("model repository " + repository_dir +
                                           " holds no numbered version directory"));
    }
    model_version = (*first)->version;
    models = std::move((*first)->models);
    log->info("loaded model version {} from {} (manifest sha256 {}) for {} worker(s)",
              model_version, repository_dir, (*first)->manifest_sha256.substr(0, 12), workers);
  } else {
    cleave::Result<cleave::Bundle> bundle = cleave::Bundle::Open(bundle_dir);
    if (!bundle.ok()) return Fail(bundle.status().WithContext("cannot load bundle " + bundle_dir));
    if (bundle->kind() == "lm-split") return ServeLm(*config, bundle_dir, obs);
    for (int64_t w = 0; w < workers; ++w) {
      auto model = cleave::split::CloudModel::Load(*bundle, model_options);
      if (!model.ok()) {
        return Fail(model.status().WithContext("cannot load the tail of " + bundle_dir));
      }
      models.push_back(std::move(model).value());
    }
    log->info("loaded bundle {} (manifest sha256 {}) for {} worker(s)", bundle_dir,
              bundle->manifest_sha256().substr(0, 12), workers);
  }

  const std::string model_name = models.front()->model_name();
  const int64_t max_queue = config->GetInt("cloud.max_queue");
  if (max_queue < 1) {
    return Fail(cleave::Status::InvalidArgument("cloud.max_queue must be >= 1, got " +
                                                std::to_string(max_queue)));
  }
  cleave::TransportContext context;
  cleave::cloud::TailServerOptions options;
  options.listen = config->GetString("cloud.listen");
  options.max_batch = static_cast<int>(config->GetInt("cloud.max_batch"));
  options.max_queue_delay_us = config->GetInt("cloud.max_queue_delay_us");
  options.max_queue = static_cast<size_t>(max_queue);
  options.max_queue_wait_us = config->GetInt("cloud.max_queue_wait_us");
  options.workers = static_cast<int>(workers);
  options.intra_op_threads =
      static_cast<int>(std::max<int64_t>(1, config->GetInt("cloud.threads")));
  options.socket.max_message_bytes = config->GetInt("cloud.max_message_bytes");
  options.metrics = obs.metrics;
  options.model_version = model_version;
  auto zap = cleave::SetUpCurveServer(context, config->GetString("cloud.curve_secret_key"),
                                      config->GetString("cloud.curve_allow_list"), options.socket,
                                      &obs.metrics->CurveRefused("cloud"));
  if (!zap.ok()) return Fail(zap.status());
  auto server = cleave::cloud::TailServer::Create(context, options, std::move(models));
  if (!server.ok()) return Fail(server.status());
  if (int rc = BecomeReady(*config, (*server)->endpoint(), (*server)->WarmUp(), obs, model_version);
      rc != 0) {
    return rc;
  }
  log->info("serving the tail of model '{}' (version {}) on {}", model_name, model_version,
            (*server)->endpoint());
  // Hot reload: new versions are verified and warmed on the poller's thread, then swapped in.
  std::unique_ptr<cleave::cloud::RepositoryPoller> poller;
  if (repository) {
    cleave::cloud::TailServer* tail = server->get();
    poller = std::make_unique<cleave::cloud::RepositoryPoller>(
        *repository, reload_interval_ms,
        [tail](std::unique_ptr<cleave::cloud::ServableVersion> next) {
          if (cleave::Status s = tail->SwapModels(next->version, std::move(next->models));
              !s.ok()) {
            cleave::GetLogger("cloud")->error("cannot swap to model version {}: {}", next->version,
                                              s.ToString());
          }
        });
  }
  cleave::Status run = (*server)->Run([] { return cleave::ShutdownRequested(); });
  poller.reset();  // before the server goes
  if (obs.admin) obs.admin->SetReady(false, "shutting down");
  if (!run.ok()) return Fail(run);
  return 0;
}
