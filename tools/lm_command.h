// `cleave train-lm --out DIR`: trains the split byte-level language model on the fortunes
// corpus (common/text_corpus.h), calibrates its routing threshold on a slice of text it did
// not train on and writes an "lm-split" bundle (split/lm_train.h). Prints a JSON summary to
// stdout and progress to stderr; errors are one line "cleave train-lm: <error>" and exit
// status 1. Ctrl-C stops between steps and leaves no bundle behind.
#pragma once

#include <CLI/CLI.hpp>

namespace cleave::tools {

void RegisterLmCommands(CLI::App& app);

}  // namespace cleave::tools
