// The streaming keys of cleave-edge (edge.source*, edge.stream_*): a source of frames
// (edge/frame_source.h) fed through the daemon (edge/stream_feeder.h).
#pragma once

#include <optional>

#include "common/config.h"
#include "common/status.h"
#include "edge/frame_source.h"
#include "edge/stream_feeder.h"

namespace cleave::edge {

// What edge.source* / edge.stream_* ask for; StreamFeederOptions::daemon and ::metrics are
// left for the caller (they come from the running server).
struct StreamSetup {
  SourceSpec spec;
  FrameSourceOptions source;
  StreamFeederOptions feeder;
};

// Adds the keys to `schema`.
void AddStreamConfigKeys(ConfigSchema& schema);

// nullopt when edge.source is empty (no stream). InvalidArgument naming the key for any bad
// value (unknown source scheme, format, policy, window out of range, ...), so the daemon
// refuses to start before it loads a model.
Result<std::optional<StreamSetup>> StreamSetupFromConfig(const Config& config);

}  // namespace cleave::edge
