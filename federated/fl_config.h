// Configuration keys shared by `cleave sim` and `cleave-aggregator`: how rounds sample and
// wait ([round]), what clients are told to do ([fit]) and how updates are combined
// ([strategy]). One definition, so the simulator and the service read the same file.
#pragma once

#include "common/config.h"
#include "common/status.h"
#include "federated/round_engine.h"
#include "federated/strategy.h"

namespace cleave::federated {

// Adds the round.*, fit.* and strategy.* keys (with defaults and help) to `s`.
void AddRoundConfigKeys(ConfigSchema& s);
// Reads those keys into `engine` (all but seed and split_after) and `strategy`. Validation
// is left to the callers' Validate (InvalidArgument only for an unknown trainable set).
Status ReadRoundConfigKeys(const Config& c, EngineOptions& engine, StrategyConfig& strategy);

}  // namespace cleave::federated
