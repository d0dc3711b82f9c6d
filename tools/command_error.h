// How a command reports a failure: one line on stderr, then CLI11's exit with status 1.
#pragma once

#include <CLI/CLI.hpp>
#include <iostream>
#include <string>

#include "common/status.h"

namespace cleave::tools {

// Prints "cleave <command>: <status>" and ends the command with exit status 1.
[[noreturn]] inline void Fail(const std::string& command, const Status& status) {
  std::cerr << "cleave " << command << ": " << status.ToString() << "\n";
  throw CLI::RuntimeError(1);
}

}  // namespace cleave::tools
