// Configuration keys shared by `cleave sim` and `cleave-aggregator`: how rounds sample and
// wait ([round]), what clients are told to do ([fit]), how updates travel ([compression]) and
// how they are combined ([strategy], [secure_aggregation]). One definition, so the simulator
// and the service read the same file.
#pragma once

#include "common/config.h"
#include "common/status.h"
#include "federated/round_engine.h"
#include "federated/strategy.h"
#include "federated/update_compression.h"

namespace cleave::federated {

// Adds the round.*, fit.*, compression.*, strategy.* and secure_aggregation.* keys (with
// defaults and help) to `s`.
void AddRoundConfigKeys(ConfigSchema& s);
// Reads those keys into `engine` (all but seed and split_after), `strategy` and `compression`
// (all but seed). Validation is mostly left to the callers' Validate (SimOptions::Validate,
// AggregatorService::Create); InvalidArgument here for an unknown trainable set and for
// secure-aggregation settings that cannot work.
Status ReadRoundConfigKeys(const Config& c, EngineOptions& engine, StrategyConfig& strategy,
                           CompressionConfig& compression);

}  // namespace cleave::federated
