// Graceful shutdown for daemons: SIGINT/SIGTERM set a process-wide flag and wake waiters.
//
// The signal handler is async-signal-safe: it only stores to a lock-free atomic and writes
// one byte to a self-pipe. The pipe's read end (ShutdownWakeFd) becomes readable once
// shutdown is requested and stays readable, so any number of poll loops - including
// zmq_poll next to sockets - wake up and see it. The request is sticky: nothing un-requests
// it except ResetShutdownForTesting.
//
// Threads: every function may be called from any thread at any time.
#pragma once

namespace cleave {

// Installs SIGINT/SIGTERM handlers that call RequestShutdown's signal-safe core, and ignores
// SIGPIPE (a peer closing a socket must be an error return, not a dead daemon). Idempotent.
// Handlers use SA_RESTART; the wake fd (not EINTR) is how loops notice shutdown.
void InstallShutdownHandlers();

// True once SIGINT/SIGTERM arrived or RequestShutdown was called.
bool ShutdownRequested();

// Requests shutdown from inside the process (tests, an admin endpoint, a fatal error).
void RequestShutdown();

// Waits up to timeout_ms (0 = check, -1 = forever) for a shutdown request. True if one was
// made (possibly before the call), false on timeout.
bool WaitForShutdown(int timeout_ms);

// A descriptor that is readable once shutdown is requested, for poll()/zmq_poll loops
// (zmq_pollitem_t{nullptr, ShutdownWakeFd(), ZMQ_POLLIN, 0}). Do not read from or close it.
// -1 only if the process was out of descriptors when it was first needed (poll ignores a
// negative fd, so such loops must also check ShutdownRequested() after each wake-up).
int ShutdownWakeFd();

// Reload requests (SIGHUP): InstallShutdownHandlers also counts SIGHUPs. Components that
// re-read files on request (the CURVE allow list) remember the generation they last saw and
// reload when it moves. Never wakes shutdown waiters.
unsigned long ReloadGeneration();
// Counts a reload request from inside the process (tests, an admin endpoint).
void RequestReload();

// Clears the request so the next test starts clean. Tests only: a daemon never un-shuts.
void ResetShutdownForTesting();

}  // namespace cleave
