#include "cloud/lm_server.h"

#include <chrono>

#include "common/logging.h"

namespace cleave::cloud {

Result<std::unique_ptr<LmServer>> LmServer::Create(TransportContext& context,
                                                   LmServerOptions options,
                                                   std::unique_ptr<LmTailService> service) {
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<RouterServer> router,
                          RouterServer::Bind(context, options.listen, options.socket));
  return std::unique_ptr<LmServer>(new LmServer(std::move(router), std::move(service)));
}

void LmServer::Reply(const std::string& peer, const lm_wire::LmReply& reply) {
  if (!router_->Send(peer, lm_wire::EncodeLmReply(reply)).ok()) ++stats_.undeliverable;
}

Status LmServer::Run(const std::function<bool()>& should_stop) {
  auto log = GetLogger("cloud");
  auto last_expiry = std::chrono::steady_clock::now();
  while (!should_stop()) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_expiry > std::chrono::seconds(1)) {
      if (const size_t n = service_->ExpireIdle(); n > 0) log->debug("expired {} idle sessions", n);
      last_expiry = now;
    }
    Result<std::optional<Envelope>> env = router_->Receive(100);
    if (!env.ok()) {
      log->warn("receive failed: {}", env.status().ToString());
      continue;
    }
    if (!env->has_value()) continue;
    ++stats_.received;
    Result<lm_wire::LmRequest> request = lm_wire::DecodeLmRequest((*env)->body);
    if (!request.ok()) {
      ++stats_.malformed;
      lm_wire::LmReply reply;
      reply.request_id = wire::PeekRequestId((*env)->body);  // same slot as InferRequest's
      reply.status = lm_wire::LmStatus::kError;
      reply.error = request.status().ToString();
      Reply((*env)->peer, reply);
      continue;
    }
    Reply((*env)->peer, service_->Handle(*request));
  }
  const LmServiceStats& s = service_->stats();
  log->info("lm server stopped: {} requests, {} predictions, {} resyncs, {} errors, {} malformed",
            s.requests, s.predictions, s.resyncs, s.errors, stats_.malformed);
  return Status::Ok();
}

}  // namespace cleave::cloud
