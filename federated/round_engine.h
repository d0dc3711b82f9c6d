// The federated round engine: client sampling, round bookkeeping, update validation,
// aggregation through a Strategy, quorum and deadline. Transport-agnostic: the aggregator
// service drives it from ZeroMQ messages and `cleave sim` from its worker pool, with the
// same code. Time comes from an injected Clock so tests run deadlines without sleeping.
//
// A round:
//   StartRound(available) samples target = max(min_clients, ceil(fraction * available))
//   clients, plus over-commitment (ceil(target * (1 + overcommit)) in all, capped at what is
//   available), and returns the plan every sampled client gets. Updates arrive via
//   Submit(); each is validated (round number, sampled, not a duplicate, layout, finite
//   values, example count) and streamed into the strategy's aggregator, or rejected and
//   counted. The round is done when `target` updates were accepted (the over-committed
//   stragglers are then late), when every sampled client has answered, or when the deadline
//   passes. FinishRound() applies the aggregate when at least `quorum` updates were
//   accepted; otherwise the round fails and the global model stays as it was. Either way the
//   round is recorded in the history and the next round can start: a round never hangs.
//
// Secure rounds (options.secure.enabled): the plan carries the SecAgg parameters and the
// roster; the driver relays the protocol's stages through secure_round() (keys, shares,
// unmasking) and hands masked contributions to SubmitMasked(), which does the bookkeeping
// Submit() does for plain updates (round, sampled, duplicate, late). Submit() refuses plain
// updates in a secure round: the engine never holds an individual client's model. FinishRound()
// unmasks the sum (SecureRound::Finish) and applies the example-weighted mean it encodes; a
// round whose survivors fall below the Shamir threshold fails cleanly with the reason.
//
// Not thread-safe: one thread drives an engine (callers serialize Submit from workers).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/status.h"
#include "federated/secure_round.h"
#include "federated/strategy.h"
#include "federated/weights.h"

namespace cleave::federated {

struct ClientInfo {
  std::string id;
  int64_t num_examples = 0;
};

// The clients a round may sample: those with data, each id once, in id order. Built once
// per population (O(n log n) when unsorted, O(n) when sorted); sampling from it costs
// O(sampled), which is what lets `cleave sim` run rounds over 100,000 virtual clients
// without touching each of them every round.
class ClientPool {
 public:
  ClientPool() = default;
  explicit ClientPool(const std::vector<ClientInfo>& available);
  size_t size() const { return eligible_.size(); }
  const ClientInfo& operator[](size_t i) const { return eligible_[i]; }

 private:
  std::vector<ClientInfo> eligible_;
};

struct EngineOptions {
  double fraction = 1.0;    // share of the available clients sampled per round
  int min_clients = 1;      // sample at least this many (fails to start with fewer available)
  double overcommit = 0.0;  // extra share sampled beyond the target (0.2 = 20% more)
  int quorum = 1;           // accepted updates needed to apply a round
  int64_t deadline_micros = 60'000'000;  // per round, from StartRound
  TrainableSet trainable = TrainableSet::kAll;
  int split_after = -1;  // the model's split point (for TrainableSet::kHeadAndExits)
  // The edge's entries are named "head.*"/"encoder.*" (an imported split model; TrainableMask).
  bool named_parts = false;
  FitConfig fit;      // before Strategy::ConfigureFit
  uint64_t seed = 1;  // client sampling (and the public randomness of secure rounds)
  // Secure aggregation (federated/secure_round.h): the server learns only the sum.
  SecureAggregationOptions secure;
  nlohmann::json ToJson() const;
  Status Validate() const;
};

// Why an update was or was not aggregated.
enum class UpdateVerdict {
  kAccepted = 0,
  kNoRound,     // no round is open
  kStaleRound,  // for another round
  kNotSampled,  // from a client that was not sampled this round
  kDuplicate,   // the client already answered this round
  kLate,        // the round already has its target or passed its deadline
  kMalformed,   // wrong layout, non-finite values, bad example count
};
const char* UpdateVerdictName(UpdateVerdict verdict);

// What every sampled client of a round receives (besides `global`).
struct RoundPlan {
  int round = 0;
  std::vector<std::string> clients;
  FitConfig fit;
  TrainableSet trainable_set = TrainableSet::kAll;
  std::vector<bool> trainable;
  int64_t deadline_micros = 0;  // absolute, on the engine's clock
  int target = 0;               // accepted updates that complete the round early
  // Set for a secure round: the clients' roster index is their position in `clients`.
  std::optional<SecureRoundParams> secure;
};

// One finished round, as reported in histories and metrics.
struct RoundRecord {
  int round = 0;
  bool applied = false;  // false: quorum missed; the global model is unchanged
  std::string failure;   // why, when not applied
  int sampled = 0, succeeded = 0, failed = 0, late = 0, rejected = 0, missing = 0;
  std::map<std::string, int> rejected_by_reason;
  double train_loss = 0;  // example-weighted mean of the accepted clients' reported loss
  int64_t examples = 0;   // examples behind the accepted updates
  std::optional<double> eval_accuracy, eval_loss;  // when an evaluator is set
  double seconds = 0;  // StartRound to FinishRound on the engine's clock
  nlohmann::json extra = nlohmann::json::object();  // filled by drivers (bytes, RSS, ...)
  nlohmann::json ToJson() const;
  static Result<RoundRecord> FromJson(const nlohmann::json& json);
};

struct Evaluation {
  double accuracy = 0;
  double loss = 0;
};
// Server-side evaluation of a global model (optional).
using Evaluator = std::function<Result<Evaluation>(const Weights& global)>;

class RoundEngine {
 public:
  // `clock` must outlive the engine. `initial` must match `layout` (checked).
  static Result<std::unique_ptr<RoundEngine>> Create(EngineOptions options,
                                                     std::unique_ptr<Strategy> strategy,
                                                     WeightsLayout layout, Weights initial,
                                                     Clock& clock);
  RoundEngine(const RoundEngine&) = delete;
  RoundEngine& operator=(const RoundEngine&) = delete;

  void set_evaluator(Evaluator evaluator) { evaluator_ = std::move(evaluator); }

  // Opens the next round. FailedPrecondition when a round is open or fewer than
  // min_clients are available. Sampling is deterministic given the seed, the rounds so far
  // and the available list (sorted by id first, so arrival order does not matter).
  Result<RoundPlan> StartRound(const std::vector<ClientInfo>& available);
  // The same from a prepared pool (same sample as the list it was built from).
  Result<RoundPlan> StartRound(const ClientPool& pool);

  // Offers one update. The update's weights may hold only shared references; untrainable
  // entries are replaced by the global ones before aggregation (a client cannot change
  // what it was not asked to train). `why` (optional) receives a message for rejections.
  UpdateVerdict Submit(int round, ClientUpdate update, std::string* why = nullptr);
  // The layout and finite-values check Submit runs, callable from any thread (the layout
  // never changes): a caller may run it beside other work and mark the update
  // values_checked, so that Submit, which callers serialize, skips the scan.
  Status CheckValues(const Weights& weights) const { return layout_.Check(weights); }
  // Offers a secure round's masked contribution (see above). kMalformed when the round is not
  // secure or the message is refused by the protocol (why says which check).
  UpdateVerdict SubmitMasked(int round, const std::string& client_id,
                             const secagg::MaskedInput& masked, std::string* why = nullptr);
  // The open secure round's server side; null when no round is open or it is not secure.
  SecureRound* secure_round() { return open_ && open_->secure ? open_->secure.get() : nullptr; }
  // A sampled client reports it cannot deliver (error, budget, crash detected by the driver).
  void ReportFailure(int round, const std::string& client_id, const std::string& reason);

  bool round_open() const { return open_.has_value(); }
  // True when the open round reached its target, heard from every client or hit its
  // deadline. False when no round is open.
  bool RoundDone() const;
  // Microseconds until the open round's deadline (0 when past or no round is open).
  int64_t MicrosUntilDeadline() const;
  // Clients of the open round that have not answered yet.
  std::vector<std::string> Pending() const;

  // Closes the open round: aggregates and applies when the quorum was met, evaluates, and
  // appends the record to history(). FailedPrecondition when no round is open. A strategy
  // error (e.g. Krum with too few updates) fails the round, not the engine.
  Result<RoundRecord> FinishRound();

  int rounds_completed() const { return completed_rounds_; }
  const Weights& global() const { return global_; }
  const WeightsLayout& layout() const { return layout_; }
  const Strategy& strategy() const { return *strategy_; }
  const EngineOptions& options() const { return options_; }
  const std::vector<RoundRecord>& history() const { return history_; }
  // The record of the last finished round, if any, for drivers to annotate.
  RoundRecord* last_record() { return history_.empty() ? nullptr : &history_.back(); }

  // Everything needed to resume after a restart: engine JSON (rounds, sampler state,
  // history), the global weights and the strategy's state. Only between rounds.
  struct Snapshot {
    nlohmann::json engine;
    Weights global;
    std::vector<std::pair<std::string, torch::Tensor>> strategy_state;
  };
  Result<Snapshot> Save() const;
  // Restores Save()'s output into a fresh engine created with the same options, strategy
  // and layout. InvalidArgument on a mismatch (layout, strategy name).
  Status Restore(const Snapshot& snapshot);

 private:
  RoundEngine(EngineOptions options, std::unique_ptr<Strategy> strategy, WeightsLayout layout,
              Weights initial, Clock& clock);
  // The common checks of Submit and SubmitMasked; marks the client answered when it passes.
  UpdateVerdict Admit(int round, const std::string& client_id, std::string* why);
  // The server side of a secure round over `roster` (sorted ids).
  Result<std::unique_ptr<SecureRound>> StartSecureRound(int round, std::vector<std::string> roster);
  // Counts a rejection in the open round's record.
  UpdateVerdict Reject(UpdateVerdict verdict, const std::string& message, std::string* why);

  struct OpenRound {
    RoundPlan plan;
    std::set<std::string> sampled, answered;
    std::unique_ptr<RoundAggregator> aggregator;  // plain rounds
    std::unique_ptr<SecureRound> secure;          // secure rounds
    RoundRecord record;
    int64_t started_micros = 0;
    double loss_sum = 0;
  };
  // FinishRound's aggregation step for plain and for secure rounds.
  Result<Weights> AggregatePlain(OpenRound& r);
  Result<Weights> AggregateSecure(OpenRound& r);

  EngineOptions options_;
  std::unique_ptr<Strategy> strategy_;
  WeightsLayout layout_;
  Weights global_;
  std::vector<bool> trainable_;
  Clock& clock_;
  Evaluator evaluator_;
  std::mt19937_64 sampler_;
  int completed_rounds_ = 0;
  std::optional<OpenRound> open_;
  std::vector<RoundRecord> history_;
};

}  // namespace cleave::federated
