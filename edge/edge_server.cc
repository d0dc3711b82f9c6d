#include "edge/edge_server.h"

#include <algorithm>
#include <chrono>

#include "common/inference_wire.h"
#include "common/logging.h"

namespace cleave::edge {

int64_t SteadyMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

EdgeServer::EdgeServer(EdgeServerOptions options, std::unique_ptr<EdgeEngine> engine)
    : options_(std::move(options)),
      engine_(std::move(engine)),
      metrics_(options_.metrics ? options_.metrics : std::make_shared<Metrics>()),
      m_(&metrics_->Service("edge")),
      pending_full_(&metrics_->EdgeNotOffloaded(NotOffloadedReason::kMaxPending)) {}

EdgeServer::~EdgeServer() = default;

Result<std::unique_ptr<EdgeServer>> EdgeServer::Create(TransportContext& context,
                                                       EdgeServerOptions options,
                                                       std::unique_ptr<EdgeEngine> engine) {
  if (options.max_batch < 1) return Status::InvalidArgument("max_batch must be >= 1");
  if (options.max_pending < 1) return Status::InvalidArgument("max_pending must be >= 1");
  std::unique_ptr<EdgeServer> server(new EdgeServer(options, std::move(engine)));
  CLEAVE_ASSIGN_OR_RETURN(server->local_,
                          RouterServer::Bind(context, options.listen, options.socket));
  if (!options.cloud.empty()) {
    SocketOptions cloud_socket = options.socket;
    cloud_socket.configure = options.cloud_configure;
    CLEAVE_ASSIGN_OR_RETURN(server->cloud_,
                            DealerClient::Connect(context, options.cloud, cloud_socket));
  }
  return server;
}

const std::string& EdgeServer::endpoint() const { return local_->endpoint(); }

Status EdgeServer::SwapEngine(uint64_t version, std::unique_ptr<EdgeEngine> engine) {
  if (engine == nullptr) return Status::InvalidArgument("SwapEngine: null engine");
  MutexLock lock(&staged_mu_);
  staged_ = std::move(engine);  // a newer swap before the loop took the last one replaces it
  staged_version_ = version;
  return Status::Ok();
}

void EdgeServer::AdoptStagedEngine() {
  std::unique_ptr<EdgeEngine> engine;
  uint64_t version = 0;
  {
    MutexLock lock(&staged_mu_);
    if (staged_ == nullptr) return;
    engine = std::move(staged_);
    version = staged_version_;
  }
  engine_.swap(engine);  // the old engine is freed here, outside the lock
  served_version_.store(version, std::memory_order_release);
  m_->model_version->Set(static_cast<double>(version));
  GetLogger("edge")->info("now serving model version {} ({})", version,
                          engine_->model().model_name());
}

Status EdgeServer::WarmUp() {
  const int size = engine_->image_size();
  return engine_
      ->Decide(torch::zeros({1, engine_->input_channels(), size, size}), {0}, {-1.0f},
               {options_.default_deadline_ms})
      .status()
      .WithContext("warm-up");
}

void EdgeServer::Observe(const std::string& peer, uint64_t request_id, const torch::Tensor& image,
                         const torch::Tensor& teacher, const torch::Tensor& exit_logits) {
  if (!options_.learner || !image.defined()) return;
  Observation o;
  o.peer = peer;
  o.request_id = request_id;
  o.image = image;
  o.teacher = teacher;
  o.exit_logits = exit_logits;
  options_.learner->Observe(std::move(o));
}

void EdgeServer::HandleFeedback(const std::string& peer, const edge_api::FeedbackRequest& request) {
  ++stats_.feedback;
  edge_api::LocalReply reply;
  reply.kind = edge_api::LocalRequest::Kind::kFeedback;
  if (options_.learner) {
    reply.feedback = options_.learner->Feedback(peer, request);
  } else {
    reply.feedback.request_id = request.request_id;
    reply.feedback.error =
        "on-gateway learning is off (edge.adapt_enabled = false): feedback is not used";
  }
  Status sent = local_->Send(peer, edge_api::EncodeLocalReply(reply));
  if (!sent.ok()) {
    GetLogger("edge")->warn("feedback reply to request {} not delivered: {}", request.request_id,
                            sent.ToString());
  }
}

void EdgeServer::Reply(const std::string& peer, edge_api::ClassifyReply reply, Outcome outcome,
                       bool enveloped) {
  m_->Count(outcome);
  // Named by the bundle served now (a hot reload between offload and reply keeps the class
  // list unless the new bundle changed it, and then the index is the new bundle's answer).
  if (reply.source != edge_api::AnswerSource::kError) {
    reply.class_name = engine_->ClassName(reply.predicted_class);
  }
  switch (reply.source) {
    case edge_api::AnswerSource::kEdgeExit: ++stats_.answered_exit; break;
    case edge_api::AnswerSource::kCloud: ++stats_.answered_cloud; break;
    case edge_api::AnswerSource::kDegraded: ++stats_.answered_degraded; break;
    default: ++stats_.answered_error; break;
  }
  const uint64_t request_id = reply.request_id;
  std::string bytes;
  if (enveloped) {
    edge_api::LocalReply local;
    local.classify = std::move(reply);
    bytes = edge_api::EncodeLocalReply(local);
  } else {
    bytes = edge_api::EncodeClassifyReply(reply);
  }
  Status sent = local_->Send(peer, bytes);
  if (!sent.ok()) {
    // The application went away or stopped reading; nothing else can be done for it.
    GetLogger("edge")->warn("reply to request {} not delivered: {}", request_id, sent.ToString());
  }
}

void EdgeServer::ProcessBatch(std::vector<Incoming>& batch) {
  if (batch.empty()) return;
  const int64_t start = SteadyMicros();
  std::vector<torch::Tensor> images;
  std::vector<size_t> rows;  // index into batch of each image
  for (size_t i = 0; i < batch.size(); ++i) {
    Result<torch::Tensor> image = engine_->ImageFromRequest(batch[i].request);
    if (!image.ok()) {
      edge_api::ClassifyReply reply;
      reply.request_id = batch[i].request.request_id;
      reply.source = edge_api::AnswerSource::kError;
      reply.error = image.status().ToString();
      Reply(batch[i].peer, reply, Outcome::kRejected, batch[i].enveloped);
      continue;
    }
    images.push_back(std::move(image).value());
    rows.push_back(i);
    m_->queue_seconds->Observe(static_cast<double>(start - batch[i].received_us) * 1e-6);
  }
  if (images.empty()) return;

  std::vector<uint64_t> wire_ids;
  std::vector<float> thresholds;
  std::vector<uint32_t> deadlines;
  for (size_t r : rows) {
    const auto& req = batch[r].request;
    wire_ids.push_back(next_wire_id_++);
    thresholds.push_back(req.exit_threshold);
    deadlines.push_back(req.deadline_ms ? req.deadline_ms : options_.default_deadline_ms);
  }
  const int64_t head_start = SteadyMicros();
  Result<std::vector<HeadDecision>> decisions =
      engine_->Decide(torch::cat(images, 0), wire_ids, thresholds, deadlines);
  if (!decisions.ok()) {
    for (size_t r : rows) {
      edge_api::ClassifyReply reply;
      reply.request_id = batch[r].request.request_id;
      reply.source = edge_api::AnswerSource::kError;
      reply.error = decisions.status().ToString();
      Reply(batch[r].peer, reply, Outcome::kError, batch[r].enveloped);
    }
    return;
  }
  m_->compute_seconds->Observe(static_cast<double>(SteadyMicros() - head_start) * 1e-6);
  m_->batch_size->Observe(static_cast<double>(images.size()));

  for (size_t k = 0; k < rows.size(); ++k) {
    Incoming& in = batch[rows[k]];
    HeadDecision& d = (*decisions)[k];
    // Bounded waiting: with max_pending requests already waiting for the cloud, one more
    // would only wait behind them; its best local exit answers now instead.
    const bool pending_full = cloud_ && pending_.size() >= options_.max_pending;
    if (d.exit_index >= 0 || !cloud_ || pending_full) {
      edge_api::ClassifyReply reply;
      reply.request_id = in.request.request_id;
      // Without a cloud every answer is the edge's; an input the policy wanted to offload is
      // then degraded.
      reply.source =
          d.exit_index >= 0 ? edge_api::AnswerSource::kEdgeExit : edge_api::AnswerSource::kDegraded;
      if (d.exit_index < 0 && pending_full) {
        reply.error = "too many requests waiting for the cloud (edge.max_pending = " +
                      std::to_string(options_.max_pending) + ")";
        ++stats_.pending_full;
        pending_full_->Increment();
      }
      reply.predicted_class = d.best_class;
      reply.confidence = d.best_confidence;
      reply.scores = d.best_scores;
      reply.exit_index = d.best_exit;
      reply.edge_micros = d.edge_micros;
      reply.total_micros = static_cast<uint64_t>(SteadyMicros() - in.received_us);
      Reply(in.peer, reply, d.exit_index >= 0 ? Outcome::kExit : Outcome::kDegraded, in.enveloped);
      // An exit's answer is a pseudo-label candidate; any answer can get feedback later.
      Observe(in.peer, in.request.request_id, images[k][0], torch::Tensor(),
              d.exit_index >= 0 ? torch::tensor(d.best_scores) : torch::Tensor());
      continue;
    }
    Pending p;
    p.peer = in.peer;
    p.enveloped = in.enveloped;
    if (options_.learner) p.image = images[k][0];
    p.app_request_id = in.request.request_id;
    p.received_us = in.received_us;
    p.deadline_us = in.received_us + int64_t{deadlines[k]} * 1000;
    p.wire_bytes = WireBytes(d.offload_request.size());
    const uint64_t wire_id = wire_ids[k];
    // Never block the loop on a slow link: a send that cannot be queued at once degrades.
    Status sent = cloud_->Send(d.offload_request, 0);
    p.decision = std::move(d);
    pending_.emplace(wire_id, std::move(p));
    expiry_.emplace(pending_[wire_id].deadline_us, wire_id);
    if (!sent.ok()) {
      pending_[wire_id].wire_bytes = 0;
      AnswerDegraded(wire_id, "cloud unreachable: " + sent.ToString());
    } else {
      stats_.wire_bytes_sent += pending_[wire_id].wire_bytes;
      m_->wire_bytes_sent->Increment(static_cast<double>(pending_[wire_id].wire_bytes));
    }
  }
}

void EdgeServer::AnswerDegraded(uint64_t wire_id, const std::string& why) {
  auto it = pending_.find(wire_id);
  if (it == pending_.end()) return;
  Pending& p = it->second;
  edge_api::ClassifyReply reply;
  reply.request_id = p.app_request_id;
  reply.source = edge_api::AnswerSource::kDegraded;
  reply.error = why;
  reply.predicted_class = p.decision.best_class;
  reply.confidence = p.decision.best_confidence;
  reply.scores = p.decision.best_scores;
  reply.exit_index = p.decision.best_exit;
  reply.wire_bytes = p.wire_bytes;
  reply.edge_micros = p.decision.edge_micros;
  reply.total_micros = static_cast<uint64_t>(SteadyMicros() - p.received_us);
  expiry_.erase({p.deadline_us, wire_id});
  const std::string peer = p.peer;
  const bool enveloped = p.enveloped;
  Observe(peer, p.app_request_id, p.image, torch::Tensor(), torch::Tensor());  // for feedback
  pending_.erase(it);
  Reply(peer, reply, Outcome::kDegraded, enveloped);
}

void EdgeServer::HandleCloudReply(const std::string& bytes) {
  m_->wire_bytes_received->Increment(static_cast<double>(WireBytes(bytes.size())));
  Result<wire::InferReply> decoded = wire::DecodeInferReply(bytes);
  if (!decoded.ok()) {
    GetLogger("edge")->warn("undecodable reply from the cloud: {}", decoded.status().ToString());
    // Its request, whichever it was, is answered degraded when its deadline passes.
    return;
  }
  const wire::InferReply& r = *decoded;
  auto it = pending_.find(r.request_id);
  if (it == pending_.end()) {
    ++stats_.late_cloud_replies;
    return;
  }
  if (r.status != wire::ReplyStatus::kOk || r.num_classes == 0 ||
      r.scores.size() != r.num_classes) {
    AnswerDegraded(r.request_id, std::string("cloud answered ") + wire::ReplyStatusName(r.status) +
                                     (r.error.empty() ? "" : ": " + r.error));
    return;
  }
  Pending& p = it->second;
  edge_api::ClassifyReply reply;
  reply.request_id = p.app_request_id;
  reply.source = edge_api::AnswerSource::kCloud;
  reply.scores = r.scores;
  reply.predicted_class = ArgMax(r.scores);
  reply.exit_index = -1;
  reply.confidence = p.decision.best_confidence;
  reply.wire_bytes = p.wire_bytes;
  reply.edge_micros = p.decision.edge_micros;
  reply.total_micros = static_cast<uint64_t>(SteadyMicros() - p.received_us);
  expiry_.erase({p.deadline_us, r.request_id});
  const std::string peer = p.peer;
  const bool enveloped = p.enveloped;
  // The cloud is the teacher: its logits are a soft label for the gateway's exits.
  Observe(peer, p.app_request_id, p.image, torch::tensor(r.scores), torch::Tensor());
  pending_.erase(it);
  Reply(peer, reply, Outcome::kOffload, enveloped);
}

void EdgeServer::ExpireDeadlines(int64_t now_us) {
  while (!expiry_.empty() && expiry_.begin()->first <= now_us) {
    AnswerDegraded(expiry_.begin()->second, "cloud did not answer within the deadline");
  }
}

int EdgeServer::NextTimeoutMs(int64_t now_us) const {
  int timeout = 50;
  if (!expiry_.empty()) {
    const int64_t until = expiry_.begin()->first - now_us;
    timeout = static_cast<int>(std::clamp<int64_t>((until + 999) / 1000, 0, 50));
  }
  return timeout;
}

Status EdgeServer::Run(const std::function<bool()>& should_stop) {
  auto log = GetLogger("edge");
  std::vector<zmq::pollitem_t> items = {{local_->socket().handle(), 0, ZMQ_POLLIN, 0}};
  if (cloud_) items.push_back({cloud_->socket().handle(), 0, ZMQ_POLLIN, 0});
  std::vector<Incoming> batch;
  while (!should_stop()) {
    try {
      zmq::poll(items.data(), items.size(),
                std::chrono::milliseconds(NextTimeoutMs(SteadyMicros())));
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      return Status::Internal(std::string("poll failed: ") + e.what());
    }
    // Cloud replies first: they complete work that is already waiting.
    if (cloud_) {
      while (true) {
        Result<std::optional<std::string>> msg = cloud_->Receive(0);
        if (!msg.ok() || !msg->has_value()) break;
        HandleCloudReply(**msg);
      }
    }
    AdoptStagedEngine();
    batch.clear();
    while (static_cast<int>(batch.size()) < options_.max_batch) {
      Result<std::optional<Envelope>> msg = local_->Receive(0);
      if (!msg.ok() || !msg->has_value()) break;
      ++stats_.requests;
      Envelope& env = **msg;
      Result<edge_api::LocalRequest> request = edge_api::DecodeLocalRequest(env.body);
      if (!request.ok()) {
        ++stats_.rejected;
        edge_api::ClassifyReply reply;
        reply.request_id = edge_api::PeekClassifyRequestId(env.body);
        reply.source = edge_api::AnswerSource::kError;
        reply.error = request.status().ToString();
        Reply(env.peer, reply, Outcome::kRejected,
              edge_api::PeekProtocolVersion(env.body) == edge_api::kEnvelopeProtocolVersion);
        continue;
      }
      if (request->kind == edge_api::LocalRequest::Kind::kFeedback) {
        HandleFeedback(env.peer, request->feedback);
        continue;
      }
      batch.push_back(
          {std::move(env.peer), std::move(request->classify), SteadyMicros(), request->enveloped});
    }
    ProcessBatch(batch);
    ExpireDeadlines(SteadyMicros());
    m_->pending_requests->Set(static_cast<double>(pending_.size()));
  }
  // Shutting down: nobody is left waiting without an answer.
  while (!pending_.empty()) AnswerDegraded(pending_.begin()->first, "edge daemon shutting down");
  m_->pending_requests->Set(0);
  log->info("edge server stopped: {} requests, {} exit, {} cloud, {} degraded, {} errors",
            stats_.requests, stats_.answered_exit, stats_.answered_cloud, stats_.answered_degraded,
            stats_.answered_error);
  return Status::Ok();
}

}  // namespace cleave::edge
