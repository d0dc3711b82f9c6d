#include "cloud/lm_server.h"

#include <algorithm>

#include "common/logging.h"

namespace cleave::cloud {
namespace {

RouterReply Encode(const std::string& peer, const lm_wire::LmReply& reply, Outcome outcome) {
  ReplyKind kind = ReplyKind::kOk;  // resync too: the protocol working as designed
  switch (reply.status) {
    case lm_wire::LmStatus::kError: kind = ReplyKind::kError; break;
    case lm_wire::LmStatus::kOverloaded: kind = ReplyKind::kOverloaded; break;
    case lm_wire::LmStatus::kDeadlineExceeded: kind = ReplyKind::kDeadlineExceeded; break;
    default: break;
  }
  return RouterReply::Of(peer, lm_wire::EncodeLmReply(reply), reply.request_id, kind, outcome);
}

}  // namespace

// An accepted request, owned by the batcher until the compute thread answers it.
struct LmServer::Job {
  std::string peer;
  lm_wire::LmRequest request;
  int64_t received_us = 0;
  bool answered = false;  // its reply has been posted (compute thread)
};

LmServer::LmServer(LmServerOptions options, std::unique_ptr<LmTailService> service)
    : options_(std::move(options)),
      clock_(options_.clock ? *options_.clock : SystemClock()),
      metrics_(options_.metrics ? options_.metrics : std::make_shared<Metrics>()),
      m_(&metrics_->Service("cloud")),
      service_(std::move(service)) {}

LmServer::~LmServer() {
  if (batcher_) batcher_->Shutdown(Batcher::ShutdownMode::kFail);
}

Result<std::unique_ptr<LmServer>> LmServer::Create(TransportContext& context,
                                                   LmServerOptions options,
                                                   std::unique_ptr<LmTailService> service) {
  // One request at a time, in arrival order: a session's requests must not overtake each
  // other, and each carries its own cache (see the file comment).
  DynamicBatcherOptions queueing;
  queueing.max_batch = 1;
  queueing.max_queue_delay_us = 0;
  queueing.max_queue = options.max_queue;
  queueing.max_queue_wait_us = options.max_queue_wait_us;
  queueing.workers = 1;
  CLEAVE_RETURN_IF_ERROR(queueing.Validate());
  if (!service) return Status::InvalidArgument("LmServer needs a service");
  std::unique_ptr<LmServer> server(new LmServer(std::move(options), std::move(service)));
  CLEAVE_ASSIGN_OR_RETURN(
      server->router_,
      RouterService::Bind(context, server->options_.listen, server->options_.socket, server->clock_,
                          *server->metrics_, "cloud"));
  LmServer* self = server.get();
  server->batcher_ = std::make_unique<Batcher>(
      queueing, server->clock_, [self](int, std::vector<Job>& jobs) { self->Compute(jobs); },
      [self](Rejection why, Job& job) { self->Reject(why, job); }, Batcher::WorkerInitFn{},
      [](const Job& job) { return job.answered; });
  return server;
}

Status LmServer::WarmUp() {
  MutexLock lock(&service_mu_);
  return service_->WarmUp();
}

// ---- compute thread -------------------------------------------------------------------------

void LmServer::Compute(std::vector<Job>& jobs) {
  for (Job& job : jobs) {
    if (options_.before_compute) options_.before_compute();
    const int64_t start = clock_.NowMicros();
    m_->queue_seconds->Observe(static_cast<double>(std::max<int64_t>(0, start - job.received_us)) *
                               1e-6);
    lm_wire::LmReply reply;
    Outcome outcome = Outcome::kOk;  // resync replies too: the protocol working as designed
    {
      MutexLock lock(&service_mu_);
      const uint64_t compute_errors = service_->stats().compute_errors;
      reply = service_->Handle(job.request);
      if (reply.status == lm_wire::LmStatus::kError) {
        outcome = service_->stats().compute_errors > compute_errors ? Outcome::kError
                                                                    : Outcome::kRejected;
      }
    }
    if (reply.status != lm_wire::LmStatus::kError && reply.compute_us > 0) {
      m_->compute_seconds->Observe(static_cast<double>(reply.compute_us) * 1e-6);
    }
    router_->Post(Encode(job.peer, reply, outcome));
    job.answered = true;
  }
}

void LmServer::Reject(Rejection why, Job& job) {
  lm_wire::LmReply reply;
  reply.request_id = job.request.request_id;
  if (why == Rejection::kExpired) {
    reply.status = lm_wire::LmStatus::kDeadlineExceeded;
    reply.error = "deadline passed while queued";
    router_->Post(Encode(job.peer, reply, Outcome::kRejected));
  } else if (why == Rejection::kComputeFailed) {
    reply.status = lm_wire::LmStatus::kError;
    reply.error = "the computation failed unexpectedly (an internal error of the cloud)";
    router_->Post(Encode(job.peer, reply, Outcome::kError));
  } else {
    reply.status = lm_wire::LmStatus::kOverloaded;
    reply.error = "the service is shutting down";
    router_->Post(Encode(job.peer, reply, Outcome::kOverloaded));
  }
}

// ---- socket thread --------------------------------------------------------------------------

void LmServer::ReplyNow(const std::string& peer, uint64_t request_id, lm_wire::LmStatus status,
                        const std::string& error, Outcome outcome) {
  lm_wire::LmReply reply;
  reply.request_id = request_id;
  reply.status = status;
  reply.error = error;
  RouterReply encoded = Encode(peer, reply, outcome);
  router_->Send(encoded);
}

void LmServer::ExpireIdleSessions() {
  size_t expired = 0;
  {
    MutexLock lock(&service_mu_);
    expired = service_->ExpireIdle();
  }
  if (expired > 0) GetLogger("cloud")->debug("expired {} idle sessions", expired);
}

void LmServer::PublishStats() {
  const RouterServiceStats& socket = router_->stats();
  stats_.received = socket.received;
  stats_.undeliverable = socket.undeliverable;
  stats_.overloaded = socket.replied_overloaded;
  stats_.deadline_exceeded = socket.replied_deadline;
}

void LmServer::Admit(InboundMessage& message, int64_t received) {
  Result<lm_wire::LmRequest> request = lm_wire::DecodeLmRequest(message.bytes());
  if (!request.ok()) {
    ++stats_.malformed;
    ReplyNow(message.peer, wire::PeekRequestId(message.bytes()),  // same slot as InferRequest's
             lm_wire::LmStatus::kError, request.status().ToString(), Outcome::kRejected);
    return;
  }
  const uint64_t request_id = request->request_id;
  const int64_t deadline =
      request->deadline_ms > 0 ? received + int64_t{request->deadline_ms} * 1000 : 0;
  const SubmitResult submitted =
      batcher_->Submit(Job{message.peer, std::move(request).value(), received}, deadline);
  if (submitted == SubmitResult::kAccepted) {
    router_->Accepted();
    return;
  }
  ReplyNow(message.peer, request_id, lm_wire::LmStatus::kOverloaded,
           RefusalReason(submitted, options_.max_queue, batcher_->EstimatedWaitMicros(),
                         options_.max_queue_wait_us),
           Outcome::kOverloaded);
}

Status LmServer::Run(const std::function<bool()>& should_stop) {
  batcher_->Start();
  RouterService::Hooks hooks;
  hooks.admit = [this](std::vector<InboundMessage>& burst, int64_t received) {
    for (InboundMessage& message : burst) Admit(message, received);
  };
  hooks.sweep = [this](int64_t) { ExpireIdleSessions(); };
  hooks.after_turn = [this] { PublishStats(); };
  const Status result = router_->Serve(should_stop, hooks);
  // Drain: every accepted request is computed and its reply sent before we return.
  batcher_->Shutdown(Batcher::ShutdownMode::kDrain);
  router_->DeliverReplies();
  PublishStats();
  LmServiceStats s;
  {
    MutexLock lock(&service_mu_);
    s = service_->stats();
  }
  GetLogger("cloud")->info(
      "lm server stopped: {} requests, {} predictions, {} resyncs, {} errors, {} malformed, {} "
      "overloaded, {} past deadline",
      s.requests, s.predictions, s.resyncs, s.errors, stats_.malformed, stats_.overloaded,
      stats_.deadline_exceeded);
  return result;
}

}  // namespace cleave::cloud
