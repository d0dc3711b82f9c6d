// `cleave-edge classify`: a one-shot run of the edge's serving path over image files (PNG,
// PGM) or IDX files - head and exits here, hard inputs to edge.cloud when set, degraded
// answers when the cloud does not answer - printing one line (or JSON object) per image.
#pragma once

#include <string>
#include <vector>

#include "common/cli/daemon.h"
#include "common/config.h"
#include "common/status.h"

namespace cleave::edge {

struct ClassifyArgs {
  std::vector<std::string> paths;  // image or IDX files
  bool json = false;               // one JSON object per input instead of a text line
  int limit = 0;                   // classify at most this many images (0 = all)
};

// Loads the bundle `config` names (edge.bundle; see LoadConfiguredEngine) and classifies
// every image of `args.paths`. InvalidArgument for an image whose size is not the model's;
// the errors of reading the files, loading the bundle and reaching the cloud.
Status Classify(const Config& config, const ClassifyArgs& args);

// Adds the `classify` subcommand (its inputs, --json, --limit, then the flags of `schema`,
// the cleave-edge schema) to `cli`; when given, Classify runs.
void AddClassifyCommand(cli::DaemonCli& cli, const ConfigSchema& schema);

}  // namespace cleave::edge
