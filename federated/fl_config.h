// Configuration keys shared by `cleave sim` and `cleave-aggregator`: how rounds sample and
// wait ([round]), what clients are told to do ([fit]), how updates travel ([compression]) and
// how they are combined ([strategy], [secure_aggregation]). One definition, so the simulator
// and the service read the same file.
#pragma once

#include "common/config.h"
#include "common/status.h"
#include "federated/continual.h"
#include "federated/continual_stream.h"
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

// The continual-learning strategy keys, each `prefix` + name ("continual." for `cleave sim`,
// "edge.adapt_" for the edge daemon): strategy, buffer_size, class_balanced, replay_batch,
// ewc_lambda, ewc_gamma, lwf_alpha, lwf_temperature, derpp_alpha, derpp_beta,
// kd_temperature, with the values of `defaults` as defaults.
void AddContinualConfigKeys(ConfigSchema& s, const std::string& prefix,
                            const ContinualConfig& defaults = ContinualConfig());
// Reads them (validated; InvalidArgument names the key's prefix).
Result<ContinualConfig> ReadContinualConfigKeys(const Config& c, const std::string& prefix);

// continual.enabled, continual.scenario, continual.experiences and the strategy keys above
// under "continual." (cleave sim and cleave-aggregator). `rounds_key` names the rounds the
// experiences spread over; `keeps_state` says where the clients' strategy state lives.
void AddContinualStreamKeys(ConfigSchema& s, const std::string& rounds_key,
                            const std::string& keeps_state);
// Reads them (not checked against the rounds: ContinualStreamOptions::Validate does that).
Result<ContinualStreamOptions> ReadContinualStreamKeys(const Config& c);

}  // namespace cleave::federated
