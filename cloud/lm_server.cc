#include "cloud/lm_server.h"

#include <chrono>

#include "common/logging.h"

namespace cleave::cloud {
namespace {

int64_t Micros(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}

}  // namespace

Result<std::unique_ptr<LmServer>> LmServer::Create(TransportContext& context,
                                                   LmServerOptions options,
                                                   std::unique_ptr<LmTailService> service) {
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<RouterServer> router,
                          RouterServer::Bind(context, options.listen, options.socket));
  std::shared_ptr<Metrics> metrics =
      options.metrics ? std::move(options.metrics) : std::make_shared<Metrics>();
  return std::unique_ptr<LmServer>(
      new LmServer(std::move(router), std::move(service), std::move(metrics)));
}

LmServer::LmServer(std::unique_ptr<RouterServer> router, std::unique_ptr<LmTailService> service,
                   std::shared_ptr<Metrics> metrics)
    : router_(std::move(router)),
      service_(std::move(service)),
      metrics_(std::move(metrics)),
      m_(&metrics_->Service("cloud")),
      connected_(&metrics_->ConnectedEdges()) {}

void LmServer::Reply(const std::string& peer, const lm_wire::LmReply& reply, Outcome outcome) {
  m_->Count(outcome);
  const std::string bytes = lm_wire::EncodeLmReply(reply);
  if (router_->Send(peer, bytes).ok()) {
    m_->wire_bytes_sent->Increment(static_cast<double>(WireBytes(bytes.size())));
  } else {
    ++stats_.undeliverable;
  }
}

Status LmServer::Run(const std::function<bool()>& should_stop) {
  auto log = GetLogger("cloud");
  auto last_expiry = std::chrono::steady_clock::now();
  while (!should_stop()) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_expiry > std::chrono::seconds(1)) {
      if (const size_t n = service_->ExpireIdle(); n > 0) log->debug("expired {} idle sessions", n);
      connected_->Set(static_cast<double>(peers_.Expire(Micros(now))));
      last_expiry = now;
    }
    Result<std::optional<Envelope>> env = router_->Receive(100);
    if (!env.ok()) {
      log->warn("receive failed: {}", env.status().ToString());
      continue;
    }
    if (!env->has_value()) continue;
    ++stats_.received;
    m_->wire_bytes_received->Increment(static_cast<double>(WireBytes((*env)->body.size())));
    peers_.Seen((*env)->peer, Micros(std::chrono::steady_clock::now()));
    Result<lm_wire::LmRequest> request = lm_wire::DecodeLmRequest((*env)->body);
    if (!request.ok()) {
      ++stats_.malformed;
      lm_wire::LmReply reply;
      reply.request_id = wire::PeekRequestId((*env)->body);  // same slot as InferRequest's
      reply.status = lm_wire::LmStatus::kError;
      reply.error = request.status().ToString();
      Reply((*env)->peer, reply, Outcome::kRejected);
      continue;
    }
    const uint64_t compute_errors = service_->stats().compute_errors;
    const lm_wire::LmReply reply = service_->Handle(*request);
    Outcome outcome = Outcome::kOk;  // resync replies too: the protocol working as designed
    if (reply.status == lm_wire::LmStatus::kError) {
      outcome =
          service_->stats().compute_errors > compute_errors ? Outcome::kError : Outcome::kRejected;
    } else if (reply.compute_us > 0) {
      m_->compute_seconds->Observe(static_cast<double>(reply.compute_us) * 1e-6);
    }
    Reply((*env)->peer, reply, outcome);
  }
  const LmServiceStats& s = service_->stats();
  log->info("lm server stopped: {} requests, {} predictions, {} resyncs, {} errors, {} malformed",
            s.requests, s.predictions, s.resyncs, s.errors, stats_.malformed);
  return Status::Ok();
}

}  // namespace cleave::cloud
