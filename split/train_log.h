// Small helpers the training stages share for their progress lines and timings.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>

namespace cleave::split {

// Writes `line` and a newline to `out` (nothing when null) and flushes it, so a progress line
// shows at once even when stderr is a pipe.
inline void LogLine(std::FILE* out, const std::string& line) {
  if (out == nullptr) return;
  std::fprintf(out, "%s\n", line.c_str());
  std::fflush(out);
}

// Seconds of wall time since `start`.
inline double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace cleave::split
