// cleave-aggregator's service loop: federated rounds over ZeroMQ with the RoundEngine.
//
// Protocol (messages of common/federated.capnp; the aggregator binds a ROUTER, every client
// connects a DEALER; one thread owns the socket):
//   1. client -> Register{client_id, num_examples, capabilities, model_name, layout_sha256}
//      aggregator -> RegisterReply{accepted, error, round, poll_interval_ms}. A client whose
//      layout fingerprint differs from the aggregator's model is refused (accepted = false,
//      error says why). A client id is bound to the sender's transport identity
//      (federated/aggregator_identity.h: its CURVE key - for good when the allow list binds
//      the key to the id, else for the aggregator's life - or without CURVE its connection
//      for the session), and every message naming that id must come from that
//      identity; a sender that names another client's id, or a second id, is refused
//      (RegisterReply{accepted = false} for Register and Heartbeat, UpdateAck{rejected} for
//      Update and SecAgg messages, nothing for Bye), counted, and changes nothing. Registering
//      again from the bound key (or, without CURVE, from a new connection once the old
//      session ended: Bye or client_timeout_ms) keeps the id and takes the new routing id (a
//      restarted edge keeps its identity). At most `max_clients` ids are registered.
//   2. client -> Heartbeat every poll_interval_ms, also while it trains. From receiving a
//      round's RoundConfig until that round's UpdateAck it reports training_round = the
//      round. The aggregator answers with Wait (nothing to do now) or, when the client is
//      sampled in the open round, has not answered and reports another training_round, with
//      that round's RoundConfig again (a lost push is re-sent, with the deadline that is
//      left). When a round opens, every sampled client gets its RoundConfig pushed at once.
//   3. client trains locally and sends Update{round, client_id, num_examples, train_loss,
//      tensors = the trainable entries in layout order} or, when the round's config asks for
//      compression (RoundConfig.compression, from `compression` / `compression_for_round`),
//      Update{compressed = EncodeUpdate of its delta} (federated/update_compression.h); the
//      aggregator decodes it with DecodeUpdate against its own layout and the round's mask
//      and submits global + decoded delta. A compressed payload that does not decode is
//      rejected (UpdateAck{malformed}, saying why) like any bad update; uncompressed updates
//      are accepted in compressed rounds too (an older edge ignores the field).
//      aggregator -> UpdateAck{accepted,
//      reason, message}: stale rounds, unsampled or unknown clients, duplicates, wrong
//      counts/shapes, NaN/Inf and late updates are rejected, counted and never aggregated.
//      A client that cannot train sends Bye{leaving} (counted as failed in the open round;
//      its next heartbeat brings it back) or just stops; a sampled client that is silent for
//      `client_timeout_ms` is reported failed so the round need not wait for the deadline,
//      and an update it sends later in that round is acknowledged as late.
//   4. after the last round the aggregator sends Bye{finished} to every client it knows,
//      writes its final summary and exits 0.
// Secure rounds (engine.secure.enabled; federated/secure_round.h): the RoundConfig carries the
// round's SecAgg parameters and the client's roster index, and the stages run as in `cleave
// sim`: (a) every sampled client sends SecAggKeys; when all did, dropped (Bye, timed out) or
// the stage timeout passed (secure_stage_fraction of the round deadline), the stage closes and
// each client that advertised gets its SecAggKeyDirectory; (b) likewise SecAggShareKeys ->
// SecAggForwardedShares; (c) clients train and send SecAggMaskedInput (acknowledged like an
// Update; a plain Update for a secure round is refused with UpdateAck{rejected} and never
// decoded); (d) once the round is done (target, everyone answered, or deadline) the masked
// stage closes, the survivors get SecAggUnmaskRequest and answer SecAggUnmaskShares until all
// did or a stage timeout; then the engine unmasks the sum and applies it. A client missing a
// stage is reported failed and dropped (its masks are removed with the survivors' shares); the
// round fails, with the protocol's reason in its record, only when fewer than the Shamir
// threshold remain. Secure-stage messages that are malformed, replayed, for another round or
// stage, or from clients outside the roster get UpdateAck{accepted = false} saying why. The
// aggregator sees only public keys, sealed shares, masked vectors and the shares needed to
// unmask the sum: never a client's model.
// Compression never applies to secure rounds: their RoundConfig carries no compression (the
// masked input is a dense fixed-point vector, see update_compression.h), and topk is refused
// with secure aggregation at Create.
// Each round's record gets extra["bytes_up"] = the wire bytes of the accepted update messages
// (Update or SecAggMaskedInput frames as received) and extra["compression"] = the round's
// settings with "payload_bytes_up" (compressed payloads, or float32 tensor data) and
// "dense_bytes_up" (float32 trainable entries x accepted updates, the uncompressed size).
// A round opens when at least `min_clients` live clients are registered (and, for the first
// round, `wait_for_clients` have registered or `start_timeout_ms` passed). After each round
// the service checkpoints atomically (resuming from the checkpoint on start), optionally
// publishes the new global weights as a model bundle, evaluates on the test set when
// configured, and rewrites the summary file (history so far).
//
// With secure aggregation the aggregator keeps no client's example count (only whether it has
// data): the count travels inside the masked contribution, and only a round's total is known.
// Metrics (common/metrics.h): cleave_federated_round (the open round, else the last one),
// cleave_federated_updates_total by status (accepted; rejected: stale, unsampled, unknown,
// duplicate or malformed; late; failed: sampled clients that left, timed out or never
// answered, counted when their round closes), cleave_federated_round_duration_seconds,
// cleave_connected_edges (registered clients not gone), and for component "aggregator" the
// messages handled (ok) or undecodable (rejected), wire bytes and the compute seconds of
// closing a round (aggregation and evaluation), and cleave_federated_identity_refused_total by
// reason (mismatch, taken, max_clients).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/curve.h"
#include "common/fl_wire.h"
#include "common/metrics.h"
#include "common/status.h"
#include "common/transport.h"
#include "federated/continual_stream.h"
#include "federated/round_engine.h"
#include "federated/update_compression.h"
#include "split/train_data.h"
#include "split/trainable_net.h"
#include "split/vision_model.h"

namespace cleave::federated {

struct AggregatorOptions {
  std::string listen = "tcp://127.0.0.1:5570";
  int rounds = 3;
  EngineOptions engine;  // sampling, quorum, deadline, trainable set, client fit config
  StrategyConfig strategy;
  // What every plain round asks its clients to send (seed unused: a client draws its int8
  // rounding from the round's seed). Create refuses an invalid setting or one the strategy or
  // secure aggregation cannot use (CheckCompressionCompatible).
  CompressionConfig compression;
  // Optional per-round override (round number -> setting); null = `compression` every round.
  // A setting it returns that is invalid or incompatible is logged and replaced by "none".
  std::function<CompressionConfig(int round)> compression_for_round;
  int wait_for_clients = 0;  // first round: wait for this many registrations (0 = min_clients)
  int64_t start_timeout_ms = 60000;  // ...or at most this long, then start with min_clients
  int64_t poll_interval_ms = 500;    // told to clients: heartbeat period
  int64_t client_timeout_ms = 5000;  // a sampled client silent this long has failed
  // Registered clients (gone ones included) at most; a Register for one more is refused. >= 1.
  int64_t max_clients = 10000;
  // Secure rounds: each stage the aggregator waits for (keys, shares, unmasking shares) closes
  // when every expected client answered or dropped, or after this share of the round deadline
  // (engine.deadline_micros), at least 1 ms.
  double secure_stage_fraction = 0.125;
  std::string checkpoint;       // file; resume from it when present
  std::string publish_dir;      // write <dir>/round-<k> bundles (needs a base bundle)
  std::string signing_key_pem;  // Ed25519 secret key: sign published bundles ("" = don't)
  std::string summary_file;     // JSON history, rewritten after every round
  std::string ready_file;       // {"endpoint", "pid"} once bound
  int64_t max_message_bytes = int64_t{256} << 20;
  // Applied to the ROUTER before it binds (CURVE: common/curve.h SetUpCurveServer).
  std::function<Status(zmq::socket_t&)> socket_configure;
  // CURVE: the allow list's key <-> client id bindings (ZapHandler::ClientIds(); the handler
  // must outlive the service). A listed key speaks only for its id, which is reserved for it
  // (federated/aggregator_identity.h). Null functions: every key is first come.
  CurveClientIds curve_client_ids;
  // Where the service's metrics go; null = a private registry nobody exports.
  std::shared_ptr<Metrics> metrics;
  // Federated continual learning (federated/continual_stream.h): every RoundConfig carries
  // the round's experience and the strategy the edges run; with evaluation data, each round
  // is evaluated on every experience (the record's extra["continual"]) and the summary gets
  // "continual" {scenario, experiences, strategy, matrix, metrics}. Experiences in 1..rounds.
  ContinualStreamOptions continual;
  // Extra fields for the ready file (e.g. the admin URL).
  nlohmann::json ready_extra = nlohmann::json::object();
};

// The model the aggregator coordinates: architecture + initial weights, and optionally the
// bundle it came from (needed to publish bundles) and test data for server evaluation.
struct AggregatorModel {
  // The network (any kind, split/trainable_net.h); when null, cleave's own built from `spec`.
  std::shared_ptr<split::TrainableNet> net;
  split::VisionModelSpec spec;
  split::InputSpec input;  // what the model takes (the bundle's, or sized for eval data)
  Weights initial;
  std::string model_name;          // informational, e.g. the bundle directory name
  std::string base_bundle;         // "" = cannot publish bundles
  split::LabeledImages eval_data;  // empty = no server evaluation
};

class AggregatorService {
 public:
  // Binds and restores the checkpoint if there is one. `clock` must outlive the service.
  static Result<std::unique_ptr<AggregatorService>> Create(AggregatorOptions options,
                                                           AggregatorModel model,
                                                           TransportContext& context,
                                                           Clock& clock = SystemClock());
  AggregatorService(const AggregatorService&) = delete;
  AggregatorService& operator=(const AggregatorService&) = delete;
  ~AggregatorService();

  const std::string& endpoint() const;
  // Serves until every round is done (OK), `stop()` returns true (Cancelled... reported as
  // FailedPrecondition "stopped"), or the socket fails. Never throws; peer input never ends it.
  Status Run(const std::function<bool()>& stop);

  // The summary written to summary_file: options, rounds (history), counters.
  nlohmann::json Summary() const;

 private:
  struct Impl;
  explicit AggregatorService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cleave::federated
