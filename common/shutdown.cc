#include "common/shutdown.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <mutex>
#include <thread>

namespace cleave {
namespace {

static_assert(std::atomic<bool>::is_always_lock_free, "signal handler needs a lock-free flag");
static_assert(std::atomic<int>::is_always_lock_free, "signal handler needs a lock-free fd");

std::atomic<bool> g_requested{false};
static_assert(std::atomic<unsigned long>::is_always_lock_free, "SIGHUP needs a lock-free counter");
std::atomic<unsigned long> g_reloads{0};

extern "C" void HandleReloadSignal(int /*sig*/) { g_reloads.fetch_add(1); }
std::atomic<int> g_wake_read_fd{-1};
std::atomic<int> g_wake_write_fd{-1};
std::once_flag g_pipe_once;

void CreateWakePipe() {
  int fds[2];
  // Only fails when the process is out of descriptors; waiters then fall back to polling the
  // flag (see WaitForShutdown), so shutdown still works, just less promptly.
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return;
  g_wake_read_fd.store(fds[0]);
  g_wake_write_fd.store(fds[1]);
}

void EnsureWakePipe() { std::call_once(g_pipe_once, CreateWakePipe); }

// Async-signal-safe: atomics and write(2) only. The pipe is non-blocking, so a full pipe
// (already readable anyway) cannot block a handler.
void MarkRequested() {
  g_requested.store(true);
  const int fd = g_wake_write_fd.load();
  if (fd >= 0) {
    const char byte = 1;
    ssize_t ignored = write(fd, &byte, 1);
    (void)ignored;
  }
}

extern "C" void HandleShutdownSignal(int /*sig*/) {
  const int saved_errno = errno;
  MarkRequested();
  errno = saved_errno;
}

}  // namespace

void InstallShutdownHandlers() {
  EnsureWakePipe();  // before the handler can run, so it always sees the write end
  struct sigaction action = {};
  action.sa_handler = HandleShutdownSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  struct sigaction reload = {};
  reload.sa_handler = HandleReloadSignal;
  sigemptyset(&reload.sa_mask);
  reload.sa_flags = SA_RESTART;
  sigaction(SIGHUP, &reload, nullptr);

  struct sigaction ignore = {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  sigaction(SIGPIPE, &ignore, nullptr);
}

bool ShutdownRequested() { return g_requested.load(); }

unsigned long ReloadGeneration() { return g_reloads.load(); }

void RequestReload() { g_reloads.fetch_add(1); }

void RequestShutdown() {
  EnsureWakePipe();
  MarkRequested();
}

bool WaitForShutdown(int timeout_ms) {
  EnsureWakePipe();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!g_requested.load()) {
    int wait_ms = -1;
    if (timeout_ms >= 0) {
      const auto left = deadline - std::chrono::steady_clock::now();
      if (left <= std::chrono::steady_clock::duration::zero()) return false;
      wait_ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(left).count());
    }
    const int fd = g_wake_read_fd.load();
    if (fd < 0) {  // no wake pipe: check the flag every few milliseconds
      if (wait_ms < 0 || wait_ms > 5) wait_ms = 5;
      std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
      continue;
    }
    pollfd item{fd, POLLIN, 0};
    const int rc = poll(&item, 1, wait_ms);
    if (rc < 0 && errno != EINTR) return g_requested.load();
    if (rc > 0 && !g_requested.load()) {
      // A byte left over from before a ResetShutdownForTesting; drop it and keep waiting.
      char drain[64];
      while (read(item.fd, drain, sizeof(drain)) > 0) {
      }
    }
  }
  return true;
}

int ShutdownWakeFd() {
  EnsureWakePipe();
  return g_wake_read_fd.load();
}

void ResetShutdownForTesting() {
  EnsureWakePipe();
  g_requested.store(false);
  const int fd = g_wake_read_fd.load();
  char drain[64];
  while (fd >= 0 && read(fd, drain, sizeof(drain)) > 0) {
  }
}

}  // namespace cleave
