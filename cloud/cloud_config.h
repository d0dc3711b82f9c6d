// The cleave-cloud configuration: its schema (every key of the TOML file, each also a flag)
// and the start-up steps that read it.
#pragma once

#include <cstdint>
#include <string>

#include "cloud/lm_context.h"
#include "cloud/tail_server.h"
#include "common/config.h"
#include "common/status.h"
#include "split/split_runtime.h"

namespace cleave::cloud {

// Every key cleave-cloud accepts (cloud.*, log.level), with defaults and help texts.
ConfigSchema CloudSchema();

// What can be checked before anything loads or binds: exactly one of cloud.bundle and
// cloud.model_repository, cloud.reload_interval_ms >= 1. InvalidArgument naming the key.
Status CheckCloudConfig(const Config& config);

// cloud.workers, in [1, 256] (InvalidArgument otherwise).
Result<int> CloudWorkers(const Config& config);

// The LM session limits (cloud.lm_*), validated (LmContextOptions::Validate).
Result<LmContextOptions> LmContextOptionsFromConfig(const Config& config);

// How the vision tails compute: cloud.precision (fp32, bf16 or auto; InvalidArgument naming
// the key otherwise).
Result<split::CloudModel::Options> CloudModelOptionsFromConfig(const Config& config);

// The vision tail server's options from the cloud.* keys: what ReadServingOptions reads, plus
// cloud.max_batch, cloud.max_queue_delay_us, cloud.threads (at least 1) and cloud.workers
// (CloudWorkers). Metrics and the model version are the caller's.
Result<TailServerOptions> TailServerOptionsFromConfig(const Config& config);

// Reads what every cleave-cloud server takes alike - cloud.listen, cloud.max_message_bytes,
// cloud.max_queue (>= 1, else InvalidArgument) and cloud.max_queue_wait_us - into
// `options`, a TailServerOptions or an LmServerOptions.
template <typename ServerOptions>
Status ReadServingOptions(const Config& config, ServerOptions& options) {
  const int64_t max_queue = config.GetInt("cloud.max_queue");
  if (max_queue < 1) {
    return Status::InvalidArgument("cloud.max_queue must be >= 1, got " +
                                   std::to_string(max_queue));
  }
  options.listen = config.GetString("cloud.listen");
  options.socket.max_message_bytes = config.GetInt("cloud.max_message_bytes");
  options.max_queue = static_cast<size_t>(max_queue);
  options.max_queue_wait_us = config.GetInt("cloud.max_queue_wait_us");
  return Status::Ok();
}

}  // namespace cleave::cloud
