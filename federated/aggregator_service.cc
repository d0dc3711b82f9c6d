#include "federated/aggregator_service.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <limits>
#include <set>

#include "common/file_util.h"
#include "common/logging.h"
#include "federated/checkpoint.h"
#include "federated/local_training.h"
#include "federated/wire_convert.h"
#include "split/bundle.h"
#include "split/int8_head.h"
#include "split/vision_bundle.h"

namespace cleave::federated {

using nlohmann::json;
namespace fl = wire::fl;

namespace {

std::shared_ptr<spdlog::logger> Log() { return GetLogger("aggregator"); }

fl::AckReason AckFor(UpdateVerdict verdict) {
  switch (verdict) {
    case UpdateVerdict::kAccepted: return fl::AckReason::kOk;
    case UpdateVerdict::kNoRound: return fl::AckReason::kNoRound;
    case UpdateVerdict::kStaleRound: return fl::AckReason::kStaleRound;
    case UpdateVerdict::kNotSampled: return fl::AckReason::kNotSampled;
    case UpdateVerdict::kDuplicate: return fl::AckReason::kDuplicate;
    case UpdateVerdict::kLate: return fl::AckReason::kLate;
    case UpdateVerdict::kMalformed: return fl::AckReason::kMalformed;
  }
  return fl::AckReason::kInternal;
}

Result<fl::CompressionKind> ToWireCompressionKind(const std::string& kind) {
  if (kind == "none") return fl::CompressionKind::kNone;
  if (kind == "int8") return fl::CompressionKind::kInt8;
  if (kind == "topk") return fl::CompressionKind::kTopK;
  return Status::InvalidArgument("compression.kind '" + kind + "' is not none, int8 or topk");
}

fl::SecureParams ToWireSecureParams(const SecureRoundParams& params, uint32_t client_index) {
  fl::SecureParams out;
  out.secagg = params.secagg;
  out.clip = params.clip;
  out.fractional_bits = static_cast<uint32_t>(std::max(0, params.fractional_bits));
  out.example_scale = params.example_scale;
  out.client_index = client_index;
  return out;
}

}  // namespace

struct AggregatorService::Impl {
  // Where the open secure round is (plan->secure): the protocol's stages in order. kKeys and
  // kShares run before the clients train, kMasked while they train (until RoundDone), kUnmask
  // after it; kClosing: the protocol finished or failed, FinishRound is next.
  enum class SecureStage { kNone, kKeys, kShares, kMasked, kUnmask, kClosing };

  struct Client {
    std::string peer;  // current routing id
    int64_t num_examples = 0;
    int64_t last_seen_micros = 0;
    bool config_sent = false;  // for the open round
    bool gone = false;         // said Bye or timed out; back when it speaks again
  };

  AggregatorOptions options;
  AggregatorModel model;
  Clock* clock = nullptr;
  std::unique_ptr<RouterServer> router;
  std::unique_ptr<RoundEngine> engine;
  std::string layout_sha;
  std::map<std::string, Client> clients;
  std::optional<RoundPlan> plan;
  std::string plan_config_bytes;    // the encoded RoundConfig of the open round (full deadline)
  fl::RoundConfig plan_config;      // to re-send with the time that is left
  std::set<std::string> timed_out;  // clients given up on in the open round
  // Secure rounds: the stage, when it closes at the latest, who is expected to answer it and
  // who did, why the protocol failed ("" = it did not) and its progress for the record.
  SecureStage secure_stage = SecureStage::kNone;
  int64_t stage_deadline_micros = 0;
  std::set<std::string> stage_expected, stage_answered;
  std::string secure_failure;
  json secure_progress;
  // The open round's compression and uplink bytes (accepted update frames; their payloads).
  CompressionConfig round_compression;
  int64_t round_bytes_up = 0;
  int64_t round_payload_bytes_up = 0;
  int64_t trainable_bytes = 0;  // float32 bytes of the open round's trainable entries
  size_t frame_bytes = 0;       // size of the message being handled, as received
  int64_t started_micros = 0;
  std::optional<Evaluation> initial_eval;
  std::map<std::string, uint64_t> counters;  // messages by kind, rejections by reason
  split::SplitVisionNet eval_net{nullptr};
  std::shared_ptr<Metrics> metrics;
  const ServiceMetrics* m = nullptr;
  const FederatedMetrics* fed = nullptr;
  prometheus::Gauge* connected = nullptr;

  void Count(const std::string& what) { ++counters[what]; }

  // Queues `bytes` for `peer`, counting the bytes that were queued.
  Status Send(const std::string& peer, const std::string& bytes) {
    Status s = router->Send(peer, bytes);
    if (s.ok()) m->wire_bytes_sent->Increment(static_cast<double>(WireBytes(bytes.size())));
    return s;
  }

  void SendTo(const std::string& peer, const fl::Message& message) {
    Status s = Send(peer, fl::EncodeMessage(message));
    if (!s.ok()) {
      Count("send_failed");
      Log()->debug("send failed: {}", s.ToString());
    }
  }

  void CountUpdate(UpdateVerdict verdict) {
    switch (verdict) {
      case UpdateVerdict::kAccepted: fed->updates_accepted->Increment(); break;
      case UpdateVerdict::kLate: fed->updates_late->Increment(); break;
      default: fed->updates_rejected->Increment(); break;
    }
  }

  void RefreshConnected() {
    size_t live = 0;
    for (const auto& entry : clients) live += entry.second.gone ? 0 : 1;
    connected->Set(static_cast<double>(live));
  }

  std::vector<ClientInfo> LiveClients() const {
    std::vector<ClientInfo> live;
    for (const auto& [id, c] : clients) {
      if (!c.gone) live.push_back({id, c.num_examples});
    }
    return live;
  }

  Status OpenRound();
  // The setting for `round` (options or the per-round hook; "none" for secure rounds and for
  // a hook result that cannot be used).
  CompressionConfig CompressionFor(int round, bool secure) const;
  // global + the delta decoded from `bytes` (DecodeUpdate against the layout and the open
  // round's mask); InvalidArgument/VersionMismatch for a payload that does not decode.
  Result<Weights> FromCompressed(const std::string& bytes) const;
  void OnRegister(const std::string& peer, const fl::Register& reg);
  void OnHeartbeat(const std::string& peer, const fl::Heartbeat& hb);
  void OnUpdate(const std::string& peer, const fl::Update& update);
  void OnBye(const std::string& peer, const fl::Bye& bye);
  // Secure rounds.
  fl::RoundConfig ConfigFor(const std::string& client_id) const;
  int64_t SecureStageMicros() const;
  void BeginStage(SecureStage stage, std::set<std::string> expected);
  bool StageComplete() const;
  // Moves the open secure round on (closing stages on quorum or timeout); true when the round
  // is ready for CloseRound.
  bool AdvanceSecure();
  void FailSecure(const std::string& reason);
  // The checks every client message of a secure stage passes: a known client, the open secure
  // round, in its roster, the expected stage, not answered yet. Replies with the error and
  // returns false otherwise.
  bool AdmitSecure(const std::string& peer, uint32_t round, const std::string& client_id,
                   SecureStage stage, const char* what);
  void RejectSecure(const std::string& peer, uint32_t round, fl::AckReason reason,
                    const std::string& what, const std::string& why);
  void OnSecAggKeys(const std::string& peer, const fl::SecAggKeys& m);
  void OnSecAggShareKeys(const std::string& peer, const fl::SecAggShareKeys& m);
  void OnSecAggMaskedInput(const std::string& peer, const fl::SecAggMaskedInput& m);
  void OnSecAggUnmaskShares(const std::string& peer, const fl::SecAggUnmaskShares& m);
  void Housekeeping();
  Status CloseRound();
  Status Publish(int round);
  void WriteSummary();
  json SummaryJson() const;
};

Status AggregatorService::Impl::OpenRound() {
  CLEAVE_ASSIGN_OR_RETURN(RoundPlan p, engine->StartRound(LiveClients()));
  fl::RoundConfig config;
  config.round = static_cast<uint32_t>(p.round);
  config.model_name = model.model_name;
  config.layout_sha256 = layout_sha;
  for (const auto& w : engine->global()) config.weights.push_back(ToWireTensor(w));
  config.trainable_set = p.trainable_set == TrainableSet::kAll ? fl::TrainableSet::kAll
                                                               : fl::TrainableSet::kHeadAndExits;
  config.trainable = p.trainable;
  config.local_epochs = static_cast<uint32_t>(p.fit.local_epochs);
  config.batch_size = static_cast<uint32_t>(p.fit.batch_size);
  config.learning_rate = p.fit.lr;
  config.momentum = p.fit.momentum;
  config.weight_decay = p.fit.weight_decay;
  config.proximal_mu = p.fit.proximal_mu;
  config.max_steps = static_cast<uint64_t>(std::max<int64_t>(0, p.fit.max_steps));
  config.deadline_ms = static_cast<uint32_t>(
      std::min<int64_t>(options.engine.deadline_micros / 1000, fl::kMaxRetryAfterMs));
  config.seed = options.engine.seed * 1000003 + p.round;
  if (p.secure) config.secure = ToWireSecureParams(*p.secure, 0);
  round_compression = CompressionFor(p.round, p.secure.has_value());
  if (round_compression.kind != "none") {
    CLEAVE_ASSIGN_OR_RETURN(config.compression.kind, ToWireCompressionKind(round_compression.kind));
    config.compression.topk_fraction = round_compression.topk_fraction;
    config.compression.error_feedback = round_compression.error_feedback;
  }
  round_bytes_up = 0;
  round_payload_bytes_up = 0;
  trainable_bytes = 0;
  for (size_t i = 0; i < p.trainable.size(); ++i) {
    if (p.trainable[i]) trainable_bytes += engine->global()[i].numel() * 4;
  }
  fl::Message message(config);
  CLEAVE_RETURN_IF_ERROR(fl::ValidateMessage(message).WithContext("round config"));
  plan_config_bytes = fl::EncodeMessage(message);
  plan_config = std::move(config);
  timed_out.clear();
  started_micros = clock->NowMicros();
  plan = std::move(p);
  for (size_t i = 0; i < plan->clients.size(); ++i) {
    Client& c = clients[plan->clients[i]];
    // A secure round's config differs per client only by its roster index.
    c.config_sent =
        Send(c.peer, plan->secure ? fl::EncodeMessage(fl::Message(ConfigFor(plan->clients[i])))
                                  : plan_config_bytes)
            .ok();
  }
  Log()->info("round {} open: {} clients sampled (target {}), {} bytes each{}{}", plan->round,
              plan->clients.size(), plan->target, plan_config_bytes.size(),
              plan->secure ? ", secure aggregation" : "",
              round_compression.kind != "none" ? ", " + round_compression.kind + " updates" : "");
  if (plan->secure) {
    secure_failure.clear();
    secure_progress = json();
    BeginStage(SecureStage::kKeys,
               std::set<std::string>(plan->clients.begin(), plan->clients.end()));
  }
  Count("rounds_started");
  fed->round->Set(plan->round);
  return Status::Ok();
}

CompressionConfig AggregatorService::Impl::CompressionFor(int round, bool secure) const {
  if (secure) return CompressionConfig{};  // the masked input is never compressed
  if (!options.compression_for_round) return options.compression;
  CompressionConfig c = options.compression_for_round(round);
  Status ok = c.Validate();
  if (ok.ok()) {
    ok = CheckCompressionCompatible(c, options.engine.secure.enabled, options.strategy.name);
  }
  if (!ok.ok()) {
    Log()->error("round {}: compression setting refused ({}); sending updates uncompressed", round,
                 ok.ToString());
    return CompressionConfig{};
  }
  return c;
}

Result<Weights> AggregatorService::Impl::FromCompressed(const std::string& bytes) const {
  Result<Weights> decoded = DecodeUpdate(bytes, engine->layout(), plan->trainable);
  if (!decoded.ok()) return decoded.status().WithContext("compressed update");
  const Weights& delta = *decoded;
  const Weights& global = engine->global();
  Weights out(global.size());
  try {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < global.size(); ++i) {
      out[i] = plan->trainable[i] ? global[i] + delta[i] : global[i];
    }
  } catch (const c10::Error& e) {
    return Status::Internal(std::string("applying a compressed update: ") +
                            e.what_without_backtrace());
  }
  return out;
}

void AggregatorService::Impl::OnRegister(const std::string& peer, const fl::Register& reg) {
  fl::RegisterReply reply;
  reply.poll_interval_ms = static_cast<uint32_t>(options.poll_interval_ms);
  reply.round = static_cast<uint32_t>(engine->rounds_completed() + (plan ? 1 : 0));
  if (reg.layout_sha256 != layout_sha) {
    reply.accepted = false;
    reply.error = "model mismatch: this aggregator coordinates model '" + model.model_name +
                  "' (layout " + layout_sha.substr(0, 12) + "...), the client has '" +
                  reg.model_name + "' (" + reg.layout_sha256.substr(0, 12) + "...)";
    Count("register_refused");
    Log()->warn("refused client '{}': {}", reg.client_id, reply.error);
  } else {
    Client& c = clients[reg.client_id];
    c.peer = peer;
    c.num_examples = static_cast<int64_t>(reg.num_examples);
    c.last_seen_micros = clock->NowMicros();
    c.gone = false;
    reply.accepted = true;
    Count("registered");
    Log()->info("client '{}' registered ({} examples)", reg.client_id, reg.num_examples);
  }
  SendTo(peer, fl::Message(reply));
}

void AggregatorService::Impl::OnHeartbeat(const std::string& peer, const fl::Heartbeat& hb) {
  auto it = clients.find(hb.client_id);
  if (it == clients.end()) {
    fl::RegisterReply reply;
    reply.accepted = false;
    reply.error = "unknown client '" + hb.client_id + "': register first";
    SendTo(peer, fl::Message(reply));
    return;
  }
  Client& c = it->second;
  c.peer = peer;
  c.last_seen_micros = clock->NowMicros();
  c.gone = false;
  const bool pending =
      plan && engine->round_open() &&
      std::binary_search(plan->clients.begin(), plan->clients.end(), hb.client_id) &&
      hb.training_round != static_cast<uint32_t>(plan->round);
  if (pending) {
    const auto waiting = engine->Pending();
    // A secure round can take a client in only until its keys stage closes.
    const bool can_join = !plan->secure || (secure_stage == SecureStage::kKeys &&
                                            !stage_answered.count(hb.client_id));
    if (can_join && std::find(waiting.begin(), waiting.end(), hb.client_id) != waiting.end()) {
      // Re-sent (the first push may have been lost), with the deadline that is left.
      fl::RoundConfig again = ConfigFor(hb.client_id);
      again.deadline_ms =
          static_cast<uint32_t>(std::max<int64_t>(1, (engine->MicrosUntilDeadline() + 999) / 1000));
      if (again.time_budget_ms > again.deadline_ms) again.time_budget_ms = again.deadline_ms;
      c.config_sent = Send(peer, fl::EncodeMessage(fl::Message(again))).ok();
      return;
    }
  }
  fl::Wait wait;
  wait.round = static_cast<uint32_t>(engine->rounds_completed() + (plan ? 1 : 0));
  wait.retry_after_ms = static_cast<uint32_t>(std::max<int64_t>(1, options.poll_interval_ms));
  wait.reason = plan ? "round in progress" : "waiting for clients";
  SendTo(peer, fl::Message(wait));
}

void AggregatorService::Impl::OnUpdate(const std::string& peer, const fl::Update& update) {
  auto it = clients.find(update.client_id);
  if (it == clients.end()) {
    Count("update_unknown_client");
    fed->updates_rejected->Increment();
    SendTo(peer, fl::Message(fl::MakeUpdateAck(update.round, fl::AckReason::kUnknownClient,
                                               "register first")));
    return;
  }
  it->second.peer = peer;
  it->second.last_seen_micros = clock->NowMicros();
  if (plan && update.round == static_cast<uint32_t>(plan->round) &&
      timed_out.count(update.client_id)) {
    // It was given up on (silent too long) and the round moved on without it.
    Count("update_late");
    fed->updates_late->Increment();
    SendTo(peer,
           fl::Message(fl::MakeUpdateAck(update.round, fl::AckReason::kLate,
                                         "client was silent for more than " +
                                             std::to_string(options.client_timeout_ms) +
                                             " ms and was counted as failed for this round")));
    return;
  }
  if (plan && plan->secure && update.round == static_cast<uint32_t>(plan->round)) {
    // Never decoded, never aggregated: the engine refuses it (and counts the rejection).
    ClientUpdate empty;
    empty.client_id = update.client_id;
    std::string why;
    const UpdateVerdict v = engine->Submit(plan->round, std::move(empty), &why);
    Count("update_plain_in_secure_round");
    CountUpdate(v);
    Log()->warn("refused a plain update from '{}' in secure round {}", update.client_id,
                update.round);
    SendTo(peer, fl::Message(fl::MakeUpdateAck(update.round, fl::AckReason::kRejected, why)));
    return;
  }
  if (!plan || update.round != static_cast<uint32_t>(plan->round)) {
    // Let the engine classify (no round / stale) so the counts live in one place.
    ClientUpdate empty;
    empty.client_id = update.client_id;
    std::string why;
    const UpdateVerdict v = engine->Submit(static_cast<int>(update.round), std::move(empty), &why);
    Count(std::string("update_") + UpdateVerdictName(v));
    CountUpdate(v);
    SendTo(peer, fl::Message(fl::MakeUpdateAck(update.round, AckFor(v), why)));
    return;
  }
  ClientUpdate u;
  u.client_id = update.client_id;
  u.num_examples = static_cast<int64_t>(update.num_examples);
  u.train_loss = update.train_loss;
  const bool compressed = !update.compressed.empty();
  Result<Weights> weights =
      compressed ? FromCompressed(update.compressed)
      : update.is_delta
          ? Result<Weights>(Status::Unimplemented("delta updates are not supported"))
          : MaskedFromWire(update.tensors, plan->trainable, engine->layout(), engine->global());
  std::string why;
  UpdateVerdict verdict;
  fl::AckReason reason;
  if (!weights.ok()) {
    // Shape/count and payload errors still go through the engine so the round's counters see
    // them.
    why = weights.status().message();
    u.weights.clear();
    verdict = engine->Submit(plan->round, std::move(u), nullptr);
    const fl::AckReason bad = compressed ? fl::AckReason::kMalformed : fl::AckReason::kWrongShape;
    reason = verdict == UpdateVerdict::kMalformed ? bad : AckFor(verdict);
    if (compressed) Count("update_compressed_undecodable");
  } else {
    u.weights = std::move(*weights);
    verdict = engine->Submit(plan->round, std::move(u), &why);
    reason = AckFor(verdict);
  }
  Count(std::string("update_") + UpdateVerdictName(verdict));
  CountUpdate(verdict);
  if (verdict == UpdateVerdict::kAccepted) {
    round_bytes_up += static_cast<int64_t>(frame_bytes);
    if (compressed) {
      round_payload_bytes_up += static_cast<int64_t>(update.compressed.size());
    } else {
      for (const auto& t : update.tensors) round_payload_bytes_up += t.data.size();
    }
  }
  if (verdict != UpdateVerdict::kAccepted) {
    Log()->warn("update from '{}' for round {} rejected ({}): {}", update.client_id, update.round,
                UpdateVerdictName(verdict), why);
  }
  SendTo(peer, fl::Message(fl::MakeUpdateAck(update.round, reason, why)));
}

void AggregatorService::Impl::OnBye(const std::string& peer, const fl::Bye& bye) {
  (void)peer;
  auto it = clients.find(bye.client_id);
  if (it == clients.end()) return;
  it->second.gone = true;
  if (plan) engine->ReportFailure(plan->round, bye.client_id, "left: " + bye.message);
  Log()->info("client '{}' left ({})", bye.client_id, fl::ByeReasonName(bye.reason));
}

// ---- Secure rounds (federated/secure_round.h; the same stages cleave sim drives in process) ----

fl::RoundConfig AggregatorService::Impl::ConfigFor(const std::string& client_id) const {
  fl::RoundConfig config = plan_config;
  if (plan && plan->secure) {
    // The roster is plan->clients (sorted): a client's index is its position there.
    const auto at = std::lower_bound(plan->clients.begin(), plan->clients.end(), client_id);
    config.secure =
        ToWireSecureParams(*plan->secure, static_cast<uint32_t>(at - plan->clients.begin()));
  }
  return config;
}

int64_t AggregatorService::Impl::SecureStageMicros() const {
  return std::max<int64_t>(
      1000, static_cast<int64_t>(static_cast<double>(options.engine.deadline_micros) *
                                 options.secure_stage_fraction));
}

void AggregatorService::Impl::BeginStage(SecureStage stage, std::set<std::string> expected) {
  secure_stage = stage;
  stage_expected = std::move(expected);
  stage_answered.clear();
  stage_deadline_micros = clock->NowMicros() + SecureStageMicros();
}

bool AggregatorService::Impl::StageComplete() const {
  const std::vector<std::string> pending = engine->Pending();
  const std::set<std::string> still_in(pending.begin(), pending.end());
  for (const std::string& id : stage_expected) {
    if (stage_answered.count(id)) continue;
    auto it = clients.find(id);
    const bool gone = it == clients.end() || it->second.gone;
    // Before the unmask stage a client the engine counts as answered has failed (it left,
    // timed out or declined); in the unmask stage every survivor has answered the engine.
    const bool dropped = gone || (secure_stage != SecureStage::kUnmask && !still_in.count(id));
    if (!dropped) return false;
  }
  return true;
}

void AggregatorService::Impl::FailSecure(const std::string& reason) {
  secure_failure = reason;
  secure_stage = SecureStage::kClosing;
  Count("secure_rounds_failed");
  Log()->warn("round {}: secure aggregation failed: {}", plan->round, reason);
  // Nobody can contribute any more: let the round close now instead of at its deadline.
  for (const std::string& id : engine->Pending()) {
    engine->ReportFailure(plan->round, id, "secure aggregation failed");
  }
}

bool AggregatorService::Impl::AdvanceSecure() {
  SecureRound* secure = engine->secure_round();
  if (secure == nullptr) return true;
  if (secure_stage != SecureStage::kClosing &&
      secure->stage() == secagg::SecAggServer::Stage::kFailed) {
    FailSecure(secure->failure_reason());
  }
  const int64_t now = clock->NowMicros();
  const bool stage_over = StageComplete() || now >= stage_deadline_micros;
  const int round = plan->round;
  switch (secure_stage) {
    case SecureStage::kKeys: {
      if (!stage_over) return false;
      Result<std::map<std::string, secagg::KeyDirectory>> directories =
          secure->CloseAdvertiseKeys();
      if (!directories.ok()) {
        FailSecure(directories.status().message());
        return false;
      }
      std::set<std::string> next;
      for (const std::string& id : plan->clients) {
        auto d = directories->find(id);
        if (d == directories->end() || !stage_answered.count(id)) {
          engine->ReportFailure(round, id, "did not advertise keys in time");
          continue;
        }
        fl::SecAggKeyDirectory message;
        message.round = static_cast<uint32_t>(round);
        message.directory = std::move(d->second);
        SendTo(clients[id].peer, fl::Message(std::move(message)));
        next.insert(id);
      }
      Log()->info("round {}: {} of {} clients advertised keys; key directories sent", round,
                  next.size(), plan->clients.size());
      BeginStage(SecureStage::kShares, std::move(next));
      return false;
    }
    case SecureStage::kShares: {
      if (!stage_over) return false;
      Result<std::map<std::string, secagg::ForwardedShares>> forwarded = secure->CloseShareKeys();
      if (!forwarded.ok()) {
        FailSecure(forwarded.status().message());
        return false;
      }
      size_t sent = 0;
      for (const std::string& id : stage_expected) {
        auto f = forwarded->find(id);
        if (f == forwarded->end() || !stage_answered.count(id)) {
          engine->ReportFailure(round, id, "did not share keys in time");
          continue;
        }
        fl::SecAggForwardedShares message;
        message.round = static_cast<uint32_t>(round);
        message.forwarded = std::move(f->second);
        SendTo(clients[id].peer, fl::Message(std::move(message)));
        ++sent;
      }
      Log()->info("round {}: {} clients shared keys; shares forwarded, training", round, sent);
      secure_stage = SecureStage::kMasked;
      stage_expected.clear();
      stage_answered.clear();
      return false;
    }
    case SecureStage::kMasked: {
      if (!engine->RoundDone()) return false;
      Result<SecureRound::UnmaskStage> unmask = secure->CloseMaskedInput();
      if (!unmask.ok()) {
        FailSecure(unmask.status().message());
        return true;
      }
      fl::SecAggUnmaskRequest request;
      request.round = static_cast<uint32_t>(round);
      request.request = unmask->request;
      const std::string bytes = fl::EncodeMessage(fl::Message(request));
      for (const std::string& id : unmask->survivors) {
        if (Status st = Send(clients[id].peer, bytes); !st.ok()) Count("send_failed");
      }
      Log()->info("round {}: {} masked inputs; asking the survivors to unmask", round,
                  unmask->survivors.size());
      BeginStage(SecureStage::kUnmask,
                 std::set<std::string>(unmask->survivors.begin(), unmask->survivors.end()));
      return false;
    }
    case SecureStage::kUnmask:
      if (!stage_over) return false;
      Log()->info("round {}: {} of {} survivors sent their unmasking shares", round,
                  stage_answered.size(), stage_expected.size());
      secure_stage = SecureStage::kClosing;
      return true;
    case SecureStage::kClosing:
    case SecureStage::kNone:
    default: return engine->RoundDone();
  }
}

void AggregatorService::Impl::RejectSecure(const std::string& peer, uint32_t round,
                                           fl::AckReason reason, const std::string& what,
                                           const std::string& why) {
  Count(std::string("secagg_rejected_") + fl::AckReasonName(reason));
  Log()->warn("{} for round {} rejected ({}): {}", what, round, fl::AckReasonName(reason), why);
  SendTo(peer, fl::Message(fl::MakeUpdateAck(round, reason, what + ": " + why)));
}

bool AggregatorService::Impl::AdmitSecure(const std::string& peer, uint32_t round,
                                          const std::string& client_id, SecureStage stage,
                                          const char* what) {
  auto it = clients.find(client_id);
  if (it == clients.end()) {
    RejectSecure(peer, round, fl::AckReason::kUnknownClient, what, "register first");
    return false;
  }
  it->second.peer = peer;
  it->second.last_seen_micros = clock->NowMicros();
  it->second.gone = false;
  if (!plan) {
    RejectSecure(peer, round, fl::AckReason::kNoRound, what, "no round is open");
    return false;
  }
  if (round != static_cast<uint32_t>(plan->round)) {
    RejectSecure(peer, round, fl::AckReason::kStaleRound, what,
                 "the open round is " + std::to_string(plan->round));
    return false;
  }
  SecureRound* secure = engine->secure_round();
  if (!plan->secure || secure == nullptr) {
    RejectSecure(peer, round, fl::AckReason::kRejected, what,
                 "round " + std::to_string(round) + " does not use secure aggregation");
    return false;
  }
  if (!secure->IndexOf(client_id).ok()) {
    RejectSecure(peer, round, fl::AckReason::kNotSampled, what,
                 "client '" + client_id + "' is not in this round's roster");
    return false;
  }
  if (secure_stage != stage) {
    const bool late = static_cast<int>(secure_stage) > static_cast<int>(stage);
    RejectSecure(peer, round, late ? fl::AckReason::kLate : fl::AckReason::kRejected, what,
                 late ? "that stage of the round is closed" : "that stage has not begun");
    return false;
  }
  if (!stage_expected.count(client_id)) {
    RejectSecure(peer, round, fl::AckReason::kLate, what,
                 "client '" + client_id + "' dropped out of this round earlier");
    return false;
  }
  if (stage_answered.count(client_id)) {
    RejectSecure(peer, round, fl::AckReason::kDuplicate, what,
                 "client '" + client_id + "' already answered this stage");
    return false;
  }
  return true;
}

void AggregatorService::Impl::OnSecAggKeys(const std::string& peer, const fl::SecAggKeys& m) {
  if (!AdmitSecure(peer, m.round, m.client_id, SecureStage::kKeys, "keys")) return;
  if (Status s = engine->secure_round()->HandleAdvertiseKeys(m.client_id, m.keys); !s.ok()) {
    RejectSecure(peer, m.round, fl::AckReason::kRejected, "keys", s.message());
    return;
  }
  stage_answered.insert(m.client_id);
}

void AggregatorService::Impl::OnSecAggShareKeys(const std::string& peer,
                                                const fl::SecAggShareKeys& m) {
  if (!AdmitSecure(peer, m.round, m.client_id, SecureStage::kShares, "shares")) return;
  if (Status s = engine->secure_round()->HandleShareKeys(m.client_id, m.shares); !s.ok()) {
    RejectSecure(peer, m.round, fl::AckReason::kRejected, "shares", s.message());
    return;
  }
  stage_answered.insert(m.client_id);
}

void AggregatorService::Impl::OnSecAggMaskedInput(const std::string& peer,
                                                  const fl::SecAggMaskedInput& m) {
  auto it = clients.find(m.client_id);
  if (it == clients.end()) {
    Count("update_unknown_client");
    fed->updates_rejected->Increment();
    SendTo(peer, fl::Message(
                     fl::MakeUpdateAck(m.round, fl::AckReason::kUnknownClient, "register first")));
    return;
  }
  it->second.peer = peer;
  it->second.last_seen_micros = clock->NowMicros();
  const bool this_round = plan && m.round == static_cast<uint32_t>(plan->round);
  if (this_round && plan->secure && secure_stage != SecureStage::kMasked) {
    // Early (the key exchange is still on) or late (unmasking began): not the client's answer.
    const bool late = static_cast<int>(secure_stage) > static_cast<int>(SecureStage::kMasked);
    RejectSecure(peer, m.round, late ? fl::AckReason::kLate : fl::AckReason::kRejected,
                 "masked input",
                 late ? "round " + std::to_string(plan->round) + " already closed"
                      : "the key exchange of this round has not finished");
    fed->updates_rejected->Increment();
    return;
  }
  if (this_round && timed_out.count(m.client_id)) {
    Count("update_late");
    fed->updates_late->Increment();
    SendTo(peer, fl::Message(fl::MakeUpdateAck(m.round, fl::AckReason::kLate,
                                               "client was silent for more than " +
                                                   std::to_string(options.client_timeout_ms) +
                                                   " ms and was counted as failed")));
    return;
  }
  // The engine classifies everything else (no round, stale, plain round, not sampled,
  // duplicate, late, refused by the protocol) and keeps the counts.
  std::string why;
  const UpdateVerdict verdict =
      engine->SubmitMasked(static_cast<int>(m.round), m.client_id, m.input, &why);
  Count(std::string("masked_input_") + UpdateVerdictName(verdict));
  CountUpdate(verdict);
  fl::AckReason reason = AckFor(verdict);
  if (verdict == UpdateVerdict::kMalformed) reason = fl::AckReason::kRejected;
  if (verdict == UpdateVerdict::kAccepted) {
    round_bytes_up += static_cast<int64_t>(frame_bytes);
    round_payload_bytes_up += static_cast<int64_t>(m.input.masked.size() * sizeof(uint32_t));
  }
  if (verdict != UpdateVerdict::kAccepted) {
    Log()->warn("masked input from '{}' for round {} rejected ({}): {}", m.client_id, m.round,
                UpdateVerdictName(verdict), why);
  }
  SendTo(peer, fl::Message(fl::MakeUpdateAck(m.round, reason, why)));
}

void AggregatorService::Impl::OnSecAggUnmaskShares(const std::string& peer,
                                                   const fl::SecAggUnmaskShares& m) {
  if (!AdmitSecure(peer, m.round, m.client_id, SecureStage::kUnmask, "unmasking shares")) return;
  if (Status s = engine->secure_round()->HandleUnmaskShares(m.client_id, m.shares); !s.ok()) {
    RejectSecure(peer, m.round, fl::AckReason::kRejected, "unmasking shares", s.message());
    return;
  }
  stage_answered.insert(m.client_id);
}

void AggregatorService::Impl::Housekeeping() {
  const int64_t now = clock->NowMicros();
  for (auto& [id, c] : clients) {
    if (c.gone || now - c.last_seen_micros <= options.client_timeout_ms * 1000) continue;
    c.gone = true;
    Count("client_timeouts");
    Log()->warn("client '{}' silent for {} ms; considered gone", id,
                (now - c.last_seen_micros) / 1000);
    if (plan) {
      engine->ReportFailure(plan->round, id, "timed out");
      timed_out.insert(id);
    }
  }
}

Status AggregatorService::Impl::Publish(int round) {
  CLEAVE_ASSIGN_OR_RETURN(Bundle bundle, Bundle::Open(model.base_bundle));
  split::VisionBundleParts parts;
  parts.head_int8 = true;
  CLEAVE_ASSIGN_OR_RETURN(split::VisionSplitModel m, split::ReadVisionBundle(bundle, parts));
  CLEAVE_RETURN_IF_ERROR(SetWeights(*m.net, engine->global()));
  if (m.int8_head) {
    m.int8_head.reset();
    if (model.eval_data.size() > 0) {
      // Re-quantize the head for the new weights (static calibration on server-side images).
      const torch::Tensor calib =
          model.eval_data.images.narrow(0, 0, std::min<int64_t>(512, model.eval_data.size()));
      m.net->eval();
      CLEAVE_ASSIGN_OR_RETURN(split::Int8Head head,
                              split::Int8Head::Quantize(*m.net, m.head_end(), calib));
      m.int8_head = std::make_shared<split::Int8Head>(std::move(head));
    }
  }
  m.training["federated_round"] = round;
  if (engine->history().back().eval_accuracy) {
    m.evaluation["federated_test_accuracy"] = *engine->history().back().eval_accuracy;
  }
  const std::filesystem::path dir =
      std::filesystem::path(options.publish_dir) / ("round-" + std::to_string(round));
  CLEAVE_RETURN_IF_ERROR(split::WriteVisionBundle(dir, m));
  if (!options.signing_key_pem.empty()) {
    CLEAVE_RETURN_IF_ERROR(
        SignBundle(dir, options.signing_key_pem).WithContext("signing " + dir.string()));
  }
  Log()->info("published {}", dir.string());
  return Status::Ok();
}

Status AggregatorService::Impl::CloseRound() {
  if (const SecureRound* secure = engine->secure_round()) {
    const secagg::SecAggProgress p = secure->progress();
    secure_progress = {{"advertised", p.advertised},
                       {"shared", p.shared},
                       {"masked", p.masked},
                       {"unmasked", p.unmasked}};
  }
  const auto compute_start = std::chrono::steady_clock::now();
  CLEAVE_ASSIGN_OR_RETURN(RoundRecord record, engine->FinishRound());
  if (plan->secure) {
    RoundRecord* r = engine->last_record();
    r->extra["secure_stages"] = secure_progress;
    if (!r->applied && !secure_failure.empty()) {
      r->failure = "secure aggregation failed: " + secure_failure + " (" + r->failure + ")";
    }
    record = *r;
  }
  secure_stage = SecureStage::kNone;
  stage_expected.clear();
  stage_answered.clear();
  m->compute_seconds->Observe(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - compute_start).count());
  fed->updates_failed->Increment(record.failed + record.missing);
  fed->round_duration_seconds->Observe(record.seconds);
  if (record.extra.contains("strategy") && record.extra["strategy"].contains("dp")) {
    const nlohmann::json& epsilon = record.extra["strategy"]["dp"]["epsilon"];
    fed->dp_epsilon->Set(epsilon.is_number() ? epsilon.get<double>()
                                             : std::numeric_limits<double>::infinity());
  }
  RoundRecord* stored = engine->last_record();
  stored->extra["bytes_down"] =
      static_cast<int64_t>(plan->clients.size() * plan_config_bytes.size());
  // Uplink as received: the accepted update frames (compressed or not).
  stored->extra["bytes_up"] = round_bytes_up;
  json compression = round_compression.ToJson();
  compression.erase("seed");  // not the aggregator's: clients draw from the round's seed
  compression["payload_bytes_up"] = round_payload_bytes_up;
  compression["dense_bytes_up"] = static_cast<int64_t>(record.succeeded) * trainable_bytes;
  stored->extra["compression"] = compression;
  plan.reset();
  plan_config_bytes.clear();
  for (auto& [id, c] : clients) c.config_sent = false;
  Log()->info("round {} {}: {} ok, {} failed, {} late, {} rejected, {} missing{}", record.round,
              record.applied ? "applied" : "NOT applied", record.succeeded, record.failed,
              record.late, record.rejected, record.missing,
              record.eval_accuracy ? ", test accuracy " + std::to_string(*record.eval_accuracy)
                                   : std::string());
  if (!record.applied) Log()->warn("{}", record.failure);
  if (!options.checkpoint.empty()) {
    CLEAVE_RETURN_IF_ERROR(SaveCheckpoint(options.checkpoint, *engine));
  }
  if (!options.publish_dir.empty() && record.applied) {
    if (Status s = Publish(record.round); !s.ok()) {
      // Publishing is best effort: the round and its checkpoint stand.
      Count("publish_failed");
      Log()->error("publishing round {} failed: {}", record.round, s.ToString());
    }
  }
  WriteSummary();
  return Status::Ok();
}

json AggregatorService::Impl::SummaryJson() const {
  json rounds = json::array();
  for (const auto& r : engine->history()) rounds.push_back(r.ToJson());
  json j = {{"endpoint", router->endpoint()},
            {"rounds_completed", engine->rounds_completed()},
            {"rounds_planned", options.rounds},
            {"strategy", engine->strategy().name()},
            {"engine", options.engine.ToJson()},
            {"model", model.model_name},
            {"rounds", rounds},
            {"counters", counters},
            {"clients", clients.size()}};
  if (initial_eval) j["initial_accuracy"] = initial_eval->accuracy;
  return j;
}

void AggregatorService::Impl::WriteSummary() {
  if (options.summary_file.empty()) return;
  if (Status s = WriteFileAtomic(options.summary_file, SummaryJson().dump(2) + "\n"); !s.ok()) {
    Log()->error("cannot write summary: {}", s.ToString());
  }
}

AggregatorService::AggregatorService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AggregatorService::~AggregatorService() = default;

const std::string& AggregatorService::endpoint() const { return impl_->router->endpoint(); }
json AggregatorService::Summary() const { return impl_->SummaryJson(); }

Result<std::unique_ptr<AggregatorService>> AggregatorService::Create(AggregatorOptions options,
                                                                     AggregatorModel model,
                                                                     TransportContext& context,
                                                                     Clock& clock) {
  if (options.rounds < 1) return Status::InvalidArgument("aggregator: rounds must be >= 1");
  if (options.poll_interval_ms < 1 || options.client_timeout_ms < options.poll_interval_ms) {
    return Status::InvalidArgument(
        "need poll_interval_ms >= 1 and client_timeout_ms >= poll_interval_ms");
  }
  if (!options.publish_dir.empty() && model.base_bundle.empty()) {
    return Status::InvalidArgument("aggregator: publishing bundles needs a base bundle");
  }
  auto impl = std::make_unique<Impl>();
  impl->clock = &clock;
  impl->metrics = options.metrics ? options.metrics : std::make_shared<Metrics>();
  impl->m = &impl->metrics->Service("aggregator");
  impl->fed = &impl->metrics->Federated();
  impl->connected = &impl->metrics->ConnectedEdges();
  split::SplitVisionNet probe(model.spec);
  const WeightsLayout layout = LayoutOf(*probe);
  impl->layout_sha = LayoutSha256(layout);
  CLEAVE_RETURN_IF_ERROR(options.compression.Validate().WithContext("aggregator"));
  CLEAVE_RETURN_IF_ERROR(CheckCompressionCompatible(options.compression,
                                                    options.engine.secure.enabled,
                                                    options.strategy.name)
                             .WithContext("aggregator"));
  CLEAVE_RETURN_IF_ERROR(ToWireCompressionKind(options.compression.kind).status());
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<Strategy> strategy, MakeStrategy(options.strategy));
  options.engine.split_after = model.spec.split_after;
  CLEAVE_ASSIGN_OR_RETURN(impl->engine, RoundEngine::Create(options.engine, std::move(strategy),
                                                            layout, model.initial, clock));
  if (!options.checkpoint.empty()) {
    Status restored = RestoreCheckpoint(options.checkpoint, *impl->engine);
    if (restored.ok()) {
      Log()->info("resumed from {} after round {}", options.checkpoint,
                  impl->engine->rounds_completed());
    } else if (restored.code() != StatusCode::kNotFound) {
      return restored;  // never silently start over on a damaged checkpoint
    }
  }
  if (model.eval_data.size() > 0) {
    impl->eval_net = split::SplitVisionNet(model.spec);
    split::SplitVisionNet net = impl->eval_net;
    const split::LabeledImages data = model.eval_data;
    impl->engine->set_evaluator(
        [net, data](const Weights& w) mutable { return EvaluateWeights(*net, w, data); });
    CLEAVE_ASSIGN_OR_RETURN(Evaluation e,
                            EvaluateWeights(*impl->eval_net, impl->engine->global(), data));
    impl->initial_eval = e;
    Log()->info("test accuracy of the starting model {:.4f}", e.accuracy);
  }
  SocketOptions socket_options;
  socket_options.max_message_bytes = options.max_message_bytes;
  socket_options.configure = options.socket_configure;
  CLEAVE_ASSIGN_OR_RETURN(impl->router,
                          RouterServer::Bind(context, options.listen, socket_options));
  impl->options = std::move(options);
  impl->model = std::move(model);
  impl->fed->round->Set(impl->engine->rounds_completed());
  if (!impl->options.ready_file.empty()) {
    json ready = impl->options.ready_extra.is_object() ? impl->options.ready_extra : json::object();
    ready["endpoint"] = impl->router->endpoint();
    ready["pid"] = ::getpid();
    CLEAVE_RETURN_IF_ERROR(WriteFileAtomic(impl->options.ready_file, ready.dump()));
  }
  return std::unique_ptr<AggregatorService>(new AggregatorService(std::move(impl)));
}

Status AggregatorService::Run(const std::function<bool()>& stop) {
  Impl& s = *impl_;
  const int64_t first_wait_start = s.clock->NowMicros();
  const int wait_for =
      s.options.wait_for_clients > 0 ? s.options.wait_for_clients : s.options.engine.min_clients;
  s.WriteSummary();
  while (s.engine->rounds_completed() < s.options.rounds) {
    if (stop && stop()) {
      s.WriteSummary();
      return Status::FailedPrecondition("aggregator: stopped after round " +
                                        std::to_string(s.engine->rounds_completed()));
    }
    const int64_t now = s.clock->NowMicros();
    if (!s.plan) {
      const auto live = s.LiveClients();
      int with_data = 0;
      for (const auto& c : live) with_data += c.num_examples > 0;
      const bool first = s.engine->rounds_completed() == 0 && s.counters["rounds_started"] == 0;
      const bool waited_enough = now - first_wait_start >= s.options.start_timeout_ms * 1000;
      if (with_data >= s.options.engine.min_clients &&
          (!first || with_data >= wait_for || waited_enough)) {
        if (Status st = s.OpenRound(); !st.ok()) {
          Log()->warn("cannot open a round yet: {}", st.ToString());
        }
      }
    } else if (s.plan->secure ? s.AdvanceSecure() : s.engine->RoundDone()) {
      CLEAVE_RETURN_IF_ERROR(s.CloseRound());
      continue;
    }
    int timeout_ms = static_cast<int>(std::max<int64_t>(1, s.options.poll_interval_ms));
    if (s.plan) {
      int64_t until = s.engine->MicrosUntilDeadline();
      if (s.plan->secure && s.secure_stage != Impl::SecureStage::kMasked) {
        until = std::max<int64_t>(0, s.stage_deadline_micros - s.clock->NowMicros());
      }
      timeout_ms = static_cast<int>(std::clamp<int64_t>((until + 999) / 1000, 1, timeout_ms));
    }
    Result<std::optional<Envelope>> in = s.router->Receive(timeout_ms);
    if (!in.ok()) return in.status().WithContext("aggregator socket");
    s.Housekeeping();
    if (!in->has_value()) {
      s.RefreshConnected();
      continue;
    }
    const Envelope& env = **in;
    s.frame_bytes = env.body.size();
    s.m->wire_bytes_received->Increment(static_cast<double>(WireBytes(env.body.size())));
    Result<fl::Message> message = fl::DecodeMessage(env.body);
    if (!message.ok()) {
      s.m->Count(Outcome::kRejected);
      s.Count("malformed_messages");
      Log()->warn("malformed message ({} bytes): {}", env.body.size(), message.status().ToString());
      s.SendTo(env.peer, fl::Message(fl::MakeUpdateAck(0, fl::AckReason::kMalformed,
                                                       message.status().ToString())));
      continue;
    }
    s.Count(std::string("received_") + fl::MessageKindName(message->body));
    s.m->Count(Outcome::kOk);
    std::visit(
        [&](const auto& body) {
          using T = std::decay_t<decltype(body)>;
          if constexpr (std::is_same_v<T, fl::Register>) {
            s.OnRegister(env.peer, body);
          } else if constexpr (std::is_same_v<T, fl::Heartbeat>) {
            s.OnHeartbeat(env.peer, body);
          } else if constexpr (std::is_same_v<T, fl::Update>) {
            s.OnUpdate(env.peer, body);
          } else if constexpr (std::is_same_v<T, fl::Bye>) {
            s.OnBye(env.peer, body);
          } else if constexpr (std::is_same_v<T, fl::SecAggKeys>) {
            s.OnSecAggKeys(env.peer, body);
          } else if constexpr (std::is_same_v<T, fl::SecAggShareKeys>) {
            s.OnSecAggShareKeys(env.peer, body);
          } else if constexpr (std::is_same_v<T, fl::SecAggMaskedInput>) {
            s.OnSecAggMaskedInput(env.peer, body);
          } else if constexpr (std::is_same_v<T, fl::SecAggUnmaskShares>) {
            s.OnSecAggUnmaskShares(env.peer, body);
          } else {
            s.Count("unexpected_messages");  // server-to-client kinds sent to the server
          }
        },
        message->body);
    s.RefreshConnected();
  }
  for (const auto& [id, c] : s.clients) {
    // Also to clients considered gone: one that was only slow must learn that it is over.
    fl::Bye bye;
    bye.reason = fl::ByeReason::kFinished;
    bye.message = "all " + std::to_string(s.options.rounds) + " rounds done";
    s.SendTo(c.peer, fl::Message(bye));
  }
  s.WriteSummary();
  return Status::Ok();
}

}  // namespace cleave::federated
