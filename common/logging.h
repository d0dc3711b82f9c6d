// Logging set-up on top of spdlog: one place decides where logs go and how they look.
//
// Every component logs through GetLogger("<component>"); lines read
// "[2024-05-01 12:00:00.123] [info] [edge] message". All loggers share one set of sinks
// (stderr, plus a file if configured), so InitLogging may run before or after loggers are
// created and every logger follows it. Each line is flushed as it is written, so a crash
// never eats the last lines: log per event, not per tensor element.
//
// Threads: all functions may be called concurrently; loggers are thread-safe (spdlog _mt).
#pragma once

#include <memory>
#include <string>

#include <spdlog/logger.h>

#include "common/status.h"

namespace cleave {

// Sets the level of every logger (existing and future) and the sinks: stderr, and also
// `file` (appended to, created if missing) when non-empty. Also makes spdlog's default
// logger (spdlog::info(...)) component "cleave" with the same sinks. Levels: trace, debug,
// info, warn, error, off (case-insensitive). InvalidArgument for any other level, IoError
// when the file cannot be opened; on error nothing changes.
Status InitLogging(const std::string& level, const std::string& file = "");

// The logger for `component`, created on first use (level info and stderr until
// InitLogging says otherwise). Always returns the same logger for the same name. Never null.
std::shared_ptr<spdlog::logger> GetLogger(const std::string& component);

}  // namespace cleave
