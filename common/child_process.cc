#include "common/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

extern char** environ;

namespace cleave {
namespace {

std::string ErrnoText(int error) { return std::strerror(error); }

// Owns a posix_spawn_file_actions_t / posix_spawnattr_t for the length of one Spawn.
class SpawnSetup {
 public:
  SpawnSetup() {
    actions_ok_ = posix_spawn_file_actions_init(&actions_) == 0;
    attr_ok_ = posix_spawnattr_init(&attr_) == 0;
  }
  ~SpawnSetup() {
    if (actions_ok_) posix_spawn_file_actions_destroy(&actions_);
    if (attr_ok_) posix_spawnattr_destroy(&attr_);
  }
  SpawnSetup(const SpawnSetup&) = delete;
  SpawnSetup& operator=(const SpawnSetup&) = delete;

  bool ok() const { return actions_ok_ && attr_ok_; }
  posix_spawn_file_actions_t* actions() { return &actions_; }
  posix_spawnattr_t* attr() { return &attr_; }

 private:
  posix_spawn_file_actions_t actions_;
  posix_spawnattr_t attr_;
  bool actions_ok_ = false;
  bool attr_ok_ = false;
};

// Closes a descriptor on scope exit.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ~ScopedFd() {
    if (fd_ >= 0) close(fd_);
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;  // stopped/continued: not reported by the waitpid flags used here
}

Result<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::IoError("cannot read " + path + ": " + ErrnoText(errno));
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

}  // namespace

Result<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(const std::vector<std::string>& argv,
                                                          const std::string& log_path) {
  if (argv.empty() || argv[0].empty()) {
    return Status::InvalidArgument("cannot spawn a process: argv is empty");
  }
  SpawnSetup setup;
  if (!setup.ok()) return Status::IoError("cannot initialise posix_spawn attributes");

  // The log descriptor is opened O_CLOEXEC here and dup2'ed onto 1 and 2 in the child only.
  // It must not itself be 0-2 (possible if ours are closed): dup2(fd, fd) keeps CLOEXEC.
  int log_fd = -1;
  if (!log_path.empty()) {
    log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) {
      return Status::IoError("cannot open log file " + log_path + ": " + ErrnoText(errno));
    }
    if (log_fd <= STDERR_FILENO) {
      const int moved = fcntl(log_fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
      const int saved_errno = errno;
      close(log_fd);
      if (moved < 0) {
        return Status::IoError("cannot open log file " + log_path + ": " + ErrnoText(saved_errno));
      }
      log_fd = moved;
    }
  }
  ScopedFd log_closer(log_fd);

  int rc =
      posix_spawn_file_actions_addopen(setup.actions(), STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  if (rc == 0 && log_fd >= 0) {
    rc = posix_spawn_file_actions_adddup2(setup.actions(), log_fd, STDOUT_FILENO);
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(setup.actions(), log_fd, STDERR_FILENO);
  }
  // Descriptors opened without O_CLOEXEC by any library must not leak into the daemon.
  if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(setup.actions(), STDERR_FILENO + 1);

  // Ignored signals survive exec; reset every disposition and unblock everything.
  sigset_t all_signals;
  sigset_t no_signals;
  sigfillset(&all_signals);
  sigemptyset(&no_signals);
  if (rc == 0) rc = posix_spawnattr_setsigdefault(setup.attr(), &all_signals);
  if (rc == 0) rc = posix_spawnattr_setsigmask(setup.attr(), &no_signals);
  if (rc == 0)
    rc = posix_spawnattr_setflags(setup.attr(), POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  if (rc != 0) return Status::IoError("cannot prepare to spawn " + argv[0] + ": " + ErrnoText(rc));

  std::vector<char*> c_argv;
  c_argv.reserve(argv.size() + 1);
  for (const std::string& arg : argv) c_argv.push_back(const_cast<char*>(arg.c_str()));
  c_argv.push_back(nullptr);

  // glibc's posix_spawn reports exec failures (missing binary, no permission) as its result.
  pid_t pid = -1;
  rc = posix_spawnp(&pid, argv[0].c_str(), setup.actions(), setup.attr(), c_argv.data(), environ);
  if (rc == ENOENT) {
    return Status::NotFound("cannot start " + argv[0] + ": " + ErrnoText(rc) +
                            " (check the path, or PATH for a bare name)");
  }
  if (rc != 0) return Status::IoError("cannot start " + argv[0] + ": " + ErrnoText(rc));
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, argv[0]));
}

ChildProcess::~ChildProcess() {
  if (!exit_code_) (void)Stop(/*grace_ms=*/2000);
}

Status ChildProcess::Reap(bool block) {
  if (exit_code_) return Status::Ok();
  while (true) {
    int status = 0;
    const pid_t rc = waitpid(pid_, &status, block ? 0 : WNOHANG);
    if (rc == pid_) {
      exit_code_ = DecodeWaitStatus(status);
      return Status::Ok();
    }
    if (rc == 0) return Status::Ok();  // still running
    if (errno == EINTR) continue;
    // ECHILD: someone else reaped it (e.g. SIGCHLD set to SIG_IGN); it is gone either way.
    const int saved_errno = errno;
    exit_code_ = -1;
    return Status::Internal("cannot reap " + name_ + " (pid " + std::to_string(pid_) +
                            "): " + ErrnoText(saved_errno) + "; was SIGCHLD ignored?");
  }
}

bool ChildProcess::Running() {
  (void)Reap(/*block=*/false);
  return !exit_code_;
}

Status ChildProcess::Signal(int sig) {
  CLEAVE_RETURN_IF_ERROR(Reap(/*block=*/false));
  if (exit_code_) {
    return Status::FailedPrecondition("cannot signal " + name_ + " (pid " + std::to_string(pid_) +
                                      "): it has already exited");
  }
  if (kill(pid_, sig) != 0) {
    return Status::IoError("cannot send signal " + std::to_string(sig) + " to " + name_ + " (pid " +
                           std::to_string(pid_) + "): " + ErrnoText(errno));
  }
  return Status::Ok();
}

Result<int> ChildProcess::Wait(int timeout_ms) {
  if (timeout_ms < 0) {
    CLEAVE_RETURN_IF_ERROR(Reap(/*block=*/true));
    return *exit_code_;
  }
  // waitpid has no timeout; poll with a short, growing interval (exits are rare events).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  auto interval = std::chrono::milliseconds(1);
  while (true) {
    CLEAVE_RETURN_IF_ERROR(Reap(/*block=*/false));
    if (exit_code_) return *exit_code_;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) break;
    std::this_thread::sleep_for(
        std::min<std::chrono::steady_clock::duration>(interval, deadline - now));
    interval = std::min(interval * 2, std::chrono::milliseconds(20));
  }
  return Status::DeadlineExceeded(name_ + " (pid " + std::to_string(pid_) +
                                  ") still running after " + std::to_string(timeout_ms) + " ms");
}

Result<int> ChildProcess::Stop(int grace_ms) {
  if (!Running()) return *exit_code_;
  const Status signalled = Signal(SIGTERM);
  if (!signalled.ok()) {
    if (exit_code_) return *exit_code_;  // it exited just before the signal
    return signalled;
  }
  Result<int> code = Wait(grace_ms);
  if (code.ok()) return code;
  // Ignoring SIGTERM or stuck: SIGKILL cannot be refused. The child may exit in between,
  // which Signal reports as FailedPrecondition; Wait then returns its code either way.
  (void)Signal(SIGKILL);
  return Wait(-1);
}

Result<std::string> WaitForFile(const std::string& path, int timeout_ms, ChildProcess* watched) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    // Look at the child before the file: a child that writes the file and exits at once
    // must count as ready, not as "exited first".
    const bool exited = watched != nullptr && !watched->Running();
    struct stat info;
    if (stat(path.c_str(), &info) == 0 && info.st_size > 0) {
      CLEAVE_ASSIGN_OR_RETURN(std::string contents, ReadWholeFile(path));
      if (!contents.empty()) return contents;
    }
    if (exited) {
      Result<int> code = watched->Wait(0);
      return Status::Unavailable(watched->name() + " (pid " + std::to_string(watched->pid()) +
                                 ") exited with code " +
                                 (code.ok() ? std::to_string(*code) : code.status().ToString()) +
                                 " before writing " + path + "; see its log");
    }
    if (timeout_ms >= 0 && std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return Status::DeadlineExceeded(path + " did not appear (non-empty) within " +
                                  std::to_string(timeout_ms) + " ms");
}

}  // namespace cleave
