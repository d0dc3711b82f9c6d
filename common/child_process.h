// Child processes for benchmarks, the demo and integration tests that run daemons for real.
//
// A ChildProcess owns one spawned process and guarantees it is reaped: the destructor stops
// a child that is still running (SIGTERM, up to 2 s grace, then SIGKILL) and waits for it,
// so no zombie or stray daemon outlives the owner. The child gets a clean slate: stdin from
// /dev/null, no inherited file descriptors other than 0-2, default signal dispositions (a
// parent that ignores SIGPIPE does not pass that on) and an empty signal mask.
//
// Threads: a ChildProcess is not thread-safe; one thread at a time uses it. Different
// ChildProcess objects may be used concurrently. Only this object reaps its pid
// (waitpid(pid)), so other code may keep its own children.
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace cleave {

class ChildProcess {
 public:
  // Starts argv[0] (searched in PATH when it has no '/') with argv as arguments and the
  // current environment. stdout and stderr are appended to `log_path` (created if missing);
  // empty log_path = inherit ours. Errors: InvalidArgument for an empty argv, NotFound when
  // the binary does not exist, IoError for anything else (naming the binary or log file).
  static Result<std::unique_ptr<ChildProcess>> Spawn(const std::vector<std::string>& argv,
                                                     const std::string& log_path);
  // Stops and reaps the child if it is still running (see Stop with a 2 s grace).
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  // The program as spawned (argv[0]), for messages.
  const std::string& name() const { return name_; }

  // True until the child has exited; reaps it (without blocking) when it has.
  bool Running();

  // Sends `sig`. FailedPrecondition once the child has been reaped (its pid may belong to
  // someone else by then); IoError if kill(2) fails.
  Status Signal(int sig);

  // Waits up to timeout_ms (-1 = forever) for the child to exit and reaps it. Returns its
  // exit code, or 128 + signal number if a signal ended it (the shell convention). Calling
  // it again after the child has been reaped returns the same value. DeadlineExceeded if it
  // is still running at the deadline.
  Result<int> Wait(int timeout_ms);

  // SIGTERM, wait up to grace_ms, then SIGKILL and wait. Returns the exit code as Wait does
  // (128 + 9 when it had to be killed). Harmless on a child that already exited.
  Result<int> Stop(int grace_ms);

 private:
  ChildProcess(pid_t pid, std::string name) : pid_(pid), name_(std::move(name)) {}
  // waitpid once; records the exit code when the child is gone. `block` waits for it.
  Status Reap(bool block);

  pid_t pid_;
  std::string name_;
  std::optional<int> exit_code_;  // set once reaped
};

// Polls until `path` exists and is non-empty, then returns its contents. Daemons write their
// "ready file" atomically (temp file + rename) once bound, so a non-empty file is complete.
// DeadlineExceeded after timeout_ms (-1 = wait forever). When `watched` is given and that process
// exits first, fails at once with Unavailable naming its exit code, instead of waiting out the
// timeout.
Result<std::string> WaitForFile(const std::string& path, int timeout_ms,
                                ChildProcess* watched = nullptr);

}  // namespace cleave
