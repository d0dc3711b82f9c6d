#include "tools/daemon_launcher.h"

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "common/file_util.h"

namespace cleave::tools {

std::filesystem::path SelfBinaryDir() {
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::current_path() : self.parent_path();
}

Result<LaunchedDaemon> LaunchDaemon(const std::filesystem::path& binary,
                                    std::vector<std::string> args, const std::string& ready_key,
                                    const std::filesystem::path& work_dir, const std::string& name,
                                    int timeout_ms) {
  std::error_code ec;
  std::filesystem::create_directories(work_dir, ec);
  if (!std::filesystem::exists(binary)) {
    return Status::NotFound(binary.string() + " does not exist (build it: cmake --build build)");
  }
  const std::filesystem::path ready = work_dir / (name + ".ready");
  std::filesystem::remove(ready, ec);
  LaunchedDaemon daemon;
  daemon.log_path = work_dir / (name + ".log");
  std::vector<std::string> argv = {binary.string()};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back("--" + ready_key);
  argv.push_back(ready.string());
  CLEAVE_ASSIGN_OR_RETURN(daemon.process, ChildProcess::Spawn(argv, daemon.log_path.string()));
  Result<std::string> contents = WaitForFile(ready.string(), timeout_ms, daemon.process.get());
  if (!contents.ok()) {
    std::string tail;
    if (auto log = ReadFileToString(daemon.log_path); log.ok()) {
      tail = log->size() > 2000 ? log->substr(log->size() - 2000) : *log;
    }
    return Status(contents.status().code(),
                  name + " did not become ready: " + contents.status().message() + "\n--- " +
                      daemon.log_path.string() + " ---\n" + tail);
  }
  try {
    const nlohmann::json ready = nlohmann::json::parse(*contents);
    daemon.endpoint = ready.at("endpoint").get<std::string>();
    daemon.admin_url = ready.value("admin", std::string());
  } catch (const nlohmann::json::exception& e) {
    return Status::DataLoss(name + " wrote an unreadable ready file: " + e.what());
  }
  return daemon;
}

}  // namespace cleave::tools
