// CLI11 subcommands of the `cleave` tool for the ML side:
//   cleave train --out DIR [...]   train teacher + split model, write a vision-split bundle
//   cleave split --bundle DIR [...] re-quantize (wire dtype, int8 head) and re-calibrate the
//                                   exits of an existing bundle, in place or to --out
// Both print a JSON summary to stdout and progress to stderr. On failure they print one line
// "cleave <cmd>: <error>" to stderr and throw CLI::RuntimeError(1), which CLI11_PARSE / App::exit
// turn into exit status 1 without further output. Ctrl-C stops training between batches
// and leaves no bundle behind (common/shutdown.h handlers are installed by the command).
#pragma once

#include <CLI/CLI.hpp>

namespace cleave::tools {

// Adds the `train` and `split` subcommands to `app`. The option storage is owned by the
// callbacks, so `app` may outlive this call's scope.
void RegisterTrainCommands(CLI::App& app);

}  // namespace cleave::tools
