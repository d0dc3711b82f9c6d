// Round-engine checkpoints on disk: the global model, the strategy's server state and the
// engine's own state (round count, sampler, history), written atomically after every round
// and verified (magic, format version, SHA-256) when read. The aggregator and `cleave sim`
// resume from them after a crash or restart.
#pragma once

#include <filesystem>

#include "common/status.h"
#include "federated/round_engine.h"

namespace cleave::federated {

// Writes `engine`'s state between rounds to `path` (atomically: a crash leaves either the
// previous checkpoint or the new one). FailedPrecondition mid-round.
Status SaveCheckpoint(const std::filesystem::path& path, const RoundEngine& engine);

// Restores `engine` (created with the same options, strategy and model) from `path`.
// NotFound when the file does not exist; DataLoss when it is corrupt or truncated;
// InvalidArgument when it belongs to another model or strategy. The engine is unchanged
// on error.
Status RestoreCheckpoint(const std::filesystem::path& path, RoundEngine& engine);

}  // namespace cleave::federated
