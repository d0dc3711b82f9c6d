#include "cloud/lm_server.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "cloud/reply_mailbox.h"
#include "common/logging.h"

namespace cleave::cloud {
namespace {

// Most messages taken from the ROUTER per turn, so replies never wait long behind a flood.
constexpr int kMaxReceivesPerTurn = 256;

}  // namespace

// An accepted request, owned by the batcher until the compute thread answers it.
struct LmServer::Job {
  std::string peer;
  lm_wire::LmRequest request;
  int64_t received_us = 0;
  bool answered = false;  // its reply has been posted (compute thread)
};

// A reply on its way from the compute thread to the socket.
struct LmServer::Outgoing {
  std::string peer;
  std::string bytes;
  lm_wire::LmStatus status = lm_wire::LmStatus::kOk;
  Outcome outcome = Outcome::kOk;
};

class LmServer::Mailbox : public ReplyMailbox<Outgoing> {};

LmServer::LmServer(LmServerOptions options, std::unique_ptr<LmTailService> service)
    : options_(std::move(options)),
      clock_(options_.clock ? *options_.clock : SystemClock()),
      service_(std::move(service)),
      mailbox_(std::make_unique<Mailbox>()),
      metrics_(options_.metrics ? options_.metrics : std::make_shared<Metrics>()),
      m_(&metrics_->Service("cloud")),
      connected_(&metrics_->ConnectedEdges()) {}

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
  if (server->mailbox_->fd() < 0) {
    return Status::IoError(std::string("cannot create the reply eventfd: ") + std::strerror(errno));
  }
  CLEAVE_ASSIGN_OR_RETURN(server->router_, RouterServer::Bind(context, server->options_.listen,
                                                              server->options_.socket));
  LmServer* self = server.get();
  server->batcher_ = std::make_unique<Batcher>(
      queueing, server->clock_, [self](int, std::vector<Job>& jobs) { self->Compute(jobs); },
      [self](Rejection why, Job& job) { self->Reject(why, job); }, Batcher::WorkerInitFn{},
      [](const Job& job) { return job.answered; });
  return server;
}

Status LmServer::WarmUp() {
  std::lock_guard<std::mutex> lock(service_mu_);
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
      std::lock_guard<std::mutex> lock(service_mu_);
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
    mailbox_->Post({job.peer, lm_wire::EncodeLmReply(reply), reply.status, outcome});
    job.answered = true;
  }
}

void LmServer::Reject(Rejection why, Job& job) {
  lm_wire::LmReply reply;
  reply.request_id = job.request.request_id;
  if (why == Rejection::kExpired) {
    reply.status = lm_wire::LmStatus::kDeadlineExceeded;
    reply.error = "deadline passed while queued";
    mailbox_->Post({job.peer, lm_wire::EncodeLmReply(reply), reply.status, Outcome::kRejected});
  } else if (why == Rejection::kComputeFailed) {
    reply.status = lm_wire::LmStatus::kError;
    reply.error = "the computation failed unexpectedly (an internal error of the cloud)";
    mailbox_->Post({job.peer, lm_wire::EncodeLmReply(reply), reply.status, Outcome::kError});
  } else {
    reply.status = lm_wire::LmStatus::kOverloaded;
    reply.error = "the service is shutting down";
    mailbox_->Post({job.peer, lm_wire::EncodeLmReply(reply), reply.status, Outcome::kOverloaded});
  }
}

// ---- socket thread --------------------------------------------------------------------------

void LmServer::Send(const Outgoing& out) {
  if (out.status == lm_wire::LmStatus::kOverloaded) ++stats_.overloaded;
  if (out.status == lm_wire::LmStatus::kDeadlineExceeded) ++stats_.deadline_exceeded;
  m_->Count(out.outcome);
  if (router_->Send(out.peer, out.bytes).ok()) {
    m_->wire_bytes_sent->Increment(static_cast<double>(WireBytes(out.bytes.size())));
  } else {
    ++stats_.undeliverable;
  }
}

void LmServer::ReplyNow(const std::string& peer, uint64_t request_id, lm_wire::LmStatus status,
                        const std::string& error, Outcome outcome) {
  lm_wire::LmReply reply;
  reply.request_id = request_id;
  reply.status = status;
  reply.error = error;
  Send({peer, lm_wire::EncodeLmReply(reply), status, outcome});
}

void LmServer::DeliverReplies() {
  std::deque<Outgoing> replies = mailbox_->TakeAll();
  for (const Outgoing& out : replies) Send(out);
  in_flight_ -= std::min<uint64_t>(in_flight_, replies.size());
  m_->pending_requests->Set(static_cast<double>(in_flight_));
}

void LmServer::Admit(Envelope env) {
  ++stats_.received;
  const int64_t received = clock_.NowMicros();
  m_->wire_bytes_received->Increment(static_cast<double>(WireBytes(env.body.size())));
  peers_.Seen(env.peer, received);
  Result<lm_wire::LmRequest> request = lm_wire::DecodeLmRequest(env.body);
  if (!request.ok()) {
    ++stats_.malformed;
    ReplyNow(env.peer, wire::PeekRequestId(env.body),  // same slot as InferRequest's
             lm_wire::LmStatus::kError, request.status().ToString(), Outcome::kRejected);
    return;
  }
  const uint64_t request_id = request->request_id;
  const int64_t deadline =
      request->deadline_ms > 0 ? received + int64_t{request->deadline_ms} * 1000 : 0;
  const SubmitResult submitted =
      batcher_->Submit(Job{env.peer, std::move(request).value(), received}, deadline);
  if (submitted == SubmitResult::kAccepted) {
    ++in_flight_;
    return;
  }
  ReplyNow(env.peer, request_id, lm_wire::LmStatus::kOverloaded,
           RefusalReason(submitted, options_.max_queue, batcher_->EstimatedWaitMicros(),
                         options_.max_queue_wait_us),
           Outcome::kOverloaded);
}

Status LmServer::Run(const std::function<bool()>& should_stop) {
  auto log = GetLogger("cloud");
  batcher_->Start();
  int64_t last_sweep = clock_.NowMicros();
  Status result = Status::Ok();
  while (!should_stop()) {
    if (const int64_t now = clock_.NowMicros(); now - last_sweep > 1'000'000) {
      size_t expired = 0;
      {
        std::lock_guard<std::mutex> lock(service_mu_);
        expired = service_->ExpireIdle();
      }
      if (expired > 0) log->debug("expired {} idle sessions", expired);
      connected_->Set(static_cast<double>(peers_.Expire(now)));
      last_sweep = now;
    }
    Result<ReadySockets> ready = WaitForRequestsOrReplies(*router_, mailbox_->fd(), 100);
    if (!ready.ok()) {
      result = ready.status();
      break;
    }
    if (ready->replies) DeliverReplies();
    if (ready->requests) {
      for (int i = 0; i < kMaxReceivesPerTurn; ++i) {
        Result<std::optional<Envelope>> env = router_->Receive(0);
        if (!env.ok()) {
          log->warn("receive failed: {}", env.status().ToString());
          break;
        }
        if (!env->has_value()) break;
        Admit(std::move(**env));
      }
    }
    m_->pending_requests->Set(static_cast<double>(in_flight_));
  }
  // Drain: every accepted request is computed and its reply sent before we return.
  batcher_->Shutdown(Batcher::ShutdownMode::kDrain);
  DeliverReplies();
  const LmServiceStats& s = service_->stats();
  log->info(
      "lm server stopped: {} requests, {} predictions, {} resyncs, {} errors, {} malformed, {} "
      "overloaded, {} past deadline",
      s.requests, s.predictions, s.resyncs, s.errors, stats_.malformed, stats_.overloaded,
      stats_.deadline_exceeded);
  return result;
}

}  // namespace cleave::cloud
