// Starts cleave daemons (cleave-cloud, cleave-edge) as separate processes and waits until
// they serve. Used by `cleave bench`, `cleave demo` and the integration tests, so every
// measurement crosses a real process boundary and a real socket.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/child_process.h"
#include "common/status.h"

namespace cleave::tools {

struct LaunchedDaemon {
  std::unique_ptr<ChildProcess> process;
  std::string endpoint;   // from the daemon's ready file
  std::string admin_url;  // "http://host:port" when the daemon serves an admin port, else ""
  std::filesystem::path log_path;
};

// Directory of the running executable (build/bin), where the daemons are installed beside it.
std::filesystem::path SelfBinaryDir();

// Runs `binary` with `args` plus `--<ready_key> <work_dir>/<name>.ready`, logging to
// `<work_dir>/<name>.log`, and waits up to `timeout_ms` for the ready file. On failure the
// error includes the tail of the daemon's log.
Result<LaunchedDaemon> LaunchDaemon(const std::filesystem::path& binary,
                                    std::vector<std::string> args, const std::string& ready_key,
                                    const std::filesystem::path& work_dir, const std::string& name,
                                    int timeout_ms = 60000);

}  // namespace cleave::tools
