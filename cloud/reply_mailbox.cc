#include "cloud/reply_mailbox.h"

#include <zmq.h>

#include <cerrno>

namespace cleave::cloud {

// The template's bodies are compiled (and, in clang builds, their locking checked by
// -Wthread-safety) here, whoever else instantiates it.
template class ReplyMailbox<int>;

Result<ReadySockets> WaitForRequestsOrReplies(RouterServer& router, int mailbox_fd,
                                              int timeout_ms) {
  zmq_pollitem_t items[] = {{router.socket().handle(), 0, ZMQ_POLLIN, 0},
                            {nullptr, mailbox_fd, ZMQ_POLLIN, 0}};
  ReadySockets ready;
  if (zmq_poll(items, 2, timeout_ms) < 0) {
    if (zmq_errno() == ETERM) return Status::Unavailable("the transport context was terminated");
    return ready;  // EINTR: a signal; the caller's stop check decides
  }
  ready.requests = (items[0].revents & ZMQ_POLLIN) != 0;
  ready.replies = (items[1].revents & ZMQ_POLLIN) != 0;
  return ready;
}

}  // namespace cleave::cloud
