// ReplyMailbox: how compute threads hand replies to the one thread that owns a ROUTER socket
// (ZeroMQ sockets are not thread-safe, so workers never send).
//
// A mutex-protected queue plus an eventfd that is readable while replies wait, so the socket
// thread polls the fd together with its socket and wakes for either. Post is safe from any
// thread; TakeAll and fd belong to the socket thread. Used by TailServer (vision) and LmServer,
// whose socket threads wait with WaitForRequestsOrReplies.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>
#include <deque>
#include <utility>

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
    {
      MutexLock lock(&mu_);
      items_.push_back(std::move(item));
    }
    const uint64_t one = 1;
    // A full counter (never in practice) still leaves the fd readable, so the wake-up holds.
    [[maybe_unused]] ssize_t n = ::write(fd_, &one, sizeof(one));
  }

  // Whether a posted item waits. Any thread; a Post racing with it may or may not be seen.
  bool HasItems() const EXCLUDES(mu_) {
    MutexLock lock(&mu_);
    return !items_.empty();
  }

  // Everything posted so far, oldest first; fd() stops being readable until the next Post.
  // The socket thread only.
  std::deque<T> TakeAll() EXCLUDES(mu_) {
    uint64_t count = 0;
    [[maybe_unused]] ssize_t n = ::read(fd_, &count, sizeof(count));  // reset before taking
    std::deque<T> out;
    MutexLock lock(&mu_);
    out.swap(items_);
    return out;
  }

 private:
  int fd_;
  mutable Mutex mu_;
  std::deque<T> items_ GUARDED_BY(mu_);
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
