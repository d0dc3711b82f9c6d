// Test support: waits on a daemon's log file (a condition wait with a deadline, never a fixed
// sleep) for the first line containing a piece of text.
#pragma once

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

namespace cleave::testing {

// Polls `path` until a line contains `needle`; returns that line, or nullopt once
// `timeout_ms` has passed.
inline std::optional<std::string> WaitForLogLine(const std::filesystem::path& path,
                                                 const std::string& needle, int timeout_ms) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      if (line.find(needle) != std::string::npos) return line;
    }
    if (std::chrono::steady_clock::now() >= until) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace cleave::testing
