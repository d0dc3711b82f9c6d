#include "cloud/cloud_config.h"

#include <algorithm>
#include <cstdint>
#include <string>

namespace cleave::cloud {

ConfigSchema CloudSchema() {
  ConfigSchema schema;
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
           "longest the oldest waiting request waits for a fuller batch while another batch is "
           "being computed, in microseconds (0 = compute whatever is waiting at once); an idle "
           "service computes a lone request at once unless cloud.hold_when_idle")
      .Add("cloud.hold_when_idle", ConfigType::kBool, "false",
           "hold requests for cloud.max_queue_delay_us even when no batch is being computed "
           "(fuller batches at the cost of every lone request's latency)")
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

Status CheckCloudConfig(const Config& config) {
  const std::string bundle_dir = config.GetString("cloud.bundle");
  const std::string repository_dir = config.GetString("cloud.model_repository");
  if (bundle_dir.empty() == repository_dir.empty()) {
    return Status::InvalidArgument(
        bundle_dir.empty()
            ? "no model: set exactly one of cloud.bundle (one bundle directory) and "
              "cloud.model_repository (a directory of numbered versions)"
            : "cloud.bundle and cloud.model_repository are both set; set exactly one");
  }
  const int64_t reload_interval_ms = config.GetInt("cloud.reload_interval_ms");
  if (reload_interval_ms < 1) {
    return Status::InvalidArgument("cloud.reload_interval_ms must be >= 1, got " +
                                   std::to_string(reload_interval_ms));
  }
  return Status::Ok();
}

Result<int> CloudWorkers(const Config& config) {
  const int64_t workers = config.GetInt("cloud.workers");
  if (workers < 1 || workers > 256) {
    return Status::InvalidArgument("cloud.workers must be in [1, 256], got " +
                                   std::to_string(workers));
  }
  return static_cast<int>(workers);
}

Result<LmContextOptions> LmContextOptionsFromConfig(const Config& config) {
  LmContextOptions contexts;
  contexts.memory_budget_bytes = config.GetInt("cloud.lm_memory_budget_bytes");
  contexts.idle_ttl_micros = config.GetInt("cloud.lm_session_ttl_seconds") * 1'000'000;
  contexts.max_sessions =
      static_cast<size_t>(std::max<int64_t>(0, config.GetInt("cloud.lm_max_sessions")));
  CLEAVE_RETURN_IF_ERROR(contexts.Validate());
  return contexts;
}

Result<split::CloudModel::Options> CloudModelOptionsFromConfig(const Config& config) {
  auto precision = split::ParseTailPrecision(config.GetString("cloud.precision"));
  if (!precision.ok()) return precision.status().WithContext("cloud.precision");
  split::CloudModel::Options options;
  options.precision = *precision;
  return options;
}

Result<TailServerOptions> TailServerOptionsFromConfig(const Config& config) {
  TailServerOptions options;
  CLEAVE_RETURN_IF_ERROR(ReadServingOptions(config, options));
  CLEAVE_ASSIGN_OR_RETURN(options.workers, CloudWorkers(config));
  options.max_batch = static_cast<int>(config.GetInt("cloud.max_batch"));
  options.max_queue_delay_us = config.GetInt("cloud.max_queue_delay_us");
  options.hold_when_idle = config.GetBool("cloud.hold_when_idle");
  options.intra_op_threads = static_cast<int>(std::max<int64_t>(1, config.GetInt("cloud.threads")));
  return options;
}

}  // namespace cleave::cloud
