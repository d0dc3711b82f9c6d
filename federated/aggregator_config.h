// The cleave-aggregator configuration: its schema (every key of the TOML file, each also a
// flag) and the start-up steps that read it.
#pragma once

#include "common/config.h"
#include "common/status.h"
#include "federated/aggregator_service.h"

namespace cleave::federated {

// Every key cleave-aggregator accepts (aggregator.*, the round keys of fl_config.h, log.level),
// with defaults and help texts.
ConfigSchema AggregatorSchema();

// The model the rounds train: exactly one of aggregator.bundle (its fp32 weights; signature
// checked against the trusted key, if any) and aggregator.model (a built-in network or a
// model spec file, ModelSpecByName, seeded by aggregator.seed), else InvalidArgument; plus
// the evaluation set of
// aggregator.eval_data_dir (first aggregator.eval_limit images), if given. A bundle or data set
// that cannot be read is the error of its loader.
Result<AggregatorModel> LoadAggregatorModel(const Config& config);

// What the rounds run with: the round keys (fl_config.h) and the aggregator.* keys, and the
// Ed25519 secret key read from aggregator.signing_key (its read error, with the key's name).
// `metrics`, `socket_configure` and `curve_client_ids` are left for the caller.
Result<AggregatorOptions> AggregatorOptionsFromConfig(const Config& config);

}  // namespace cleave::federated
