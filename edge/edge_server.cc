#include "edge/edge_server.h"

#include <algorithm>
#include <chrono>

#include "common/inference_wire.h"
#include "common/logging.h"
#include "edge/offload_menu.h"

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
      pending_full_(&metrics_->EdgeNotOffloaded(NotOffloadedReason::kMaxPending)),
      deadline_local_(&metrics_->EdgeNotOffloaded(NotOffloadedReason::kDeadline)),
      om_(&metrics_->Offload()) {}

EdgeServer::~EdgeServer() = default;

Result<std::unique_ptr<EdgeServer>> EdgeServer::Create(TransportContext& context,
                                                       EdgeServerOptions options,
                                                       std::unique_ptr<EdgeEngine> engine) {
  if (options.max_batch < 1) return Status::InvalidArgument("max_batch must be >= 1");
  if (options.max_pending < 1) return Status::InvalidArgument("max_pending must be >= 1");
  if (!(options.slo_percentile > 0 && options.slo_percentile < 1)) {
    return Status::InvalidArgument("slo_percentile must lie in (0, 1)");
  }
  if (options.wire_version != wire::kProtocolVersion &&
      options.wire_version != wire::kCompactProtocolVersion) {
    return Status::InvalidArgument("wire_version must be 1 or 2, got " +
                                   std::to_string(options.wire_version));
  }
  std::unique_ptr<EdgeServer> server(new EdgeServer(options, std::move(engine)));
  const Clock& clock = options.clock ? *options.clock : SystemClock();
  CLEAVE_ASSIGN_OR_RETURN(server->link_, LinkEstimator::Create(LinkEstimatorOptions(), clock));
  CLEAVE_RETURN_IF_ERROR(server->RebuildPolicy());
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
  const Status rebuilt = RebuildPolicy();
  if (!rebuilt.ok()) {
    GetLogger("edge")->warn(
        "the new bundle's offload menu is unusable ({}); the policy keeps "
        "the previous one",
        rebuilt.ToString());
  }
  served_version_.store(version, std::memory_order_release);
  m_->model_version->Set(static_cast<double>(version));
  GetLogger("edge")->info("now serving model version {} ({})", version,
                          engine_->model().model_name());
}

Status EdgeServer::RebuildPolicy() {
  engine_->set_wire_version(options_.wire_version);
  const bool int8 = engine_->model().engine() != "fp32";
  const OffloadMenu menu = BuildOffloadMenu(engine_->model(), int8);
  OffloadPolicyOptions o;
  o.kind = options_.policy;
  o.menu = menu.options;
  o.calibrated = menu.calibrated;
  if (!options_.static_option.empty()) {
    if (options_.policy != OffloadPolicyKind::kStatic) {
      return Status::InvalidArgument("static_option applies to the static policy only");
    }
    CLEAVE_ASSIGN_OR_RETURN(o.calibrated, FindOffloadOption(menu, options_.static_option));
  }
  o.slo_ms = options_.slo_ms;
  o.percentile = options_.slo_percentile;
  o.max_bytes_per_s = options_.max_bytes_per_s;
  if (options_.wire_version != wire::kCompactProtocolVersion) {
    // Version 1 names no split point: only split 0 (and answering locally) remain.
    std::vector<OffloadOption> kept;
    for (const OffloadOption& option : o.menu) {
      if (option.split <= 0) kept.push_back(option);
    }
    o.menu = kept;
  }
  const Clock& clock = options_.clock ? *options_.clock : SystemClock();
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<OffloadPolicy> policy,
                          OffloadPolicy::Create(std::move(o), clock));
  policy_ = std::move(policy);
  calibrated_exits_ = options_.policy == OffloadPolicyKind::kStatic &&
                      policy_->options().calibrated == menu.calibrated;
  reported_switches_ = reported_probes_ = 0;
  if (options_.policy != OffloadPolicyKind::kStatic) {
    GetLogger("edge")->info("offload policy {} over {} options:\n{}",
                            OffloadPolicyKindName(options_.policy), menu.options.size(),
                            DescribeMenu(menu));
  }
  UpdatePolicy(/*force=*/true);
  return Status::Ok();
}

void EdgeServer::UpdatePolicy(bool force) {
  const int64_t now = SteadyMicros();
  if (!force && now - last_policy_update_us_ < 50'000) return;
  last_policy_update_us_ = now;
  const LinkSnapshot link = link_->Snapshot(options_.slo_percentile);
  policy_->Update(link);
  const OffloadPolicyState state = policy_->State();
  om_->rtt_p50_seconds->Set(link.rtt_ms.p50 * 1e-3);
  om_->rtt_p95_seconds->Set(link.rtt_ms.p95 * 1e-3);
  om_->uplink_bytes_per_second->Set(link.uplink_bytes_per_s);
  om_->cloud_queue_p50_seconds->Set(link.queue_ms.p50 * 1e-3);
  om_->cloud_compute_p50_seconds->Set(link.compute_ms.p50 * 1e-3);
  om_->overloaded_fraction->Set(link.overloaded_fraction);
  om_->timeout_fraction->Set(link.timeout_fraction);
  om_->split->Set(state.split);
  om_->exit_threshold->Set(state.exit_threshold);
  om_->predicted_latency_seconds->Set(state.predicted_latency_ms * 1e-3);
  if (state.switches > reported_switches_) {
    om_->switches->Increment(static_cast<double>(state.switches - reported_switches_));
    reported_switches_ = state.switches;
  }
  if (state.probes > reported_probes_) {
    om_->probes->Increment(static_cast<double>(state.probes - reported_probes_));
    reported_probes_ = state.probes;
  }
}

uint64_t EdgeServer::NextWireId() {
  const uint64_t id = next_wire_id_++;
  if (next_wire_id_ > 0xFFFFFFFFull) next_wire_id_ = 1;
  return id;
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

  // The policy's plan for each input (usually one option for the whole batch; a probe may
  // differ), then one head run per split point the plans name.
  std::vector<OffloadPlan> plans;
  std::vector<uint32_t> deadlines;
  std::vector<uint64_t> wire_ids;
  std::map<int, std::vector<size_t>> by_split;  // head split -> indices into rows
  for (size_t k = 0; k < rows.size(); ++k) {
    const auto& req = batch[rows[k]].request;
    plans.push_back(policy_->Plan());
    deadlines.push_back(req.deadline_ms ? req.deadline_ms : options_.default_deadline_ms);
    wire_ids.push_back(NextWireId());
    by_split[std::max(0, plans.back().split)].push_back(k);
  }
  std::vector<HeadDecision> decisions(rows.size());
  std::vector<float> thresholds(rows.size(), -1.0f);
  const int64_t head_start = SteadyMicros();
  for (const auto& [split, members] : by_split) {
    std::vector<torch::Tensor> group_images;
    std::vector<uint64_t> group_ids;
    std::vector<float> group_thresholds;
    std::vector<uint32_t> group_deadlines;
    for (size_t k : members) {
      const auto& req = batch[rows[k]].request;
      group_images.push_back(images[k]);
      group_ids.push_back(wire_ids[k]);
      // The application's own threshold wins; the static policy on the calibrated option keeps
      // the bundle's calibrated decision (-1); otherwise the plan's option says.
      const float option_threshold =
          calibrated_exits_ && plans[k].option == policy_->options().calibrated
              ? -1.0f
              : static_cast<float>(plans[k].exit_threshold);
      thresholds[k] = req.exit_threshold >= 0 ? req.exit_threshold : option_threshold;
      group_thresholds.push_back(thresholds[k]);
      group_deadlines.push_back(deadlines[k]);
    }
    Result<std::vector<HeadDecision>> group = engine_->Decide(
        torch::cat(group_images, 0), group_ids, group_thresholds, group_deadlines, split);
    if (!group.ok()) {
      for (size_t k : members) {
        edge_api::ClassifyReply reply;
        reply.request_id = batch[rows[k]].request.request_id;
        reply.source = edge_api::AnswerSource::kError;
        reply.error = group.status().ToString();
        Reply(batch[rows[k]].peer, reply, Outcome::kError, batch[rows[k]].enveloped);
        decisions[k].exit_index = -2;  // answered
      }
      continue;
    }
    for (size_t i = 0; i < members.size(); ++i) decisions[members[i]] = std::move((*group)[i]);
  }
  m_->compute_seconds->Observe(static_cast<double>(SteadyMicros() - head_start) * 1e-6);
  m_->batch_size->Observe(static_cast<double>(images.size()));

  for (size_t k = 0; k < rows.size(); ++k) {
    HeadDecision& d = decisions[k];
    if (d.exit_index == -2) continue;  // the head failed: already answered with an error
    Incoming& in = batch[rows[k]];
    const int64_t deadline_us = in.received_us + int64_t{deadlines[k]} * 1000;
    // Bounded waiting: with max_pending requests already waiting for the cloud, one more
    // would only wait behind them; its best local exit answers now instead.
    const bool pending_full = cloud_ && pending_.size() >= options_.max_pending;
    OffloadDecision od;
    if (d.exit_index < 0 && cloud_ && !pending_full) {
      const double remaining_ms = static_cast<double>(deadline_us - SteadyMicros()) / 1000.0;
      // The engine already applied the exit threshold (the application's or the option's):
      // what is left for the policy is the deadline guard.
      od = policy_->Decide(plans[k], /*confidence=*/-1.0, remaining_ms);
    }
    if (d.exit_index >= 0 || !cloud_ || pending_full || !od.offload) {
      edge_api::ClassifyReply reply;
      reply.request_id = in.request.request_id;
      // Without a cloud every answer is the edge's; an input the policy wanted to offload is
      // then degraded. A probe's request while the policy keeps everything local is answered
      // by its best exit as the local option would be: not degraded.
      const bool local_by_choice =
          d.exit_index < 0 && cloud_ && !pending_full && od.reason == DecisionReason::kLocalOption;
      reply.source = d.exit_index >= 0 || local_by_choice ? edge_api::AnswerSource::kEdgeExit
                                                          : edge_api::AnswerSource::kDegraded;
      if (local_by_choice) {
        // Nothing to explain: the policy's current option answers here.
      } else if (d.exit_index < 0 && pending_full) {
        reply.error = "too many requests waiting for the cloud (edge.max_pending = " +
                      std::to_string(options_.max_pending) + ")";
        ++stats_.pending_full;
        pending_full_->Increment();
      } else if (d.exit_index < 0 && cloud_) {
        reply.error =
            "not offloaded: the cloud's answer would come after the deadline "
            "(predicted " +
            std::to_string(od.predicted_leg_ms) + " ms)";
        ++stats_.not_offloaded_deadline;
        deadline_local_->Increment();
      }
      reply.predicted_class = d.best_class;
      reply.confidence = d.best_confidence;
      reply.scores = d.best_scores;
      reply.exit_index = d.best_exit;
      reply.edge_micros = d.edge_micros;
      reply.split = plans[k].split;
      reply.exit_threshold = thresholds[k];
      reply.probe = plans[k].probe;
      if (od.send_probe && !d.offload_request.empty()) {
        // Answered here; the features still go, so the estimates learn the link again.
        Pending probe;
        probe.probe = true;
        probe.deadline_us = deadline_us;
        probe.received_us = in.received_us;
        probe.decision = d;
        ++stats_.probes;
        if (SendToCloud(wire_ids[k], std::move(probe),
                        policy_->options().menu[static_cast<size_t>(plans[k].option)].cloud_ms)) {
          reply.wire_bytes = WireBytes(d.offload_request.size());  // its bytes did go
        }
      }
      reply.total_micros = static_cast<uint64_t>(SteadyMicros() - in.received_us);
      Reply(in.peer, reply,
            reply.source == edge_api::AnswerSource::kEdgeExit ? Outcome::kExit : Outcome::kDegraded,
            in.enveloped);
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
    p.deadline_us = deadline_us;
    p.decision = std::move(d);
    p.plan = plans[k];
    p.exit_threshold = thresholds[k];
    const size_t option = static_cast<size_t>(plans[k].option);
    SendToCloud(wire_ids[k], std::move(p), policy_->options().menu[option].cloud_ms);
  }
}

bool EdgeServer::SendToCloud(uint64_t wire_id, Pending p, double expected_cloud_ms) {
  p.wire_bytes = WireBytes(p.decision.offload_request.size());
  // Never block the loop on a slow link: a send that cannot be queued at once degrades.
  Status sent = cloud_->Send(p.decision.offload_request, 0);
  const bool probe = p.probe;
  const uint64_t bytes = p.wire_bytes;
  const int64_t deadline_us = p.deadline_us;
  pending_.emplace(wire_id, std::move(p));
  expiry_.emplace(deadline_us, wire_id);
  if (!sent.ok()) {
    pending_[wire_id].wire_bytes = 0;
    AnswerDegraded(wire_id, "cloud unreachable: " + sent.ToString());
    return false;
  }
  link_->OnSend(wire_id, bytes, static_cast<int64_t>(expected_cloud_ms * 1000.0));
  if (!probe) {
    stats_.wire_bytes_sent += bytes;
  }
  m_->wire_bytes_sent->Increment(static_cast<double>(bytes));
  return true;
}

void EdgeServer::AnswerDegraded(uint64_t wire_id, const std::string& why) {
  auto it = pending_.find(wire_id);
  if (it == pending_.end()) return;
  Pending& p = it->second;
  if (p.probe) {  // its request was answered when it was sent
    expiry_.erase({p.deadline_us, wire_id});
    pending_.erase(it);
    return;
  }
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
  reply.split = p.plan.split;
  reply.exit_threshold = p.exit_threshold;
  reply.probe = p.plan.probe;
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
  // Every reply teaches the estimator, late ones too (their queue and compute times).
  link_->OnReply(r.request_id, ExchangeReply::FromInferReply(r, WireBytes(bytes.size())));
  auto it = pending_.find(r.request_id);
  if (it == pending_.end()) {
    ++stats_.late_cloud_replies;
    return;
  }
  if (it->second.probe) {
    expiry_.erase({it->second.deadline_us, r.request_id});
    pending_.erase(it);
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
  reply.split = p.plan.split;
  reply.exit_threshold = p.exit_threshold;
  reply.probe = p.plan.probe;
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
    link_->OnTimeout(expiry_.begin()->second);
    timed_out_ = true;
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
    // A timeout is news the guard must act on at once; otherwise every 50 ms is enough.
    UpdatePolicy(/*force=*/timed_out_);
    timed_out_ = false;
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
