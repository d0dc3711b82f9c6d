#include "edge/edge_client.h"

#include <chrono>
#include <map>

namespace cleave::edge {

Result<std::unique_ptr<EdgeClient>> EdgeClient::Connect(TransportContext& context,
                                                        const std::string& endpoint) {
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<DealerClient> dealer,
                          DealerClient::Connect(context, endpoint));
  return std::unique_ptr<EdgeClient>(new EdgeClient(std::move(dealer)));
}

Result<std::vector<ClassifyOutcome>> EdgeClient::Run(
    const std::vector<edge_api::ClassifyRequest>& requests, int window, int reply_timeout_ms,
    const std::function<void(size_t)>& progress) {
  using Clock = std::chrono::steady_clock;
  if (window < 1) return Status::InvalidArgument("window must be >= 1");
  std::vector<ClassifyOutcome> outcomes(requests.size());
  std::map<uint64_t, std::pair<size_t, Clock::time_point>> in_flight;  // id -> (index, sent)
  size_t next = 0, done = 0;
  while (done < requests.size()) {
    while (next < requests.size() && static_cast<int>(in_flight.size()) < window) {
      const auto& request = requests[next];
      if (in_flight.count(request.request_id)) {
        return Status::InvalidArgument("duplicate request id " +
                                       std::to_string(request.request_id));
      }
      Status sent = dealer_->Send(edge_api::EncodeClassifyRequest(request), reply_timeout_ms);
      if (!sent.ok()) return sent.WithContext("cannot send to the edge daemon");
      in_flight.emplace(request.request_id, std::make_pair(next, Clock::now()));
      ++next;
    }
    // Wait for the next reply, but never past the oldest request's timeout.
    const auto now = Clock::now();
    auto oldest = Clock::time_point::max();
    for (const auto& [id, entry] : in_flight) oldest = std::min(oldest, entry.second);
    const auto limit = oldest + std::chrono::milliseconds(reply_timeout_ms);
    const int wait = static_cast<int>(std::max<int64_t>(
        0, std::chrono::duration_cast<std::chrono::milliseconds>(limit - now).count()));
    Result<std::optional<std::string>> msg = dealer_->Receive(wait);
    if (!msg.ok()) return msg.status();
    if (msg->has_value()) {
      Result<edge_api::ClassifyReply> reply = edge_api::DecodeClassifyReply(**msg);
      auto it = reply.ok() ? in_flight.find(reply->request_id) : in_flight.end();
      if (it == in_flight.end()) {
        ++stray_replies_;
      } else {
        ClassifyOutcome& out = outcomes[it->second.first];
        out.answered = true;
        out.latency_ms =
            std::chrono::duration<double, std::milli>(Clock::now() - it->second.second).count();
        out.reply = std::move(reply).value();
        in_flight.erase(it);
        ++done;
      }
    }
    // Requests past their timeout stay unanswered (the caller sees answered == false).
    const auto after = Clock::now();
    for (auto it = in_flight.begin(); it != in_flight.end();) {
      if (after - it->second.second > std::chrono::milliseconds(reply_timeout_ms)) {
        it = in_flight.erase(it);
        ++done;
      } else {
        ++it;
      }
    }
    if (progress) progress(done);
  }
  return outcomes;
}

}  // namespace cleave::edge
