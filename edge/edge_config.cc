#include "edge/edge_config.h"

#include <algorithm>
#include <cstdint>
#include <string>

#include "common/datasets.h"
#include "edge/adaptation.h"
#include "edge/stream_config.h"
#include "split/bundle.h"
#include "split/compute_runtime.h"

namespace cleave::edge {

split::EdgeModel::Options HeadOptions(const Config& config) {
  split::EdgeModel::Options options;
  options.int8 = config.GetBool("edge.int8");
  options.int8_engine = config.GetString("edge.int8_engine");
  return options;
}

ConfigSchema EdgeSchema() {
  ConfigSchema schema;
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
      .Add("edge.max_pending", ConfigType::kInt, "256",
           "requests waiting for the cloud at most; with that many waiting, an input the exit "
           "policy would offload is answered at once by its best local exit, marked degraded")
      .Add("edge.offload_policy", ConfigType::kString, "static",
           "where to compute each input: static (the bundle's calibrated threshold at its "
           "deployment split), slo (the most accurate option of the bundle's split points and "
           "thresholds whose predicted latency at edge.slo_percentile meets edge.slo_ms, from "
           "live link and cloud estimates) or bytes (the most accurate within "
           "edge.max_bytes_per_s of uplink). Every policy answers at the edge what could not "
           "come back from the cloud before its deadline")
      .Add("edge.static_option", ConfigType::kString, "",
           "static policy: the option of the bundle's menu to run instead of the calibrated "
           "one: local (the exits answer everything) or SPLIT:THRESHOLD (e.g. 0:0.9, 1:off for "
           "split point 1 with the exits off); empty = the calibrated threshold at split 0. "
           "The edge logs the menu at start with edge.offload_policy = slo")
      .Add("edge.slo_ms", ConfigType::kDouble, "0",
           "slo policy: the latency objective in milliseconds (> 0)")
      .Add("edge.slo_percentile", ConfigType::kDouble, "0.95",
           "the percentile edge.slo_ms and the deadline guard are predicted at, in (0, 1)")
      .Add("edge.max_bytes_per_s", ConfigType::kDouble, "0",
           "bytes policy: the uplink budget in bytes per second (> 0)")
      .Add("edge.wire_version", ConfigType::kInt, "2",
           "request encoding: 2 (split index, layout tag and coded features only) or 1 (model "
           "name and a self-describing tensor, for cleave-cloud builds older than version 2; "
           "deployment split only)")
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
      .Add("edge.fl_data", ConfigType::kString, "",
           "dataset whose training split holds this edge's local data (fashion-mnist, idx:DIR, "
           "cifar:DIR, folder:DIR, ...), converted to the bundle's input; empty = the bundle's "
           "own dataset")
      .Add("edge.fl_data_dir", ConfigType::kString, "",
           "Fashion-MNIST directory (older form of edge.fl_data fashion-mnist:DIR)")
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
  AddAdaptConfigKeys(schema);
  AddStreamConfigKeys(schema);
  return schema;
}

Status ReadOffloadOptions(const Config& config, EdgeServerOptions& options) {
  auto kind = ParseOffloadPolicyKind(config.GetString("edge.offload_policy"));
  if (!kind.ok()) return kind.status().WithContext("edge.offload_policy");
  options.policy = *kind;
  options.slo_ms = config.GetDouble("edge.slo_ms");
  options.slo_percentile = config.GetDouble("edge.slo_percentile");
  options.max_bytes_per_s = config.GetDouble("edge.max_bytes_per_s");
  options.static_option = config.GetString("edge.static_option");
  if (!options.static_option.empty() && options.policy != OffloadPolicyKind::kStatic) {
    return Status::InvalidArgument(
        "edge.static_option applies to edge.offload_policy = static only");
  }
  if (!(options.slo_percentile > 0 && options.slo_percentile < 1)) {
    return Status::InvalidArgument("edge.slo_percentile must lie in (0, 1), got " +
                                   std::to_string(options.slo_percentile));
  }
  if (options.policy == OffloadPolicyKind::kSlo && !(options.slo_ms > 0)) {
    return Status::InvalidArgument("edge.offload_policy = slo needs edge.slo_ms > 0");
  }
  if (options.policy == OffloadPolicyKind::kBytes && !(options.max_bytes_per_s > 0)) {
    return Status::InvalidArgument("edge.offload_policy = bytes needs edge.max_bytes_per_s > 0");
  }
  const int64_t version = config.GetInt("edge.wire_version");
  if (version != 1 && version != 2) {
    return Status::InvalidArgument("edge.wire_version must be 1 or 2, got " +
                                   std::to_string(version));
  }
  options.wire_version = static_cast<uint16_t>(version);
  return Status::Ok();
}

Result<ServableEngine> LoadConfiguredEngine(const Config& config,
                                            std::unique_ptr<ModelRepository>* repository) {
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
  const int threads = static_cast<int>(std::max<int64_t>(1, config.GetInt("edge.threads")));
  split::SetComputeThreads(threads);
  CLEAVE_RETURN_IF_ERROR(TrustBundleKeyFile(config.GetString("edge.bundle_public_key")));
  if (repo.empty()) return LoadEdgeEngine(dir, HeadOptions(config), /*warm=*/false);
  *repository = std::make_unique<ModelRepository>(repo, HeadOptions(config), threads);
  return (*repository)->LoadFirst();
}

}  // namespace cleave::edge
