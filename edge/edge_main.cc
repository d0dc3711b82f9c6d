// cleave-edge: the edge daemon for IoT gateways.
//   cleave-edge serve    — serve local applications over ZeroMQ (the daemon)
//   cleave-edge classify — one-shot: classify image files or an IDX file and exit
#include <torch/torch.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>

#include "common/admin_http.h"
#include "common/config.h"
#include "common/curve.h"
#include "common/datasets.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/png_image.h"
#include "common/shutdown.h"
#include "common/version_directory.h"
#include "edge/edge_engine.h"
#include "edge/edge_server.h"
#include "edge/fl_client.h"
#include "edge/lm_generate.h"
#include "edge/offload_client.h"
#include "federated/partition.h"
#include "federated/weights.h"
#include "split/bundle.h"
#include "split/compute_runtime.h"
#include "split/vision_bundle.h"

namespace {

using cleave::ConfigType;
using cleave::Status;
template <typename T>
using Result = cleave::Result<T>;

cleave::ConfigSchema EdgeSchema() {
  cleave::ConfigSchema schema;
  schema
      .Add("edge.bundle", ConfigType::kString, "",
           "model bundle directory (from `cleave train`); its head and exits run here. "
           "Exactly one of edge.bundle and edge.model_repository")
      .Add("edge.model_repository", ConfigType::kString, "",
           "serve: directory of numbered bundle versions (1/, 2/, ...); the highest serves and "
           "newer ones are swapped in atomically once verified and warmed up; a version that "
           "fails keeps the current one serving (rollback)")
      .Add("edge.reload_interval_ms", ConfigType::kInt, "2000",
           "how often edge.model_repository is scanned for a new version, in milliseconds "
           "(SIGHUP scans at once)")
      .Add("edge.bundle_public_key", ConfigType::kString, "",
           "Ed25519 public key file (cleave keys generate); when set, only bundles signed by it "
           "load")
      .Add("edge.curve_secret_key", ConfigType::kString, "",
           "CURVE key file of this edge (cleave keys generate --type curve); with "
           "edge.cloud_curve_public_key / edge.aggregator_curve_public_key, those links are "
           "encrypted and authenticated")
      .Add("edge.cloud_curve_public_key", ConfigType::kString, "",
           "the cloud's CURVE public key file (needs edge.curve_secret_key)")
      .Add("edge.aggregator_curve_public_key", ConfigType::kString, "",
           "the aggregator's CURVE public key file (needs edge.curve_secret_key)")
      .Add("edge.listen", ConfigType::kString, "tcp://127.0.0.1:5555",
           "ZeroMQ endpoint local applications connect to (ipc:// or tcp://; port 0 = any)")
      .Add("edge.cloud", ConfigType::kString, "tcp://127.0.0.1:5560",
           "cleave-cloud endpoint for hard inputs; empty = edge only (hard inputs degrade)")
      .Add("edge.deadline_ms", ConfigType::kInt, "250",
           "default end-to-end deadline of a request; past it the best local exit answers")
      .Add("edge.max_batch", ConfigType::kInt, "32", "requests run through the head together")
      .Add("edge.int8", ConfigType::kBool, "true", "run the int8-quantized head")
      .Add("edge.int8_engine", ConfigType::kString, "auto",
           "auto|onednn|qnnpack|reference (auto measures and keeps the fastest)")
      .Add("edge.threads", ConfigType::kInt, "1", "libtorch intra-op threads")
      .Add("edge.admin_listen", ConfigType::kString, "",
           "serve: host:port of the admin HTTP server (/metrics, /healthz, /readyz; port 0 "
           "picks a free port); empty = none")
      .Add("edge.ready_file", ConfigType::kString, "",
           "once serving, write {\"endpoint\":...,\"pid\":...,\"admin\":...} here (for "
           "supervisors/tests)")
      .Add("edge.aggregator", ConfigType::kString, "",
           "cleave-aggregator endpoint to take part in federated rounds (serve only); empty = "
           "no federated learning")
      .Add("edge.client_id", ConfigType::kString, "",
           "federated client id ([A-Za-z0-9._:@-], at most 128 bytes); empty = "
           "edge-<hostname>-<pid> (set it to keep the identity across restarts)")
      .Add("edge.fl_data_dir", ConfigType::kString, cleave::kFashionMnistDir,
           "Fashion-MNIST directory whose training set holds this edge's local data")
      .Add("edge.fl_partition", ConfigType::kString, "dirichlet:0.5",
           "how the training set is divided among edges: iid | dirichlet:<alpha> | labels:<k>")
      .Add("edge.fl_partitions", ConfigType::kInt, "1",
           "number of partitions (edges sharing the training set)")
      .Add("edge.fl_partition_index", ConfigType::kInt, "0",
           "the partition this edge holds, in [0, edge.fl_partitions)")
      .Add("edge.fl_seed", ConfigType::kInt, "1",
           "partition seed; every edge must use the same one to get disjoint shares")
      .Add("edge.fl_train_limit", ConfigType::kInt, "0",
           "use only the first N training rows before partitioning (0 = all)")
      .Add("edge.fl_max_steps", ConfigType::kInt, "0",
           "at most this many local training steps per round (0 = as the round says)")
      .Add("edge.fl_time_budget_ms", ConfigType::kInt, "0",
           "at most this much local training time per round (0 = as the round says)")
      .Add("edge.fl_secure_drop_round", ConfigType::kInt, "0",
           "testing only: in this secure-aggregation round, share keys and then drop out "
           "without a word (exercises the aggregator's dropout recovery); 0 = never")
      .Add("log.level", ConfigType::kString, "info", "trace|debug|info|warn|error|off");
  return schema;
}

const char* kFashionMnistClasses[] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                      "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

int Fail(const Status& status) {
  std::fprintf(stderr, "cleave-edge: %s\n", status.ToString().c_str());
  return 1;
}

struct Loaded {
  cleave::Config config;
  std::unique_ptr<cleave::edge::EdgeEngine> engine;
  cleave::Bundle bundle;
};

cleave::Result<cleave::Config> LoadConfig(const cleave::ConfigSchema& schema,
                                          const std::string& path,
                                          const std::map<std::string, std::string>& flags) {
  CLEAVE_ASSIGN_OR_RETURN(cleave::Config config, cleave::Config::Load(schema, path, flags));
  CLEAVE_RETURN_IF_ERROR(cleave::InitLogging(config.GetString("log.level")));
  return config;
}

struct LoadedVersion {
  std::unique_ptr<cleave::edge::EdgeEngine> engine;
  cleave::Bundle bundle;
};

// Opens the bundle at `dir` through the verified path (hashes; the signature when a key is
// trusted), loads its head as configured and, with `warm`, runs one blank image through it.
Result<LoadedVersion> LoadVersion(const cleave::Config& config, const std::string& dir, bool warm) {
  Result<cleave::Bundle> bundle = cleave::Bundle::Open(dir);
  if (!bundle.ok()) return bundle.status().WithContext("cannot load bundle " + dir);
  cleave::split::EdgeModel::Options options;
  options.int8 = config.GetBool("edge.int8");
  options.int8_engine = config.GetString("edge.int8_engine");
  auto model = cleave::split::EdgeModel::Load(*bundle, options);
  if (!model.ok()) return model.status().WithContext("cannot load the head of " + dir);
  cleave::GetLogger("edge")->info("loaded bundle {} (head {}, engine {})", dir,
                                  options.int8 ? "int8" : "fp32", (*model)->engine());
  LoadedVersion out{std::make_unique<cleave::edge::EdgeEngine>(std::move(model).value()), *bundle};
  if (warm) {
    const int size = out.engine->image_size();
    Status s = out.engine->Decide(torch::zeros({1, 1, size, size}), {0}, {-1.0f}, {1000}).status();
    if (!s.ok()) return s.WithContext("warm-up of " + dir);
  }
  return out;
}

cleave::Result<Loaded> LoadEngine(cleave::Config config,
                                  std::unique_ptr<cleave::VersionDirectory>* repository = nullptr) {
  const std::string dir = config.GetString("edge.bundle");
  const std::string repo = config.GetString("edge.model_repository");
  if (dir.empty() && repo.empty()) {
    return Status::InvalidArgument(
        "no model bundle: pass --edge.bundle DIR (or --edge.model_repository DIR to serve) or "
        "set [edge] bundle in the config file");
  }
  if (!dir.empty() && !repo.empty()) {
    return Status::InvalidArgument(
        "edge.bundle and edge.model_repository are both set; set exactly one");
  }
  if (!repo.empty() && repository == nullptr) {
    return Status::InvalidArgument("edge.model_repository is for `serve`; give --edge.bundle");
  }
  cleave::split::SetComputeThreads(
      static_cast<int>(std::max<int64_t>(1, config.GetInt("edge.threads"))));
  CLEAVE_RETURN_IF_ERROR(cleave::TrustBundleKeyFile(config.GetString("edge.bundle_public_key")));
  std::string chosen = dir;
  std::optional<cleave::VersionDirectory::Candidate> candidate;
  if (!repo.empty()) {
    *repository = std::make_unique<cleave::VersionDirectory>(repo);
    CLEAVE_ASSIGN_OR_RETURN(candidate, (*repository)->Next());
    if (!candidate) {
      return Status::NotFound("model repository " + repo +
                              " holds no version directory (1/, 2/, ...) to serve");
    }
    chosen = candidate->dir.string();
  }
  Result<LoadedVersion> version = LoadVersion(config, chosen, /*warm=*/false);
  if (!version.ok()) {
    if (candidate) {
      return version.status().WithContext("model version " + std::to_string(candidate->version));
    }
    return version.status();
  }
  if (candidate) (*repository)->MarkCurrent(*candidate);
  Loaded loaded{std::move(config), std::move(version->engine), version->bundle};
  return loaded;
}

// edge-<hostname>-<pid>, reduced to the characters a client id may hold.
std::string DefaultClientId() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') std::strcpy(host, "host");
  const std::string pid = std::to_string(::getpid());
  std::string name(host);
  const size_t room = cleave::wire::fl::kMaxClientIdBytes - std::strlen("edge--") - pid.size();
  if (name.size() > room) name.resize(room);
  std::string id = "edge-" + name + "-" + pid;
  for (char& c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && !std::strchr("._:@-", c)) c = '-';
  }
  return id;
}

// What a FederatedClient needs, prepared before serving so that configuration and data
// errors stop cleave-edge at start-up rather than in the middle of serving.
struct FederatedSetup {
  cleave::edge::FederatedClientOptions options;
  cleave::split::VisionModelSpec spec;
  cleave::federated::Weights initial;
  cleave::split::LabeledImages data;
  std::string share;  // "partition i of N (scheme, seed s)" for logs and the ready file
};

// This edge's rows of the Fashion-MNIST training set: the first edge.fl_train_limit rows,
// partitioned among edge.fl_partitions edges exactly as every other edge with the same
// settings partitions them (MakePartition is deterministic), keeping only our share.
Result<cleave::split::LabeledImages> LoadFederatedShare(const cleave::Config& config,
                                                        int num_classes, std::string* share) {
  const int64_t partitions = config.GetInt("edge.fl_partitions");
  const int64_t index = config.GetInt("edge.fl_partition_index");
  const int64_t limit = config.GetInt("edge.fl_train_limit");
  Result<cleave::federated::PartitionSpec> parsed =
      cleave::federated::PartitionSpec::Parse(config.GetString("edge.fl_partition"));
  if (!parsed.ok()) return parsed.status().WithContext("edge.fl_partition");
  cleave::federated::PartitionSpec spec = *parsed;
  spec.seed = static_cast<uint64_t>(config.GetInt("edge.fl_seed"));
  const std::string dir = config.GetString("edge.fl_data_dir");
  Result<cleave::ImageDataset> raw = cleave::LoadFashionMnist(cleave::DatasetSplit::kTrain, dir);
  if (!raw.ok()) return raw.status().WithContext("edge.fl_data_dir " + dir);
  const size_t rows = limit > 0 ? std::min<size_t>(raw->size(), limit) : raw->size();
  const std::vector<uint8_t> labels(raw->labels.begin(), raw->labels.begin() + rows);
  Result<cleave::federated::Partition> partition =
      cleave::federated::MakePartition(labels, num_classes, static_cast<int>(partitions), spec);
  if (!partition.ok()) return partition.status().WithContext("partitioning the training set");
  const std::vector<int64_t> mine = partition->ClientIndices(static_cast<int>(index));
  *share = "partition " + std::to_string(index) + " of " + std::to_string(partitions) + " (" +
           spec.ToString() + ", seed " + std::to_string(spec.seed) + ", " + std::to_string(rows) +
           " rows)";
  if (mine.empty()) {
    return Status::FailedPrecondition(
        *share +
        " holds no training rows; use fewer partitions, another scheme or seed, or "
        "a larger edge.fl_train_limit");
  }
  cleave::ImageDataset subset;
  subset.rows = raw->rows;
  subset.cols = raw->cols;
  const size_t area = raw->image_bytes();
  subset.images.reserve(mine.size() * area);
  for (int64_t row : mine) {
    subset.images.insert(subset.images.end(), raw->images.begin() + row * area,
                         raw->images.begin() + (row + 1) * area);
    subset.labels.push_back(raw->labels[row]);
  }
  return cleave::split::ToLabeledImages(subset);
}

// Reads the edge.aggregator family of keys. nullopt when federated learning is off.
Result<std::optional<FederatedSetup>> PrepareFederated(const cleave::Config& config,
                                                       const cleave::Bundle& bundle) {
  const std::string aggregator = config.GetString("edge.aggregator");
  if (aggregator.empty()) return std::optional<FederatedSetup>();
  const int64_t partitions = config.GetInt("edge.fl_partitions");
  const int64_t index = config.GetInt("edge.fl_partition_index");
  if (partitions < 1 || partitions > 1000000) {
    return Status::InvalidArgument("edge.fl_partitions must be in [1, 1000000], got " +
                                   std::to_string(partitions));
  }
  if (index < 0 || index >= partitions) {
    return Status::InvalidArgument("edge.fl_partition_index must be in [0, " +
                                   std::to_string(partitions) + ") (edge.fl_partitions), got " +
                                   std::to_string(index));
  }
  for (const char* key : {"edge.fl_seed", "edge.fl_train_limit", "edge.fl_max_steps",
                          "edge.fl_time_budget_ms", "edge.fl_secure_drop_round"}) {
    if (config.GetInt(key) < 0) {
      return Status::InvalidArgument(std::string(key) + " must be >= 0, got " +
                                     std::to_string(config.GetInt(key)));
    }
  }
  FederatedSetup setup;
  setup.options.aggregator = aggregator;
  setup.options.client_id = config.GetString("edge.client_id");
  if (setup.options.client_id.empty()) setup.options.client_id = DefaultClientId();
  CLEAVE_RETURN_IF_ERROR(
      cleave::wire::fl::ValidateClientId(setup.options.client_id).WithContext("edge.client_id"));
  setup.options.max_steps = config.GetInt("edge.fl_max_steps");
  setup.options.time_budget_ms = config.GetInt("edge.fl_time_budget_ms");
  setup.options.secure_drop_round = static_cast<uint32_t>(
      std::min<int64_t>(config.GetInt("edge.fl_secure_drop_round"), UINT32_MAX));

  // The training copy: the bundle's whole fp32 network (the serving head is separate).
  cleave::split::VisionBundleParts parts;
  parts.head_int8 = false;
  Result<cleave::split::VisionSplitModel> model = cleave::split::ReadVisionBundle(bundle, parts);
  if (!model.ok()) {
    return model.status().WithContext("federated learning needs the bundle's fp32 model");
  }
  setup.spec = model->spec;
  setup.options.model_name = model->name.empty() ? "model" : model->name;
  setup.initial = cleave::federated::GetWeights(*model->net);
  CLEAVE_ASSIGN_OR_RETURN(setup.data,
                          LoadFederatedShare(config, setup.spec.num_classes, &setup.share));
  return std::optional<FederatedSetup>(std::move(setup));
}

int Serve(cleave::Config config_in) {
  cleave::InstallShutdownHandlers();
  // Before the bundle loads, so probes see "not ready" rather than nothing while it does.
  auto metrics = std::make_shared<cleave::Metrics>();
  metrics->Service("edge");  // every series exists (at 0) while the model loads
  auto admin = cleave::StartAdminServer(
      "edge", "edge.admin_listen", config_in.GetString("edge.admin_listen"), metrics->registry());
  if (!admin.ok()) return Fail(admin.status());
  std::unique_ptr<cleave::VersionDirectory> repository;
  auto load = LoadEngine(std::move(config_in), &repository);
  if (!load.ok()) return Fail(load.status());
  Loaded& loaded = *load;
  const cleave::Config& config = loaded.config;
  auto fl_setup = PrepareFederated(config, loaded.bundle);
  if (!fl_setup.ok()) return Fail(fl_setup.status());
  cleave::TransportContext context;
  cleave::edge::EdgeServerOptions options;
  options.listen = config.GetString("edge.listen");
  options.cloud = config.GetString("edge.cloud");
  options.default_deadline_ms = static_cast<uint32_t>(config.GetInt("edge.deadline_ms"));
  options.max_batch = static_cast<int>(config.GetInt("edge.max_batch"));
  options.metrics = metrics;
  cleave::SocketOptions cloud_socket;
  if (cleave::Status s =
          cleave::SetUpCurveClient(config.GetString("edge.curve_secret_key"),
                                   config.GetString("edge.cloud_curve_public_key"), cloud_socket);
      !s.ok()) {
    return Fail(s.WithContext("edge.cloud_curve_public_key"));
  }
  options.cloud_configure = cloud_socket.configure;
  auto server = cleave::edge::EdgeServer::Create(context, options, std::move(loaded.engine));
  if (!server.ok()) return Fail(server.status());
  if (Status s = (*server)->WarmUp(); !s.ok()) return Fail(s);
  cleave::GetLogger("edge")->info("serving applications on {}; cloud at {}", (*server)->endpoint(),
                                  options.cloud.empty() ? "(none)" : options.cloud);
  // Hot swap: new versions load, verify and warm up on this thread while the old one serves.
  std::unique_ptr<cleave::PeriodicReload> reload;
  if (repository) {
    (*server)->set_initial_version(repository->current());
    const int64_t interval_ms = config.GetInt("edge.reload_interval_ms");
    if (interval_ms < 1) {
      return Fail(Status::InvalidArgument("edge.reload_interval_ms must be >= 1, got " +
                                          std::to_string(interval_ms)));
    }
    cleave::edge::EdgeServer* serving = server->get();
    const int threads = static_cast<int>(std::max<int64_t>(1, config.GetInt("edge.threads")));
    reload = std::make_unique<cleave::PeriodicReload>(interval_ms, [&config, &repository, serving,
                                                                    threads] {
      auto log = cleave::GetLogger("edge");
      Result<std::optional<cleave::VersionDirectory::Candidate>> next = repository->Next();
      if (!next.ok()) {
        log->warn("model repository: {}", next.status().ToString());
        return;
      }
      if (!next->has_value()) return;
      const cleave::VersionDirectory::Candidate& candidate = **next;
      cleave::split::SetComputeThreads(threads);  // this thread's own setting
      log->info("model repository: loading version {} from {}", candidate.version,
                candidate.dir.string());
      Result<LoadedVersion> version = LoadVersion(config, candidate.dir.string(), /*warm=*/true);
      if (!version.ok()) {
        repository->MarkBad(candidate);
        log->error("model version {} refused; still serving version {}: {}", candidate.version,
                   repository->current(), version.status().ToString());
        return;
      }
      repository->MarkCurrent(candidate);
      (void)serving->SwapEngine(candidate.version, std::move(version->engine));
    });
  }
  // Declared after the server, so it is stopped and joined first (and before `context`).
  std::unique_ptr<cleave::edge::FederatedClient> fl_client;
  nlohmann::json fl_ready;
  if (fl_setup->has_value()) {
    FederatedSetup& setup = **fl_setup;
    cleave::SocketOptions fl_socket;
    if (cleave::Status s = cleave::SetUpCurveClient(
            config.GetString("edge.curve_secret_key"),
            config.GetString("edge.aggregator_curve_public_key"), fl_socket);
        !s.ok()) {
      return Fail(s.WithContext("edge.aggregator_curve_public_key"));
    }
    setup.options.socket_configure = fl_socket.configure;
    auto client = cleave::edge::FederatedClient::Start(context, setup.options, setup.spec,
                                                       setup.initial, std::move(setup.data));
    if (!client.ok()) return Fail(client.status().WithContext("federated client"));
    fl_client = std::move(client).value();
    cleave::GetLogger("edge")->info("federated learning with {} as '{}': {} local examples, {}",
                                    setup.options.aggregator, setup.options.client_id,
                                    fl_client->num_examples(), setup.share);
    fl_ready = {{"aggregator", setup.options.aggregator},
                {"client_id", setup.options.client_id},
                {"examples", fl_client->num_examples()},
                {"share", setup.share}};
  }
  if (*admin) (*admin)->SetReady(true);  // first, so the ready file implies /readyz 200
  const std::string ready_file = config.GetString("edge.ready_file");
  if (!ready_file.empty()) {
    nlohmann::json ready = {{"endpoint", (*server)->endpoint()}, {"pid", ::getpid()}};
    if (fl_client) ready["federated"] = fl_ready;
    if (repository) ready["model_version"] = (*server)->served_version();
    if (*admin) ready["admin"] = (*admin)->url();
    if (Status s = cleave::WriteFileAtomic(ready_file, ready.dump()); !s.ok()) return Fail(s);
  }
  Status run = (*server)->Run([] { return cleave::ShutdownRequested(); });
  reload.reset();  // joins a load in progress before the server goes
  if (*admin) (*admin)->SetReady(false, "shutting down");
  if (fl_client) {
    fl_client->Stop();
    fl_client->WaitFor([](const cleave::edge::FederatedClientStats& s) { return !s.running; },
                       5000);
    cleave::GetLogger("edge")->info("federated participation: {}",
                                    fl_client->stats().ToJson().dump());
    fl_client.reset();  // joins; the thread said bye to the aggregator
  }
  return run.ok() ? 0 : Fail(run);
}

// Reads images from PNG/PGM files or IDX files (.gz or raw) into 8-bit 28x28 pixels.
Result<std::vector<std::pair<std::string, std::vector<uint8_t>>>> ReadInputs(
    const std::vector<std::string>& paths, int size) {
  std::vector<std::pair<std::string, std::vector<uint8_t>>> images;
  for (const std::string& path : paths) {
    const bool idx =
        path.find("idx") != std::string::npos || path.find("ubyte") != std::string::npos;
    if (idx) {
      CLEAVE_ASSIGN_OR_RETURN(cleave::ImageDataset data, cleave::LoadIdxImagesOnly(path));
      if (data.rows != static_cast<uint32_t>(size) || data.cols != static_cast<uint32_t>(size)) {
        return Status::InvalidArgument(path + ": images are " + std::to_string(data.rows) + "x" +
                                       std::to_string(data.cols) + "; the model expects " +
                                       std::to_string(size) + "x" + std::to_string(size));
      }
      const size_t area = size_t{data.rows} * data.cols;
      for (size_t i = 0; i < data.size(); ++i) {
        images.emplace_back(path + "[" + std::to_string(i) + "]",
                            std::vector<uint8_t>(data.images.begin() + i * area,
                                                 data.images.begin() + (i + 1) * area));
      }
      continue;
    }
    CLEAVE_ASSIGN_OR_RETURN(cleave::GrayImage image, cleave::ReadImageFile(path));
    if (image.width != static_cast<uint32_t>(size) || image.height != static_cast<uint32_t>(size)) {
      return Status::InvalidArgument(path + ": image is " + std::to_string(image.width) + "x" +
                                     std::to_string(image.height) + "; the model expects " +
                                     std::to_string(size) + "x" + std::to_string(size));
    }
    images.emplace_back(path, std::move(image.pixels));
  }
  return images;
}

int Classify(Loaded& loaded, const std::vector<std::string>& paths, bool json, int limit) {
  const cleave::Config& config = loaded.config;
  cleave::edge::EdgeEngine& engine = *loaded.engine;
  auto inputs = ReadInputs(paths, engine.image_size());
  if (!inputs.ok()) return Fail(inputs.status());
  if (limit > 0 && static_cast<int>(inputs->size()) > limit) inputs->resize(limit);

  cleave::TransportContext context;
  std::unique_ptr<cleave::edge::OffloadClient> cloud;
  const std::string endpoint = config.GetString("edge.cloud");
  if (!endpoint.empty()) {
    cleave::SocketOptions socket;
    if (cleave::Status s =
            cleave::SetUpCurveClient(config.GetString("edge.curve_secret_key"),
                                     config.GetString("edge.cloud_curve_public_key"), socket);
        !s.ok()) {
      return Fail(s.WithContext("edge.cloud_curve_public_key"));
    }
    auto client = cleave::edge::OffloadClient::Connect(context, endpoint, socket);
    if (!client.ok()) return Fail(client.status());
    cloud = std::move(client).value();
  }
  const int deadline_ms = static_cast<int>(config.GetInt("edge.deadline_ms"));
  const size_t batch = std::max<int64_t>(1, config.GetInt("edge.max_batch"));
  const int size = engine.image_size();
  uint64_t next_id = 1;
  for (size_t start = 0; start < inputs->size(); start += batch) {
    const size_t n = std::min(batch, inputs->size() - start);
    std::vector<uint8_t> pixels;
    std::vector<uint64_t> ids;
    for (size_t i = 0; i < n; ++i) {
      const auto& img = (*inputs)[start + i].second;
      pixels.insert(pixels.end(), img.begin(), img.end());
      ids.push_back(next_id++);
    }
    torch::Tensor images = cleave::split::ImagesToTensor(pixels.data(), n, size, size);
    auto decisions = engine.Decide(images, ids, std::vector<float>(n, -1.0f),
                                   std::vector<uint32_t>(n, deadline_ms));
    if (!decisions.ok()) return Fail(decisions.status());
    std::vector<std::pair<uint64_t, std::string>> offload;
    for (size_t i = 0; i < n; ++i) {
      if ((*decisions)[i].exit_index < 0 && cloud) {
        offload.emplace_back(ids[i], (*decisions)[i].offload_request);
      }
    }
    std::map<uint64_t, cleave::wire::InferReply> replies;
    if (!offload.empty()) {
      auto exchanged = cloud->Exchange(offload, deadline_ms);
      if (exchanged.ok()) replies = std::move(exchanged).value();
    }
    for (size_t i = 0; i < n; ++i) {
      const auto& d = (*decisions)[i];
      std::string source = "edge_exit";
      int32_t cls = d.best_class;
      if (d.exit_index < 0) {
        auto it = replies.find(ids[i]);
        if (it != replies.end() && it->second.status == cleave::wire::ReplyStatus::kOk) {
          source = "cloud";
          cls = cleave::edge::ArgMax(it->second.scores);
        } else {
          source = "degraded";
        }
      }
      const std::string label = cls >= 0 && cls < 10 ? kFashionMnistClasses[cls] : "?";
      if (json) {
        nlohmann::json line = {{"input", (*inputs)[start + i].first},
                               {"class", cls},
                               {"label", label},
                               {"source", source},
                               {"confidence", d.best_confidence}};
        std::cout << line.dump() << "\n";
      } else {
        std::printf("%-40s %2d %-12s %-9s conf=%.3f\n", (*inputs)[start + i].first.c_str(), cls,
                    label.c_str(), source.c_str(), d.best_confidence);
      }
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  cleave::split::TuneAllocatorForServing();
  CLI::App app{
      "cleave-edge: the edge daemon. Runs the compressed head of a split model with its early "
      "exits; confident inputs are answered on the gateway, hard ones send a few dozen bytes "
      "of quantized bottleneck features to cleave-cloud. If the cloud does not answer within "
      "a request's deadline, the best local exit answers, marked degraded. `generate` does the "
      "same for language models (hard-token routing).\n\nEvery key of the "
      "TOML config file can be given as a flag (--section.key value); flags win over the file."};
  app.require_subcommand(1);
  const cleave::ConfigSchema schema = EdgeSchema();

  std::string serve_config;
  std::map<std::string, std::string> serve_flags;
  CLI::App* serve = app.add_subcommand(
      "serve", "serve local applications (ClassifyRequest over ZeroMQ, see common/edge_api.capnp)");
  cleave::Config::AddFlags(*serve, schema, &serve_config, &serve_flags);

  std::string classify_config;
  std::map<std::string, std::string> classify_flags;
  std::vector<std::string> paths;
  bool json = false;
  int limit = 0;
  CLI::App* classify = app.add_subcommand(
      "classify", "classify image files (PNG, PGM) or IDX files (.gz or raw) once and exit");
  classify->add_option("inputs", paths, "image or IDX files")->required();
  classify->add_flag("--json", json, "print one JSON object per input");
  classify->add_option("--limit", limit, "classify at most this many images (0 = all)");
  cleave::Config::AddFlags(*classify, schema, &classify_config, &classify_flags);
  CLI::App* generate = cleave::edge::AddGenerateCommand(app);
  CLI11_PARSE(app, argc, argv);
  if (generate->parsed()) return 0;  // its callback ran (failures exit through CLI11_PARSE)

  if (serve->parsed()) {
    auto config = LoadConfig(schema, serve_config, serve_flags);
    if (!config.ok()) return Fail(config.status());
    return Serve(std::move(config).value());
  }
  auto config = LoadConfig(schema, classify_config, classify_flags);
  if (!config.ok()) return Fail(config.status());
  auto loaded = LoadEngine(std::move(config).value());
  if (!loaded.ok()) return Fail(loaded.status());
  return Classify(*loaded, paths, json, limit);
}
