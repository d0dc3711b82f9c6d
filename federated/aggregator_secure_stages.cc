// The secure-aggregation stages of an AggregatorService round (federated/secure_round.h; the
// same stages cleave sim drives in process): per-client configs, stage bookkeeping and
// timeouts, advancing keys -> shares -> masked inputs -> unmasking, and the handlers of the
// clients' SecAgg messages.
#include "federated/aggregator_service_internal.h"

#include <algorithm>

namespace cleave::federated {

using internal::AckFor;
using internal::Log;
using internal::ToWireSecureParams;

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

bool AggregatorService::Impl::AdmitSecure(const Envelope& from, uint32_t round,
                                          const std::string& client_id, SecureStage stage,
                                          const char* what) {
  if (!VouchFor(from, client_id, Claim::kRoundMessage, what, round)) return false;
  const std::string& peer = from.peer;
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

void AggregatorService::Impl::OnSecAggKeys(const Envelope& from, const fl::SecAggKeys& m) {
  if (!AdmitSecure(from, m.round, m.client_id, SecureStage::kKeys, "keys")) return;
  if (Status s = engine->secure_round()->HandleAdvertiseKeys(m.client_id, m.keys); !s.ok()) {
    RejectSecure(from.peer, m.round, fl::AckReason::kRejected, "keys", s.message());
    return;
  }
  stage_answered.insert(m.client_id);
}

void AggregatorService::Impl::OnSecAggShareKeys(const Envelope& from,
                                                const fl::SecAggShareKeys& m) {
  if (!AdmitSecure(from, m.round, m.client_id, SecureStage::kShares, "shares")) return;
  if (Status s = engine->secure_round()->HandleShareKeys(m.client_id, m.shares); !s.ok()) {
    RejectSecure(from.peer, m.round, fl::AckReason::kRejected, "shares", s.message());
    return;
  }
  stage_answered.insert(m.client_id);
}

void AggregatorService::Impl::OnSecAggMaskedInput(const Envelope& from,
                                                  const fl::SecAggMaskedInput& m) {
  if (!VouchFor(from, m.client_id, Claim::kRoundMessage, "masked input", m.round)) return;
  const std::string& peer = from.peer;
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

void AggregatorService::Impl::OnSecAggUnmaskShares(const Envelope& from,
                                                   const fl::SecAggUnmaskShares& m) {
  if (!AdmitSecure(from, m.round, m.client_id, SecureStage::kUnmask, "unmasking shares")) return;
  if (Status s = engine->secure_round()->HandleUnmaskShares(m.client_id, m.shares); !s.ok()) {
    RejectSecure(from.peer, m.round, fl::AckReason::kRejected, "unmasking shares", s.message());
    return;
  }
  stage_answered.insert(m.client_id);
}

}  // namespace cleave::federated
