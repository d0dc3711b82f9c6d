// ReplyMailbox: how compute threads hand replies to the one thread that owns a ROUTER socket
// (ZeroMQ sockets are not thread-safe, so workers never send).
//
// A mutex-protected queue plus an eventfd that is readable while replies wait, so the socket
// thread polls the fd together with its socket and wakes for either. Only a post onto an empty
// queue writes the eventfd (one system call per wake-up, not per reply), and PostAll hands over
// a batch's replies under one lock. Post and PostAll are safe from any thread; TakeAll and fd
// belong to the socket thread. Used by TailServer (vision) and LmServer,
// whose socket threads wait with WaitForRequestsOrReplies.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "common/mutex.h"
#include "common/status.h"
#include "common/transport.h"

namespace cleave::cloud {

template <typename T>
class ReplyMailbox {
 public:
  ReplyMailbox() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~ReplyMailbox() {
    if (fd_ >= 0) ::close(fd_);
  }
  ReplyMailbox(const ReplyMailbox&) = delete;
  ReplyMailbox& operator=(const ReplyMailbox&) = delete;

  // -1 if the eventfd could not be created (errno says why); the owner must refuse to start.
  int fd() const { return fd_; }

  // Queues `item` and makes fd() readable. Any thread.
  void Post(T item) EXCLUDES(mu_) {
    bool was_empty = false;
    {
      MutexLock lock(&mu_);
      was_empty = items_.empty();
      items_.push_back(std::move(item));
    }
    if (was_empty) Signal();
  }

  // Queues every item of `items` (moved from, then cleared) in order, with one lock and at
  // most one wake-up: what a compute thread does with the replies of a batch. Any thread.
  void PostAll(std::vector<T>& items) EXCLUDES(mu_) {
    if (items.empty()) return;
    bool was_empty = false;
    {
      MutexLock lock(&mu_);
      was_empty = items_.empty();
      if (was_empty) {
        items_.swap(items);  // the common case: no copy at all
      } else {
        for (T& item : items) items_.push_back(std::move(item));
      }
    }
    items.clear();
    if (was_empty) Signal();
  }

  // Whether a posted item waits. Any thread; a Post racing with it may or may not be seen.
  bool HasItems() const EXCLUDES(mu_) {
    MutexLock lock(&mu_);
    return !items_.empty();
  }

  // Everything posted so far, oldest first, into `out` (replaced; `out` and the mailbox swap
  // buffers, so neither allocates once both are warm); fd() stops being readable until the
  // next Post. The socket thread only.
  void TakeAll(std::vector<T>* out) EXCLUDES(mu_) {
    out->clear();
    uint64_t count = 0;
    [[maybe_unused]] ssize_t n = ::read(fd_, &count, sizeof(count));  // reset before taking
    MutexLock lock(&mu_);
    out->swap(items_);
  }
  std::vector<T> TakeAll() EXCLUDES(mu_) {
    std::vector<T> out;
    TakeAll(&out);
    return out;
  }

 private:
  // The fd is readable from a post onto an empty queue until TakeAll, which reads it before
  // taking: a post after that read finds the queue non-empty only if TakeAll has not taken it
  // yet, and then TakeAll takes it; otherwise it found the queue empty and signals again.
  void Signal() {
    const uint64_t one = 1;
    // A full counter (never in practice) still leaves the fd readable, so the wake-up holds.
    [[maybe_unused]] ssize_t n = ::write(fd_, &one, sizeof(one));
  }

  int fd_;
  mutable Mutex mu_;
  std::vector<T> items_ GUARDED_BY(mu_);
};

// The socket thread's wait: up to `timeout_ms` for a message on `router` or a reply in the
// mailbox whose eventfd is `mailbox_fd`. Unavailable once the transport context is
// terminated; a signal (EINTR) returns OK with nothing ready.
struct ReadySockets {
  bool requests = false;
  bool replies = false;
};
Result<ReadySockets> WaitForRequestsOrReplies(RouterServer& router, int mailbox_fd, int timeout_ms);

}  // namespace cleave::cloud
