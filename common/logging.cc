#include "common/logging.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/dist_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "common/mutex.h"
#include "common/thread_annotations.h"

namespace cleave {
namespace {

constexpr char kPattern[] = "[%Y-%m-%d %H:%M:%S.%e] [%l] [%n] %v";
constexpr char kDefaultComponent[] = "cleave";

std::shared_ptr<spdlog::sinks::sink> MakeStderrSink() {
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();  // colour only on a tty
  sink->set_pattern(kPattern);
  return sink;
}

// All loggers write into `fan_out`; InitLogging swaps what is behind it, so loggers never
// need their sink lists touched while other threads log through them. `fan_out` itself is
// fixed and thread-safe (dist_sink_mt); `mutex` guards the level and the logger map.
struct LoggingState {
  Mutex mutex;
  const std::shared_ptr<spdlog::sinks::dist_sink_mt> fan_out =
      std::make_shared<spdlog::sinks::dist_sink_mt>(
          std::vector<std::shared_ptr<spdlog::sinks::sink>>{MakeStderrSink()});
  spdlog::level::level_enum level GUARDED_BY(mutex) = spdlog::level::info;
  std::map<std::string, std::shared_ptr<spdlog::logger>> loggers GUARDED_BY(mutex);
};

LoggingState& State() {
  // Never destroyed: loggers stay usable from static destructors and late threads.
  static LoggingState* const state = new LoggingState();
  return *state;
}

std::optional<spdlog::level::level_enum> ParseLevel(std::string name) {
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (name == "trace") return spdlog::level::trace;
  if (name == "debug") return spdlog::level::debug;
  if (name == "info") return spdlog::level::info;
  if (name == "warn") return spdlog::level::warn;
  if (name == "error") return spdlog::level::err;
  if (name == "off") return spdlog::level::off;
  return std::nullopt;
}

std::shared_ptr<spdlog::logger> GetLoggerLocked(LoggingState& state, const std::string& component)
    REQUIRES(state.mutex) {
  auto it = state.loggers.find(component);
  if (it != state.loggers.end()) return it->second;
  auto logger = std::make_shared<spdlog::logger>(component, state.fan_out);
  logger->set_level(state.level);
  logger->flush_on(spdlog::level::trace);
  state.loggers.emplace(component, logger);
  return logger;
}

}  // namespace

Status InitLogging(const std::string& level, const std::string& file) {
  const std::optional<spdlog::level::level_enum> parsed = ParseLevel(level);
  if (!parsed) {
    return Status::InvalidArgument("unknown log level '" + level +
                                   "' (expected trace, debug, info, warn, error or off)");
  }
  std::vector<std::shared_ptr<spdlog::sinks::sink>> sinks{MakeStderrSink()};
  if (!file.empty()) {
    try {
      auto file_sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(file, false);
      file_sink->set_pattern(kPattern);
      sinks.push_back(std::move(file_sink));
    } catch (const spdlog::spdlog_ex& e) {
      return Status::IoError("cannot open log file " + file + " (" + e.what() + ")");
    }
  }

  LoggingState& state = State();
  std::shared_ptr<spdlog::logger> default_logger;
  {
    MutexLock lock(&state.mutex);
    state.level = *parsed;
    state.fan_out->set_sinks(std::move(sinks));
    for (auto& entry : state.loggers) entry.second->set_level(*parsed);
    default_logger = GetLoggerLocked(state, kDefaultComponent);
  }
  spdlog::set_default_logger(std::move(default_logger));
  return Status::Ok();
}

std::shared_ptr<spdlog::logger> GetLogger(const std::string& component) {
  LoggingState& state = State();
  MutexLock lock(&state.mutex);
  return GetLoggerLocked(state, component);
}

}  // namespace cleave
