#include "edge/lm_link.h"

namespace cleave::edge {

Result<std::unique_ptr<ZmqLmLink>> ZmqLmLink::Connect(TransportContext& context,
                                                      const std::string& endpoint, int timeout_ms,
                                                      std::chrono::milliseconds backoff) {
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<DealerClient> client,
                          DealerClient::Connect(context, endpoint));
  return std::unique_ptr<ZmqLmLink>(new ZmqLmLink(std::move(client), timeout_ms, backoff));
}

Result<lm_wire::LmReply> ZmqLmLink::Call(const lm_wire::LmRequest& request) {
  const auto now = std::chrono::steady_clock::now();
  if (now < down_until_) return Status::Unavailable("cloud marked down after a failure");
  const auto fail = [&](Status s) {
    down_until_ = std::chrono::steady_clock::now() + backoff_;
    return s;
  };
  if (Status s = client_->Send(lm_wire::EncodeLmRequest(request), timeout_ms_); !s.ok()) {
    return fail(s);
  }
  const auto deadline = now + std::chrono::milliseconds(timeout_ms_);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0) return fail(Status::DeadlineExceeded("no reply from the cloud in time"));
    Result<std::optional<std::string>> body = client_->Receive(static_cast<int>(left));
    if (!body.ok()) return fail(body.status());
    if (!body->has_value()) continue;  // timeout or signal: the loop re-checks the deadline
    Result<lm_wire::LmReply> reply = lm_wire::DecodeLmReply(**body);
    if (!reply.ok()) return fail(reply.status().WithContext("cloud reply"));
    if (reply->request_id != request.request_id) continue;  // a late reply to an older request
    return reply;
  }
}

}  // namespace cleave::edge
