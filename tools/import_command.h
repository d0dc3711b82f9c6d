// `cleave import`: a model trained in PyTorch and exported with TorchScript becomes a split
// bundle (kind torchscript-split) that cleave-edge, cleave-cloud, hot reload, signing and
// `cleave bench split` use unchanged (split/import_pipeline.h):
//   cleave import --torchscript model.pt --split-after NAME --data SPEC --out BUNDLE
// `--list-cuts` prints where the model can be cut and exits. Prints a JSON summary to stdout
// and progress to stderr; errors are one line "cleave import: <error>" and exit status 1.
// Ctrl-C stops between batches and leaves no bundle behind.
#pragma once

#include <CLI/CLI.hpp>

namespace cleave::tools {

// Adds the `import` subcommand to `app`.
void RegisterImportCommand(CLI::App& app);

}  // namespace cleave::tools
