// The private side of AggregatorService, shared by the files that implement it:
//   aggregator_service.cc        the public class: Create, the serving loop (Run) and the
//                                client sessions (register, heartbeat, bye, timeouts);
//   aggregator_rounds.cc         a round's life outside the secure stages: opening it, plain
//                                updates, closing it (record, metrics, checkpoint, publishing,
//                                summary);
//   aggregator_secure_stages.cc  the secure-aggregation stages of a round.
// Not part of the public API: include only from those files. All of it belongs to the one
// thread that runs the service (the thread that owns the socket).
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/fl_wire.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/status.h"
#include "common/transport.h"
#include "federated/aggregator_identity.h"
#include "federated/aggregator_service.h"
#include "federated/round_engine.h"
#include "federated/secure_round.h"
#include "federated/update_compression.h"
#include "split/vision_model.h"

namespace cleave::federated {

namespace fl = wire::fl;

namespace internal {

inline std::shared_ptr<spdlog::logger> Log() { return GetLogger("aggregator"); }

inline fl::AckReason AckFor(UpdateVerdict verdict) {
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

inline Result<fl::CompressionKind> ToWireCompressionKind(const std::string& kind) {
  if (kind == "none") return fl::CompressionKind::kNone;
  if (kind == "int8") return fl::CompressionKind::kInt8;
  if (kind == "topk") return fl::CompressionKind::kTopK;
  return Status::InvalidArgument("compression.kind '" + kind + "' is not none, int8 or topk");
}

inline fl::SecureParams ToWireSecureParams(const SecureRoundParams& params, uint32_t client_index) {
  fl::SecureParams out;
  out.secagg = params.secagg;
  out.clip = params.clip;
  out.fractional_bits = static_cast<uint32_t>(std::max(0, params.fractional_bits));
  out.example_scale = params.example_scale;
  out.client_index = client_index;
  return out;
}

}  // namespace internal

struct AggregatorService::Impl {
  // Where the open secure round is (plan->secure): the protocol's stages in order. kKeys and
  // kShares run before the clients train, kMasked while they train (until RoundDone), kUnmask
  // after it; kClosing: the protocol finished or failed, FinishRound is next.
  enum class SecureStage { kNone, kKeys, kShares, kMasked, kUnmask, kClosing };

  struct Client {
    std::string peer;  // current routing id (of the transport identity bound to this client)
    // As registered; with secure aggregation only 1 (has data) or 0: an edge's count stays
    // out of the aggregator's logs, metrics and summaries (it learns only a round's total).
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
  std::map<std::string, Client> clients;  // at most options.max_clients
  ClientIdentities identities;            // who may speak for which client
  uint64_t identity_refusals = 0;         // for log rate limiting
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
  nlohmann::json secure_progress;
  // The open round's compression and uplink bytes (accepted update frames; their payloads).
  CompressionConfig round_compression;
  int64_t round_bytes_up = 0;
  int64_t round_payload_bytes_up = 0;
  int64_t trainable_bytes = 0;  // float32 bytes of the open round's trainable entries
  size_t frame_bytes = 0;       // size of the message being handled, as received
  int64_t started_micros = 0;
  std::optional<Evaluation> initial_eval;
  std::map<std::string, uint64_t> counters;  // messages by kind, rejections by reason
  std::shared_ptr<split::TrainableNet> eval_net;
  std::optional<ExperienceEvaluator> continual_eval;  // continual runs with evaluation data
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
      internal::Log()->debug("send failed: {}", s.ToString());
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

  // What a client message claims to be, for the identity check: a Register may bind the
  // sender; a refused Register or Heartbeat is answered with RegisterReply{accepted = false},
  // a refused round message (Update, SecAgg stages) with UpdateAck{rejected}, a Bye not at all.
  enum class Claim { kRegister, kHeartbeat, kBye, kRoundMessage };
  // The check every client message passes first: may the sender's transport identity speak
  // for `client_id` (aggregator_identity.h)? A Register may bind a free or releasable id; other
  // messages only reach a client bound to their sender (an unbound sender naming an unknown
  // id passes, for the handler's "register first"). A refusal is counted
  // (identity_refused_<reason>, cleave_federated_identity_refused_total), logged, answered as
  // `claim` says, and changes nothing else. `what` names the message in logs and replies.
  bool VouchFor(const Envelope& from, const std::string& client_id, Claim claim, const char* what,
                uint32_t round = 0);
  void RefuseIdentity(const Envelope& from, const std::string& client_id, Claim claim,
                      const char* what, uint32_t round, const char* reason,
                      prometheus::Counter* metric, const std::string& why);
  Status OpenRound();
  // The setting for `round` (options or the per-round hook; "none" for secure rounds and for
  // a hook result that cannot be used).
  CompressionConfig CompressionFor(int round, bool secure) const;
  // global + the delta decoded from `bytes` (DecodeUpdate against the layout and the open
  // round's mask); InvalidArgument/VersionMismatch for a payload that does not decode.
  Result<Weights> FromCompressed(const std::string& bytes) const;
  void OnRegister(const Envelope& from, const fl::Register& reg);
  void OnHeartbeat(const Envelope& from, const fl::Heartbeat& hb);
  void OnUpdate(const Envelope& from, const fl::Update& update);
  void OnBye(const Envelope& from, const fl::Bye& bye);
  // Secure rounds.
  fl::RoundConfig ConfigFor(const std::string& client_id) const;
  int64_t SecureStageMicros() const;
  void BeginStage(SecureStage stage, std::set<std::string> expected);
  bool StageComplete() const;
  // Moves the open secure round on (closing stages on quorum or timeout); true when the round
  // is ready for CloseRound.
  bool AdvanceSecure();
  void FailSecure(const std::string& reason);
  // The checks every client message of a secure stage passes: its sender (VouchFor), a known
  // client, the open secure round, in its roster, the expected stage, not answered yet.
  // Replies with the error and returns false otherwise.
  bool AdmitSecure(const Envelope& from, uint32_t round, const std::string& client_id,
                   SecureStage stage, const char* what);
  void RejectSecure(const std::string& peer, uint32_t round, fl::AckReason reason,
                    const std::string& what, const std::string& why);
  void OnSecAggKeys(const Envelope& from, const fl::SecAggKeys& m);
  void OnSecAggShareKeys(const Envelope& from, const fl::SecAggShareKeys& m);
  void OnSecAggMaskedInput(const Envelope& from, const fl::SecAggMaskedInput& m);
  void OnSecAggUnmaskShares(const Envelope& from, const fl::SecAggUnmaskShares& m);
  void Housekeeping();
  Status CloseRound();
  Status Publish(int round);
  void WriteSummary();
  nlohmann::json SummaryJson() const;
};

}  // namespace cleave::federated
