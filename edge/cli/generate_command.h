// `cleave-edge generate`: text generation with hard-token routing (edge/lm_router.h) from
// an lm-split bundle, streaming each byte as it is produced. The cloud link is a ZeroMQ
// DEALER to cleave-cloud serving the same bundle; without one (or while it is unreachable)
// generation continues on the edge alone and the run is reported degraded.
// Part of the cleave-edge executable (edge/cli/): the library parses no argv.
#pragma once

#include <CLI/CLI.hpp>

namespace cleave::edge {

// Adds the `generate` subcommand to cleave-edge's `app`; returns it so main can tell
// whether it ran (its callback does the work and throws CLI::RuntimeError(1) on failure).
CLI::App* AddGenerateCommand(CLI::App& app);

}  // namespace cleave::edge
