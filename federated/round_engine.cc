#include "federated/round_engine.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <unordered_map>

namespace cleave::federated {

using nlohmann::json;

const char* UpdateVerdictName(UpdateVerdict verdict) {
  switch (verdict) {
    case UpdateVerdict::kAccepted: return "accepted";
    case UpdateVerdict::kNoRound: return "no_round";
    case UpdateVerdict::kStaleRound: return "stale_round";
    case UpdateVerdict::kNotSampled: return "not_sampled";
    case UpdateVerdict::kDuplicate: return "duplicate";
    case UpdateVerdict::kLate: return "late";
    case UpdateVerdict::kMalformed: return "malformed";
  }
  return "unknown";
}

json EngineOptions::ToJson() const {
  json j = {{"fraction", fraction},
            {"min_clients", min_clients},
            {"overcommit", overcommit},
            {"quorum", quorum},
            {"deadline_seconds", deadline_micros / 1e6},
            {"trainable", TrainableSetName(trainable)},
            {"split_after", split_after},
            {"fit", fit.ToJson()},
            {"seed", seed}};
  if (secure.enabled) j["secure_aggregation"] = secure.ToJson();
  return j;
}

Status EngineOptions::Validate() const {
  if (!(fraction > 0 && fraction <= 1)) {
    return Status::InvalidArgument("round engine: fraction must be in (0, 1]");
  }
  if (min_clients < 1) return Status::InvalidArgument("round engine: min_clients must be >= 1");
  if (!(overcommit >= 0 && overcommit <= 10)) {
    return Status::InvalidArgument("round engine: overcommit must be in [0, 10]");
  }
  if (quorum < 1) return Status::InvalidArgument("round engine: quorum must be >= 1");
  if (quorum > min_clients) {
    // A quorum above the guaranteed sample size could be unreachable by construction.
    return Status::InvalidArgument("round engine: quorum (" + std::to_string(quorum) +
                                   ") must not exceed min_clients (" + std::to_string(min_clients) +
                                   ")");
  }
  if (deadline_micros <= 0) return Status::InvalidArgument("round engine: deadline must be > 0");
  if (secure.enabled) CLEAVE_RETURN_IF_ERROR(secure.Validate());
  return fit.Validate();
}

json RoundRecord::ToJson() const {
  json j = {{"round", round},
            {"applied", applied},
            {"sampled", sampled},
            {"succeeded", succeeded},
            {"failed", failed},
            {"late", late},
            {"rejected", rejected},
            {"missing", missing},
            {"rejected_by_reason", rejected_by_reason},
            {"train_loss", train_loss},
            {"examples", examples},
            {"seconds", seconds}};
  if (!failure.empty()) j["failure"] = failure;
  if (eval_accuracy) j["accuracy"] = *eval_accuracy;
  if (eval_loss) j["loss"] = *eval_loss;
  for (const auto& [key, value] : extra.items()) j[key] = value;
  return j;
}

Result<RoundRecord> RoundRecord::FromJson(const json& j) {
  try {
    RoundRecord r;
    r.round = j.at("round").get<int>();
    r.applied = j.at("applied").get<bool>();
    r.sampled = j.at("sampled").get<int>();
    r.succeeded = j.at("succeeded").get<int>();
    r.failed = j.at("failed").get<int>();
    r.late = j.at("late").get<int>();
    r.rejected = j.at("rejected").get<int>();
    r.missing = j.value("missing", 0);
    r.rejected_by_reason = j.value("rejected_by_reason", std::map<std::string, int>{});
    r.train_loss = j.at("train_loss").get<double>();
    r.examples = j.value("examples", int64_t{0});
    r.seconds = j.at("seconds").get<double>();
    r.failure = j.value("failure", "");
    if (j.contains("accuracy")) r.eval_accuracy = j.at("accuracy").get<double>();
    if (j.contains("loss")) r.eval_loss = j.at("loss").get<double>();
    static const std::set<std::string> kKnown = {
        "round",    "applied",  "sampled", "succeeded",          "failed",
        "late",     "rejected", "missing", "rejected_by_reason", "train_loss",
        "examples", "seconds",  "failure", "accuracy",           "loss"};
    for (const auto& [key, value] : j.items()) {
      if (!kKnown.count(key)) r.extra[key] = value;
    }
    return r;
  } catch (const json::exception& e) {
    return Status::InvalidArgument(std::string("round record: ") + e.what());
  }
}

RoundEngine::RoundEngine(EngineOptions options, std::unique_ptr<Strategy> strategy,
                         WeightsLayout layout, Weights initial, Clock& clock)
    : options_(std::move(options)),
      strategy_(std::move(strategy)),
      layout_(std::move(layout)),
      global_(std::move(initial)),
      clock_(clock),
      sampler_(options_.seed) {
  trainable_ =
      TrainableMask(layout_, options_.trainable, options_.split_after, options_.named_parts);
}

Result<std::unique_ptr<RoundEngine>> RoundEngine::Create(EngineOptions options,
                                                         std::unique_ptr<Strategy> strategy,
                                                         WeightsLayout layout, Weights initial,
                                                         Clock& clock) {
  CLEAVE_RETURN_IF_ERROR(options.Validate());
  if (!strategy) return Status::InvalidArgument("round engine: no strategy");
  if (options.secure.enabled) {
    CLEAVE_RETURN_IF_ERROR(CheckSecureAggregationStrategy(strategy->name()));
  }
  CLEAVE_RETURN_IF_ERROR(layout.Check(initial).WithContext("round engine: initial weights"));
  std::unique_ptr<RoundEngine> engine(new RoundEngine(
      std::move(options), std::move(strategy), std::move(layout), std::move(initial), clock));
  if (std::none_of(engine->trainable_.begin(), engine->trainable_.end(),
                   [](bool b) { return b; })) {
    return Status::InvalidArgument(std::string("round engine: trainable set '") +
                                   TrainableSetName(engine->options_.trainable) +
                                   "' selects no weights of this model");
  }
  return engine;
}

ClientPool::ClientPool(const std::vector<ClientInfo>& available) {
  const auto by_id = [](const ClientInfo& a, const ClientInfo& b) { return a.id < b.id; };
  const std::vector<ClientInfo>* list = &available;
  std::vector<ClientInfo> sorted;
  if (!std::is_sorted(available.begin(), available.end(), by_id)) {
    sorted = available;
    std::stable_sort(sorted.begin(), sorted.end(), by_id);
    list = &sorted;
  }
  eligible_.reserve(list->size());
  for (size_t i = 0; i < list->size(); ++i) {
    const ClientInfo& c = (*list)[i];
    if (i > 0 && c.id == (*list)[i - 1].id) continue;  // the first entry of an id counts
    if (c.num_examples <= 0) continue;
    eligible_.push_back(c);
  }
}

Result<RoundPlan> RoundEngine::StartRound(const std::vector<ClientInfo>& available) {
  return StartRound(ClientPool(available));
}

Result<RoundPlan> RoundEngine::StartRound(const ClientPool& pool) {
  if (open_) return Status::FailedPrecondition("round engine: a round is already open");
  const int n = static_cast<int>(pool.size());
  if (n < options_.min_clients) {
    return Status::FailedPrecondition("round engine: " + std::to_string(n) +
                                      " clients with data available, min_clients is " +
                                      std::to_string(options_.min_clients));
  }
  const int target = std::min(
      n, std::max(options_.min_clients, static_cast<int>(std::ceil(options_.fraction * n))));
  const int with_overcommit =
      std::min(n, static_cast<int>(std::ceil(target * (1.0 + options_.overcommit))));

  // Partial Fisher-Yates over the identity permutation of [0, n), storing only the
  // positions a swap touched: the first `with_overcommit` positions are a uniform sample,
  // in O(sampled) time and memory.
  std::unordered_map<int, int> moved;
  const auto at = [&](int i) {
    auto it = moved.find(i);
    return it == moved.end() ? i : it->second;
  };
  std::vector<int> chosen(with_overcommit);
  for (int i = 0; i < with_overcommit; ++i) {
    std::uniform_int_distribution<int> pick(i, n - 1);
    const int j = pick(sampler_);
    const int vi = at(i), vj = at(j);
    moved[j] = vi;
    chosen[i] = vj;
  }

  OpenRound round;
  round.plan.round = completed_rounds_ + 1;
  if (options_.secure.enabled) {
    std::vector<std::string> roster;
    roster.reserve(chosen.size());
    for (int i : chosen) roster.push_back(pool[i].id);
    std::sort(roster.begin(), roster.end());
    CLEAVE_ASSIGN_OR_RETURN(round.secure, StartSecureRound(round.plan.round, std::move(roster)));
    round.plan.secure = round.secure->params();
  }
  round.plan.fit = options_.fit;
  strategy_->ConfigureFit(round.plan.fit);
  round.plan.trainable_set = options_.trainable;
  round.plan.trainable = trainable_;
  round.plan.target = target;
  round.started_micros = clock_.NowMicros();
  round.plan.deadline_micros = round.started_micros + options_.deadline_micros;
  round.plan.clients.reserve(with_overcommit);
  for (int i : chosen) {
    round.plan.clients.push_back(pool[i].id);
    round.sampled.insert(pool[i].id);
  }
  std::sort(round.plan.clients.begin(), round.plan.clients.end());
  strategy_->OnRoundStarted(with_overcommit, n);
  if (!round.secure) round.aggregator = strategy_->BeginRound(global_, trainable_);
  round.record.round = round.plan.round;
  round.record.sampled = with_overcommit;
  RoundPlan plan = round.plan;
  open_ = std::move(round);
  return plan;
}

UpdateVerdict RoundEngine::Reject(UpdateVerdict verdict, const std::string& message,
                                  std::string* why) {
  if (why) *why = message;
  if (open_) {
    if (verdict == UpdateVerdict::kLate) {
      ++open_->record.late;
    } else {
      ++open_->record.rejected;
      ++open_->record.rejected_by_reason[UpdateVerdictName(verdict)];
    }
  }
  return verdict;
}

UpdateVerdict RoundEngine::Admit(int round, const std::string& client_id, std::string* why) {
  if (!open_) return Reject(UpdateVerdict::kNoRound, "no round is open", why);
  OpenRound& r = *open_;
  if (round != r.plan.round) {
    return Reject(UpdateVerdict::kStaleRound,
                  "update for round " + std::to_string(round) + ", the open round is " +
                      std::to_string(r.plan.round),
                  why);
  }
  if (!r.sampled.count(client_id)) {
    return Reject(UpdateVerdict::kNotSampled,
                  "client '" + client_id + "' was not sampled this round", why);
  }
  if (r.answered.count(client_id)) {
    return Reject(UpdateVerdict::kDuplicate,
                  "client '" + client_id + "' already answered this round", why);
  }
  r.answered.insert(client_id);
  if (r.record.succeeded >= r.plan.target || clock_.NowMicros() > r.plan.deadline_micros) {
    return Reject(UpdateVerdict::kLate, "round " + std::to_string(round) + " already closed", why);
  }
  return UpdateVerdict::kAccepted;
}

UpdateVerdict RoundEngine::Submit(int round, ClientUpdate update, std::string* why) {
  const auto reject = [&](UpdateVerdict verdict, const std::string& message) {
    return Reject(verdict, message, why);
  };
  if (open_ && open_->secure && round == open_->plan.round) {
    // Checked before Admit: a plain update never counts as the client's answer.
    return reject(UpdateVerdict::kMalformed,
                  "round " + std::to_string(round) +
                      " uses secure aggregation: the server accepts only masked contributions");
  }
  if (UpdateVerdict v = Admit(round, update.client_id, why); v != UpdateVerdict::kAccepted) {
    return v;
  }
  OpenRound& r = *open_;
  if (update.num_examples <= 0) {
    return reject(UpdateVerdict::kMalformed, "example count must be positive");
  }
  if (!std::isfinite(update.train_loss)) {
    return reject(UpdateVerdict::kMalformed, "reported training loss is not finite");
  }
  if (update.weights.size() != layout_.size()) {
    return reject(UpdateVerdict::kMalformed, "update has " + std::to_string(update.weights.size()) +
                                                 " tensors, the model " +
                                                 std::to_string(layout_.size()));
  }
  for (size_t i = 0; i < trainable_.size(); ++i) {
    if (!trainable_[i]) update.weights[i] = global_[i];
  }
  if (!update.values_checked) {
    if (Status s = layout_.Check(update.weights); !s.ok()) {
      return reject(UpdateVerdict::kMalformed, s.message());
    }
  }
  if (Status s = r.aggregator->Add(update); !s.ok()) {
    return reject(UpdateVerdict::kMalformed, s.message());
  }
  ++r.record.succeeded;
  r.record.examples += update.num_examples;
  r.loss_sum += update.train_loss * static_cast<double>(update.num_examples);
  return UpdateVerdict::kAccepted;
}

UpdateVerdict RoundEngine::SubmitMasked(int round, const std::string& client_id,
                                        const secagg::MaskedInput& masked, std::string* why) {
  if (open_ && round == open_->plan.round && !open_->secure) {
    return Reject(UpdateVerdict::kMalformed,
                  "round " + std::to_string(round) + " does not use secure aggregation", why);
  }
  if (UpdateVerdict v = Admit(round, client_id, why); v != UpdateVerdict::kAccepted) return v;
  OpenRound& r = *open_;
  if (Status s = r.secure->HandleMaskedInput(client_id, masked); !s.ok()) {
    return Reject(UpdateVerdict::kMalformed, s.message(), why);
  }
  ++r.record.succeeded;
  return UpdateVerdict::kAccepted;
}

Result<std::unique_ptr<SecureRound>> RoundEngine::StartSecureRound(
    int round, std::vector<std::string> roster) {
  // Public randomness of the round, derived from the engine's seed so a simulation is
  // reproducible and the client sample is the same as without secure aggregation (the
  // sampler is not drawn from). round_id: the round number and 32 bits of that derivation.
  uint8_t ikm[12];
  for (int i = 0; i < 8; ++i) ikm[i] = static_cast<uint8_t>(options_.seed >> (8 * i));
  for (int i = 0; i < 4; ++i)
    ikm[8 + i] = static_cast<uint8_t>(static_cast<uint32_t>(round) >> (8 * i));
  static const char kSalt[] = "cleave secure round";
  CLEAVE_ASSIGN_OR_RETURN(
      crypto::Key256 graph_seed,
      crypto::HkdfKey(crypto::ByteView(reinterpret_cast<const uint8_t*>(kSalt), sizeof(kSalt) - 1),
                      crypto::ByteView(ikm, sizeof(ikm)),
                      crypto::ByteView(reinterpret_cast<const uint8_t*>("graph"), 5)));
  const uint64_t round_id =
      (static_cast<uint64_t>(graph_seed[0]) << 56) | (static_cast<uint64_t>(graph_seed[1]) << 48) |
      (static_cast<uint64_t>(graph_seed[2]) << 40) | (static_cast<uint64_t>(graph_seed[3]) << 32) |
      static_cast<uint32_t>(round);
  int64_t trainable_elements = 0;
  for (size_t i = 0; i < global_.size(); ++i) {
    if (trainable_[i]) trainable_elements += global_[i].numel();
  }
  CLEAVE_ASSIGN_OR_RETURN(
      SecureRoundParams params,
      MakeSecureRoundParams(options_.secure, static_cast<uint32_t>(roster.size()),
                            trainable_elements, round_id, graph_seed));
  if (std::optional<DistributedNoise> noise = strategy_->SecureClientNoise()) {
    params.dp_clip_norm = noise->clip_norm;
    params.dp_noise_stddev =
        noise->noise_multiplier * noise->clip_norm / std::sqrt(static_cast<double>(roster.size()));
  }
  return SecureRound::Create(params, std::move(roster));
}

void RoundEngine::ReportFailure(int round, const std::string& client_id,
                                const std::string& reason) {
  if (!open_ || round != open_->plan.round) return;
  if (!open_->sampled.count(client_id) || open_->answered.count(client_id)) return;
  open_->answered.insert(client_id);
  ++open_->record.failed;
  // Why clients failed, counted by reason (a few distinct reasons; the rest as "other"), so
  // a round that fails everywhere says why in its record.
  constexpr size_t kMaxReasons = 8;
  nlohmann::json& reasons = open_->record.extra["failure_reasons"];
  if (!reasons.is_object()) reasons = nlohmann::json::object();
  // Reasons may come from peers: bounded, printable ASCII only (a JSON key must be UTF-8).
  std::string text = reason.substr(0, 200);
  for (char& c : text) {
    if (c < 0x20 || c > 0x7e) c = '?';
  }
  const std::string key = reasons.contains(text) || reasons.size() < kMaxReasons ? text : "other";
  reasons[key] = reasons.value(key, 0) + 1;
}

bool RoundEngine::RoundDone() const {
  if (!open_) return false;
  return open_->record.succeeded >= open_->plan.target ||
         open_->answered.size() >= open_->sampled.size() ||
         clock_.NowMicros() >= open_->plan.deadline_micros;
}

int64_t RoundEngine::MicrosUntilDeadline() const {
  if (!open_) return 0;
  return std::max<int64_t>(0, open_->plan.deadline_micros - clock_.NowMicros());
}

std::vector<std::string> RoundEngine::Pending() const {
  std::vector<std::string> pending;
  if (!open_) return pending;
  for (const auto& id : open_->sampled) {
    if (!open_->answered.count(id)) pending.push_back(id);
  }
  return pending;
}

Result<RoundRecord> RoundEngine::FinishRound() {
  if (!open_) return Status::FailedPrecondition("round engine: no round is open");
  OpenRound r = std::move(*open_);
  open_.reset();
  RoundRecord& record = r.record;
  record.missing = static_cast<int>(r.sampled.size() - r.answered.size());
  if (record.examples > 0) record.train_loss = r.loss_sum / static_cast<double>(record.examples);
  if (record.succeeded < options_.quorum) {
    std::ostringstream msg;
    msg << "quorum not met: " << record.succeeded << " of " << options_.quorum
        << " required updates (" << record.failed << " failed, " << record.rejected << " rejected, "
        << record.missing << " missing)";
    if (record.extra.contains("failure_reasons") && !record.extra["failure_reasons"].empty()) {
      msg << "; a client failed with: " << record.extra["failure_reasons"].begin().key();
    }
    record.failure = msg.str();
  } else {
    Result<Weights> aggregate = r.secure ? AggregateSecure(r) : r.aggregator->Finish();
    Result<Weights> next = aggregate.ok() ? strategy_->Apply(global_, *aggregate, trainable_)
                                          : Result<Weights>(aggregate.status());
    if (next.ok()) {
      if (Status s = layout_.Check(*next); !s.ok()) next = s.WithContext("strategy output");
    }
    if (next.ok()) {
      global_ = std::move(*next);
      record.applied = true;
    } else {
      record.failure = "aggregation failed: " + next.status().message();
    }
  }
  r.aggregator.reset();
  r.secure.reset();
  if (json report = strategy_->RoundReport(); !report.is_null()) record.extra["strategy"] = report;
  if (evaluator_) {
    Result<Evaluation> eval = evaluator_(global_);
    if (eval.ok()) {
      record.eval_accuracy = eval->accuracy;
      record.eval_loss = eval->loss;
    } else {
      record.extra["eval_error"] = eval.status().ToString();
    }
  }
  record.seconds = (clock_.NowMicros() - r.started_micros) / 1e6;
  ++completed_rounds_;
  history_.push_back(record);
  return record;
}

Result<Weights> RoundEngine::AggregateSecure(OpenRound& r) {
  Result<secagg::AggregateResult> finished = r.secure->Finish();
  if (!finished.ok()) return finished.status().WithContext("secure aggregation");
  const secagg::AggregateResult& sum = *finished;
  CLEAVE_ASSIGN_OR_RETURN(SecureAggregate decoded,
                          DecodeAggregate(r.secure->params(), sum, global_, trainable_));
  if (r.secure->params().dp_clip_norm > 0) {
    // Every contribution weighed 1: the weight sum counts clients, not examples.
    CLEAVE_RETURN_IF_ERROR(strategy_->OnSecureAggregate(
        decoded.contributors, static_cast<int>(r.secure->roster().size())));
  }
  // With distributed DP every client weighs 1, so the sum reveals no example count.
  r.record.examples = r.secure->params().dp_clip_norm > 0 ? 0 : decoded.examples;
  r.record.train_loss = decoded.mean_loss;
  r.record.extra["secure_aggregation"] = {{"contributors", decoded.contributors},
                                          {"recovered_dropouts", decoded.recovered},
                                          {"params", r.secure->params().ToJson()}};
  return std::move(decoded.aggregate);
}

Result<RoundEngine::Snapshot> RoundEngine::Save() const {
  if (open_) return Status::FailedPrecondition("round engine: cannot snapshot mid-round");
  Snapshot s;
  std::ostringstream rng;
  rng << sampler_;
  json history = json::array();
  for (const auto& r : history_) history.push_back(r.ToJson());
  s.engine = {{"completed_rounds", completed_rounds_}, {"sampler", rng.str()},
              {"strategy", strategy_->name()},         {"layout", layout_.ToJson()},
              {"options", options_.ToJson()},          {"history", history}};
  s.global = CloneWeights(global_);
  s.strategy_state = strategy_->SaveState();
  return s;
}

Status RoundEngine::Restore(const Snapshot& s) {
  if (open_) return Status::FailedPrecondition("round engine: cannot restore mid-round");
  try {
    if (s.engine.at("strategy").get<std::string>() != strategy_->name()) {
      return Status::InvalidArgument("checkpoint was written by strategy '" +
                                     s.engine.at("strategy").get<std::string>() +
                                     "', this run uses '" + strategy_->name() + "'");
    }
    CLEAVE_ASSIGN_OR_RETURN(WeightsLayout layout, WeightsLayout::FromJson(s.engine.at("layout")));
    if (!(layout == layout_)) {
      return Status::InvalidArgument("checkpoint holds a different model layout");
    }
    CLEAVE_RETURN_IF_ERROR(layout_.Check(s.global).WithContext("checkpoint weights"));
    std::vector<RoundRecord> history;
    for (const auto& r : s.engine.at("history")) {
      CLEAVE_ASSIGN_OR_RETURN(RoundRecord record, RoundRecord::FromJson(r));
      history.push_back(std::move(record));
    }
    std::mt19937_64 sampler;
    std::istringstream rng(s.engine.at("sampler").get<std::string>());
    rng >> sampler;
    if (rng.fail()) return Status::InvalidArgument("checkpoint: unreadable sampler state");
    const int completed = s.engine.at("completed_rounds").get<int>();
    if (completed < 0) return Status::InvalidArgument("checkpoint: negative round count");
    CLEAVE_RETURN_IF_ERROR(strategy_->LoadState(s.strategy_state));
    global_ = CloneWeights(s.global);
    sampler_ = sampler;
    history_ = std::move(history);
    completed_rounds_ = completed;
    return Status::Ok();
  } catch (const json::exception& e) {
    return Status::InvalidArgument(std::string("checkpoint: engine state: ") + e.what());
  }
}

}  // namespace cleave::federated
