// The cleave-edge configuration: its schema (every key of the TOML file, each also a flag)
// and the start-up steps that read it to choose and load the head that serves.
#pragma once

#include <memory>

#include "common/config.h"
#include "common/status.h"
#include "edge/edge_server.h"
#include "edge/model_repository.h"

namespace cleave::edge {

// The head options edge.int8 and edge.int8_engine give.
split::EdgeModel::Options HeadOptions(const Config& config);

// Every key cleave-edge accepts (edge.*, log.level), with defaults and help texts.
ConfigSchema EdgeSchema();

// edge.offload_policy, edge.static_option, edge.slo_ms, edge.slo_percentile,
// edge.max_bytes_per_s and edge.wire_version into `options`. InvalidArgument naming the key for
// a value out of range or a policy without what it needs (slo without edge.slo_ms > 0, bytes
// without edge.max_bytes_per_s > 0, edge.static_option with another policy than static).
// Whether the bundle's menu has the static option is checked when the server starts.
Status ReadOffloadOptions(const Config& config, EdgeServerOptions& options);

// The head `config` names: edge.bundle, or (with `repository` non-null) the highest version
// of edge.model_repository, for which *repository is set to the repository that keeps
// watching it. Sets the libtorch threads (edge.threads) and the trusted bundle key
// (edge.bundle_public_key) first, so every bundle loads verified. InvalidArgument unless
// exactly one of the two keys is set (or a repository without `repository`); the errors of
// LoadEdgeEngine and ModelRepository::LoadFirst. Not warmed.
Result<ServableEngine> LoadConfiguredEngine(const Config& config,
                                            std::unique_ptr<ModelRepository>* repository);

}  // namespace cleave::edge
