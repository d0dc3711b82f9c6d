#include "edge/offload_client.h"

#include <chrono>
#include <set>

namespace cleave::edge {

Result<std::unique_ptr<OffloadClient>> OffloadClient::Connect(TransportContext& context,
                                                              const std::string& endpoint,
                                                              const SocketOptions& options) {
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<DealerClient> dealer,
                          DealerClient::Connect(context, endpoint, options));
  return std::unique_ptr<OffloadClient>(new OffloadClient(std::move(dealer)));
}

Result<std::map<uint64_t, wire::InferReply>> OffloadClient::Exchange(
    const std::vector<std::pair<uint64_t, std::string>>& requests, int deadline_ms) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::milliseconds(deadline_ms);
  auto remaining_ms = [&]() {
    return static_cast<int>(std::max<int64_t>(
        0, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count()));
  };
  std::set<uint64_t> awaited;
  Status last_error;
  for (const auto& [id, bytes] : requests) {
    Status sent = dealer_->Send(bytes, remaining_ms());
    if (sent.ok()) {
      awaited.insert(id);
    } else {
      last_error = sent;
    }
  }
  std::map<uint64_t, wire::InferReply> replies;
  if (awaited.empty() && !requests.empty()) {
    return last_error.WithContext("no request could be sent to " + dealer_->endpoint());
  }
  while (!awaited.empty()) {
    const int wait = remaining_ms();
    if (wait <= 0) break;
    Result<std::optional<std::string>> msg = dealer_->Receive(wait);
    if (!msg.ok()) return msg.status();
    if (!msg->has_value()) break;  // deadline
    Result<wire::InferReply> reply = wire::DecodeInferReply(**msg);
    if (!reply.ok() || awaited.erase(reply->request_id) == 0) {
      ++stray_replies_;
      continue;
    }
    const uint64_t id = reply->request_id;
    replies.emplace(id, std::move(reply).value());
  }
  return replies;
}

}  // namespace cleave::edge
