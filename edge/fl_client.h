// FederatedClient: an edge's participation in cleave-aggregator's federated rounds.
//
// The client speaks the protocol of federated/aggregator_service.h on its own DEALER socket,
// from its own background thread; it never touches the serving thread or the inference
// sockets, and trains its own fp32 copy of the model, so training never blocks inference
// (they share only libtorch's intra-op thread pool and the CPU).
//
// The conversation, from the client's side:
//   - Register (client id, example count, capabilities, model name, LayoutSha256 of the
//     model's layout). A refusal (e.g. a model mismatch) is logged with the aggregator's
//     reason and retried every `register_retry_ms`; an unanswered Register is re-sent every
//     `register_timeout_ms`. A refusal that answers a Heartbeat ("unknown client": the aggregator
//     restarted and forgot us) makes the client register again at once.
//   - Heartbeat every poll interval (the aggregator's, else ours; a Wait sets the next one).
//   - RoundConfig: checked before any work (layout fingerprint, weight count and shapes,
//     finite values, mask length, no deltas). A config the client cannot use is answered
//     with Bye{leaving} naming the reason, so the round does not wait for us; the client
//     keeps heartbeating and the aggregator takes it back for later rounds. Otherwise it
//     trains with TrainLocally (the round's fit config; max_steps = min(round's, ours);
//     time budget = min(ours, round's, deadline_ms - margin); the round's mask and seed) and
//     sends Update{trainable entries only}. Until its UpdateAck arrives (or `ack_timeout_ms`
//     passes) heartbeats name that round, so the aggregator does not ask for it again; a
//     repeat of the config that arrives meanwhile crossed the update (it answers a heartbeat
//     sent before the update) and is ignored. A repeat after the ack timeout means the
//     update was lost: the client re-sends it instead of training again. A repeat of a
//     config already acknowledged or declined is ignored.
//   - A RoundConfig with secure parameters (secure aggregation, federated/secure_round.h):
//     the client checks them against the model (vector length = trainable values + 2), opens a
//     SecureClientSession at its roster index and sends SecAggKeys at once; answers the
//     SecAggKeyDirectory with SecAggShareKeys; on SecAggForwardedShares it trains as above and
//     sends SecAggMaskedInput (the contribution masked with SecureClientSession::MaskUpdate,
//     stochastic rounding seeded fresh from crypto::RandomKey()) instead of an Update: its
//     weights never leave the edge. A SecAggUnmaskRequest is answered with SecAggUnmaskShares,
//     which ends the session (its secrets are wiped). Any protocol error, or the aggregator
//     refusing one of our stage messages, ends the session: Bye{leaving} as for any round we
//     cannot train (the aggregator recovers our masks from the other clients' shares).
//   - A RoundConfig asking for compression (RoundConfig.compression int8 or topk, plain rounds
//     only): the client encodes its delta trained - global with federated::EncodeUpdate and
//     sends it as Update{compressed} instead of the tensors. int8 rounding is drawn from the
//     round's seed and a hash of the client id. With error_feedback the client keeps one
//     ErrorFeedbackState across rounds (what it did not send is added to its next compressed
//     delta); a re-sent update re-sends the same bytes, never re-encodes. In a secure round
//     the setting is ignored: the masked input is never compressed.
//   - UpdateAck: counted as accepted, or rejected by reason.
//   - Bye{finished}: the federation is over; the thread exits (inference keeps serving).
//     Bye{shutting_down}: the aggregator stops; the client registers again when it returns.
// Heartbeats go on *during* training too: TrainLocally's per-step callback sends one when
// due (on the client thread, which owns the socket). So the aggregator's client_timeout_ms
// must exceed the poll interval plus one training step, not a whole round's training;
// replies that arrive meanwhile are handled after the round. An aggregator that cannot be
// reached is retried with exponential backoff (ZeroMQ reconnects by itself; sends fail
// fast with Unavailable while no link is up).
//
// Every byte from the aggregator is hostile: undecodable frames and messages that make no
// sense in the current state are counted and ignored, never fatal. No exception leaves the
// thread.
//
// Time: schedules (heartbeats, retries, backoff, ack timeout) and the training budget follow
// the injected Clock; socket waits are real time and at most 50 ms, so a FakeClock works.
//
// Threads: Start() and the destructor on one (owner) thread; stats(), WaitFor() and Stop()
// from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/fl_wire.h"
#include "common/mutex.h"
#include "common/status.h"
#include "common/thread_annotations.h"
#include "common/transport.h"
#include "federated/continual.h"
#include "federated/continual_stream.h"
#include "federated/secure_round.h"
#include "federated/update_compression.h"
#include "federated/weights.h"
#include "split/train_data.h"
#include "split/trainable_net.h"
#include "split/vision_model.h"

namespace cleave::federated {
struct LocalTrainResult;  // federated/local_training.h
}  // namespace cleave::federated

namespace cleave::edge {

struct FederatedClientOptions {
  std::string aggregator;                // cleave-aggregator endpoint, e.g. tcp://host:5570
  std::string client_id;                 // wire::fl::ValidateClientId rules
  std::string model_name = "model";      // sent in Register (informational)
  int64_t max_steps = 0;                 // local cap on steps per round; 0 = none
  int64_t time_budget_ms = 0;            // local cap on training time per round; 0 = none
  int64_t poll_interval_ms = 1000;       // heartbeat period until the aggregator sets one
  int64_t max_poll_interval_ms = 60000;  // cap on any interval the aggregator asks for
  int64_t register_timeout_ms = 3000;    // re-send an unanswered Register after this long
  int64_t register_retry_ms = 10000;     // retry after a refused registration
  // How long an Update waits for its UpdateAck before the client assumes it was lost (and
  // lets the aggregator ask for it again).
  int64_t ack_timeout_ms = 5000;
  int64_t min_backoff_ms = 200;    // first retry after the aggregator was unreachable
  int64_t max_backoff_ms = 15000;  // backoff doubles up to this
  // Kept free before the round's deadline to send the update; at most half the deadline.
  int64_t deadline_margin_ms = 1000;
  int64_t max_message_bytes = static_cast<int64_t>(wire::fl::kMaxMessageBytes);
  // Fault injection for tests of dropout recovery: in this secure round the client takes part
  // in the key exchange, then vanishes without a word (its thread ends, as if the edge had
  // crashed after sharing its keys). 0 = never.
  uint32_t secure_drop_round = 0;
  // Applied to the DEALER before it connects (CURVE: common/curve.h SetUpCurveClient).
  std::function<Status(zmq::socket_t&)> socket_configure;
};

// A snapshot of what the client did. Counters only grow.
struct FederatedClientStats {
  bool running = false;                // the client thread is still participating
  bool registered = false;             // the aggregator accepted us and has not forgotten us since
  bool finished = false;               // Bye{finished} arrived
  uint64_t registrations = 0;          // accepted RegisterReplies
  uint64_t registrations_refused = 0;  // refused ones (the reason is in last_error)
  uint64_t heartbeats_sent = 0;
  uint64_t round_configs = 0;      // RoundConfigs received (repeats included)
  uint64_t configs_rejected = 0;   // unusable RoundConfigs (layout, shapes, delta, ...)
  uint64_t training_failures = 0;  // TrainLocally errors (e.g. divergence)
  uint64_t rounds_trained = 0;     // trainings that produced an update
  uint64_t updates_sent = 0;       // Update messages queued (re-sends included)
  uint64_t updates_accepted = 0;
  uint64_t updates_rejected = 0;
  std::map<std::string, uint64_t> rejected_by_reason;  // AckReasonName -> count
  uint64_t secure_rounds = 0;                          // secure rounds joined (keys advertised)
  uint64_t masked_inputs_sent = 0;                     // masked contributions sent (secure rounds)
  uint64_t unmask_shares_sent = 0;                     // secure rounds whose unmasking we answered
  uint64_t compressed_updates = 0;                     // updates sent as Update.compressed
  uint64_t continual_rounds = 0;                       // continual rounds trained
  uint64_t rounds_without_data = 0;  // continual rounds declined: no rows in the experience
  int32_t experience = -1;           // the experience of the last continual round trained
  uint64_t malformed_messages = 0;   // frames from the aggregator that did not decode
  uint64_t unexpected_messages = 0;  // valid messages that make no sense to a client now
  uint64_t send_failures = 0;        // sends refused (aggregator unreachable, queue full)
  uint32_t last_round = 0;           // the last round trained
  double last_train_loss = 0;
  std::string last_error;  // the latest problem, for operators; "" if none yet

  nlohmann::json ToJson() const;
};

class FederatedClient {
 public:
  // Validates the options, builds a private training copy of the network from `spec` and
  // `initial` (fp32, LayoutOf order; checked), connects the DEALER and starts the thread.
  // `data` holds the local training rows ([N,1,H,W] images in [0,1], [N] labels < classes;
  // checked, N >= 1). `context` and `clock` must outlive the client. InvalidArgument for
  // bad options, weights or data.
  static Result<std::unique_ptr<FederatedClient>> Start(
      TransportContext& context, FederatedClientOptions options, const split::VisionModelSpec& spec,
      const federated::Weights& initial, split::LabeledImages data, Clock& clock = SystemClock());
  // The same for any trainable network (split/trainable_net.h: cleave's own, a TorchScript
  // model, an imported split model); the client trains `net` itself. `data`'s images must
  // be [N, C, H, W] as net->input() declares, labels < net->num_classes().
  static Result<std::unique_ptr<FederatedClient>> Start(TransportContext& context,
                                                        FederatedClientOptions options,
                                                        std::unique_ptr<split::TrainableNet> net,
                                                        const federated::Weights& initial,
                                                        split::LabeledImages data,
                                                        Clock& clock = SystemClock());
  // Stops (see Stop) and joins.
  ~FederatedClient();
  FederatedClient(const FederatedClient&) = delete;
  FederatedClient& operator=(const FederatedClient&) = delete;

  // Asks the thread to end: it says Bye{leaving} when registered and exits within ~50 ms,
  // or after the current training step. Idempotent; does not join (the destructor does).
  void Stop();

  // A consistent copy of the counters. Any thread.
  FederatedClientStats stats() const EXCLUDES(mu_);
  // Waits until `predicate(stats)` holds or `timeout_ms` passes; true if it held. Wakes on
  // every change. Any thread; `predicate` runs under the stats lock and must not block.
  bool WaitFor(const std::function<bool(const FederatedClientStats&)>& predicate,
               int64_t timeout_ms) const EXCLUDES(mu_);

  // The fingerprint sent in Register: LayoutSha256(LayoutOf(network)).
  const std::string& layout_sha256() const { return layout_sha256_; }
  int64_t num_examples() const { return data_.size(); }

 private:
  // A secure round under way: its config and global weights (training waits for the key
  // exchange), the session and how far it got.
  struct SecureState {
    enum class Stage { kAdvertised, kShared, kMasked };
    wire::fl::RoundConfig config;
    federated::Weights global;
    int64_t received = 0;
    std::optional<federated::SecureClientSession> session;
    Stage stage = Stage::kAdvertised;
  };

  FederatedClient(FederatedClientOptions options, Clock& clock);

  // The client thread and its helpers; everything below runs on it. Defined in fl_client.cc,
  // except a round's training (fl_client_training.cc) and the secure stages
  // (fl_client_secure.cc).
  void Run();
  void Tick(int64_t now);
  void Dispatch(const std::string& bytes);
  void OnRegisterReply(const wire::fl::RegisterReply& reply);
  void OnRoundConfig(const wire::fl::RoundConfig& config);
  void OnUpdateAck(const wire::fl::UpdateAck& ack);
  void OnWait(const wire::fl::Wait& wait);
  void OnBye(const wire::fl::Bye& bye);
  // Secure rounds (see the header comment).
  void StartSecureRound(const wire::fl::RoundConfig& config, federated::Weights global,
                        int64_t received);
  void OnKeyDirectory(const wire::fl::SecAggKeyDirectory& message);
  void OnForwardedShares(const wire::fl::SecAggForwardedShares& message);
  void OnUnmaskRequest(const wire::fl::SecAggUnmaskRequest& message);
  // True when the open secure session is for `round` and at `stage`; otherwise counts the
  // stage message (`what`, for the log) as unexpected.
  bool InSecureStage(uint32_t round, SecureState::Stage stage, const char* what);
  // Ends the open secure session (if for `round`), declining the round with `why`.
  void AbortSecure(uint32_t round, const Status& why);
  // The SecAggMaskedInput for a secure round trained into `result`, masked by the open
  // session; nullopt when the round was declined instead (the session ended during training,
  // or masking failed).
  std::optional<wire::fl::Message> MaskedContribution(const wire::fl::RoundConfig& config,
                                                      const federated::Weights& global,
                                                      const federated::LocalTrainResult& result,
                                                      const secagg::ForwardedShares& forwarded);
  // Checks `config` against our model and decodes its weights; InvalidArgument says why.
  Result<federated::Weights> CheckConfig(const wire::fl::RoundConfig& config) const;
  // Trains the round and sends the update; `received` is when the config arrived (the
  // round's deadline counts from then). With `forwarded` (a secure round), sends the masked
  // contribution of the open secure session instead.
  void Train(const wire::fl::RoundConfig& config, federated::Weights global, int64_t received,
             const secagg::ForwardedShares* forwarded = nullptr);
  // Training time allowed for `config` (ours, the round's, and its deadline less the margin
  // and the time since `received`), in ms; 0 = no limit.
  int64_t TimeBudgetMs(const wire::fl::RoundConfig& config, int64_t received) const;
  // The Update for a plain round trained into `result`: the trainable tensors, or the delta
  // from `global` compressed as the round asks (updating feedback_ under error feedback);
  // nullopt when compression failed and the round was declined.
  std::optional<wire::fl::Message> PlainUpdate(const wire::fl::RoundConfig& config,
                                               const federated::Weights& global,
                                               const federated::LocalTrainResult& result);
  // A continual round (RoundConfig.continual): the strategy (kept across rounds; a new one
  // when the round describes another stream or strategy), our rows of the round's experience
  // (seen through its permutation when domain-incremental) and, when the experience changed,
  // (a sample of) the rows of the one we last trained in, to consolidate on. FailedPrecondition
  // when we have no rows in the experience; InvalidArgument for a strategy that does not
  // validate.
  Status PrepareContinual(const wire::fl::ContinualRound& round, split::LabeledImages& rows,
                          federated::LabeledBatch& consolidate);
  // Declines a round we cannot train: Bye{leaving} with `why`, counted in `counter`.
  void Decline(uint32_t round, const Status& why, uint64_t FederatedClientStats::*counter);
  // Sends `message`; on failure counts it, records backoff and returns the error.
  Status SendMessage(const wire::fl::Message& message);
  Status SendBytes(const std::string& bytes, const char* what);
  void SendHeartbeat(uint32_t training_round);
  void Backoff();
  int64_t PollIntervalMicros() const;
  // Applies `change` to the stats under the lock and wakes WaitFor.
  void Update(const std::function<void(FederatedClientStats&)>& change) EXCLUDES(mu_);
  void RecordError(const std::string& error);

  FederatedClientOptions options_;
  Clock& clock_;
  std::unique_ptr<DealerClient> dealer_;
  std::unique_ptr<split::TrainableNet> net_;  // the training copy
  federated::WeightsLayout layout_;
  std::string layout_sha256_;
  split::LabeledImages data_;
  std::atomic<bool> stop_{false};
  std::thread thread_;

  // Client-thread state.
  bool registered_ = false;
  int64_t next_register_micros_ = 0;
  int64_t next_heartbeat_micros_ = 0;
  int64_t aggregator_poll_ms_ = 0;  // from RegisterReply; 0 = ours
  bool warned_unreachable_ = false;
  int64_t backoff_ms_ = 0;                   // 0 = not backing off
  int64_t blocked_until_micros_ = 0;         // no sends before this (backoff)
  uint32_t global_round_ = 0;                // round of the last global weights received
  uint32_t sent_round_ = 0;                  // round of the last Update sent (0 = none)
  int64_t awaiting_ack_until_micros_ = 0;    // its ack is expected until then
  std::string sent_update_;                  // its bytes, re-sent when the config comes again
  std::map<uint32_t, std::string> unacked_;  // round -> training summary, awaiting an ack
  uint32_t closed_round_ = 0;                // latest round acknowledged or declined
  bool finished_ = false;
  bool vanished_ = false;  // secure_drop_round: the thread ends without a Bye
  // Error feedback of compressed rounds: what earlier compressed updates did not send.
  federated::ErrorFeedbackState feedback_;
  std::optional<SecureState> secure_;  // the open secure round, if any
  // Federated continual learning: the strategy and its state, kept across rounds in memory
  // (a restarted edge starts it empty, as a resumed `cleave sim` does).
  struct ContinualState {
    federated::ContinualStreamOptions stream;  // as the rounds describe it
    uint64_t seed = 0;                         // domain permutations
    std::unique_ptr<federated::ContinualStrategy> strategy;
    int experience = -1;  // the experience last trained in
    std::vector<torch::Tensor> permutations;
  };
  std::optional<ContinualState> continual_;

  mutable Mutex mu_;
  mutable CondVar changed_;
  FederatedClientStats stats_ GUARDED_BY(mu_);
};

}  // namespace cleave::edge
