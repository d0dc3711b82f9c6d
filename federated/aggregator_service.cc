// AggregatorService itself: Create (options, engine, checkpoint restore, evaluation, bind),
// Run (the serving loop: when rounds open and close, receive, decode and dispatch) and the
// client sessions (Register, Heartbeat, Bye, silent clients timing out). Rounds live in
// aggregator_rounds.cc, their secure stages in aggregator_secure_stages.cc; the protocol is
// described in aggregator_service.h.
#include "federated/aggregator_service_internal.h"

#include <unistd.h>

#include <algorithm>
#include <type_traits>
#include <variant>

#include "common/file_util.h"
#include "federated/checkpoint.h"
#include "federated/local_training.h"
#include "federated/wire_convert.h"

namespace cleave::federated {

using internal::Log;
using internal::ToWireCompressionKind;
using nlohmann::json;

bool AggregatorService::Impl::VouchFor(const Envelope& from, const std::string& client_id,
                                       Claim claim, const char* what, uint32_t round) {
  auto it = clients.find(client_id);
  const bool live = it != clients.end() && !it->second.gone;
  const IdentityVerdict verdict = identities.Check(from.identity, client_id, live);
  switch (verdict) {
    case IdentityVerdict::kBound:
    case IdentityVerdict::kFree: return true;
    case IdentityVerdict::kReleasable:
      if (claim == Claim::kRegister) return true;
      // Another connection held the id (or a key did before the allow list bound the id to
      // this one); only a Register takes it over.
      RefuseIdentity(from, client_id, claim, what, round, "taken", fed->identity_taken,
                     "client '" + client_id + "' belongs to another connection: register again");
      return false;
    case IdentityVerdict::kMismatch: {
      const std::string listed = identities.ListedClientOf(from.identity);
      RefuseIdentity(
          from, client_id, claim, what, round, "mismatch", fed->identity_mismatch,
          "this sender (" + ClientIdentities::Describe(from.identity) + ") " +
              (listed.empty() ? "speaks for client '" + identities.ClientOf(from.identity)
                              : "is bound by the CURVE allow list to client '" + listed) +
              "', not '" + client_id + "'");
      return false;
    }
    case IdentityVerdict::kTaken:
    default: {
      const bool listed = !identities.ListedIdentityOf(client_id).empty();
      RefuseIdentity(from, client_id, claim, what, round, "taken", fed->identity_taken,
                     "client '" + client_id + "' belongs to another " +
                         (listed ? "CURVE key (the allow list binds it)"
                          : ClientIdentities::IsCurveKey(identities.IdentityOf(client_id))
                              ? "CURVE key"
                              : "connection (its session is live)"));
      return false;
    }
  }
}

void AggregatorService::Impl::RefuseIdentity(const Envelope& from, const std::string& client_id,
                                             Claim claim, const char* what, uint32_t round,
                                             const char* reason, prometheus::Counter* metric,
                                             const std::string& why) {
  Count(std::string("identity_refused_") + reason);
  metric->Increment();
  // A flood of forged ids must not become a flood of log lines.
  const uint64_t n = ++identity_refusals;
  const auto level = n <= 20 || n % 1000 == 0 ? spdlog::level::warn : spdlog::level::debug;
  Log()->log(level, "refused {} naming client '{}' from {} ({}; {} identity refusals so far): {}",
             what, client_id, ClientIdentities::Describe(from.identity), reason, n, why);
  if (claim == Claim::kRegister || claim == Claim::kHeartbeat) {
    fl::RegisterReply reply;
    reply.accepted = false;
    reply.error = "identity: " + why;
    reply.poll_interval_ms = static_cast<uint32_t>(options.poll_interval_ms);
    SendTo(from.peer, fl::Message(reply));
  } else if (claim == Claim::kRoundMessage) {
    SendTo(from.peer,
           fl::Message(fl::MakeUpdateAck(round, fl::AckReason::kRejected, "identity: " + why)));
  }
}

void AggregatorService::Impl::OnRegister(const Envelope& from, const fl::Register& reg) {
  if (!VouchFor(from, reg.client_id, Claim::kRegister, "register")) return;
  fl::RegisterReply reply;
  reply.poll_interval_ms = static_cast<uint32_t>(options.poll_interval_ms);
  reply.round = static_cast<uint32_t>(engine->rounds_completed() + (plan ? 1 : 0));
  const bool secure = options.engine.secure.enabled;
  if (reg.layout_sha256 != layout_sha) {
    reply.accepted = false;
    reply.error = "model mismatch: this aggregator coordinates model '" + model.model_name +
                  "' (layout " + layout_sha.substr(0, 12) + "...), the client has '" +
                  reg.model_name + "' (" + reg.layout_sha256.substr(0, 12) + "...)";
    Count("register_refused");
    Log()->warn("refused client '{}': {}", reg.client_id, reply.error);
  } else if (!clients.count(reg.client_id) &&
             clients.size() >= static_cast<size_t>(options.max_clients)) {
    RefuseIdentity(from, reg.client_id, Claim::kRegister, "register", 0, "max_clients",
                   fed->identity_max_clients,
                   "this aggregator has registered its limit of " +
                       std::to_string(options.max_clients) + " clients (aggregator.max_clients)");
    return;
  } else {
    identities.Bind(from.identity, reg.client_id);
    Client& c = clients[reg.client_id];
    c.peer = from.peer;
    // Secure aggregation: keep only whether it has data (see Client::num_examples).
    c.num_examples =
        secure ? (reg.num_examples > 0 ? 1 : 0) : static_cast<int64_t>(reg.num_examples);
    c.last_seen_micros = clock->NowMicros();
    c.gone = false;
    reply.accepted = true;
    Count("registered");
    if (secure) {
      Log()->info("client '{}' registered", reg.client_id);
    } else {
      Log()->info("client '{}' registered ({} examples)", reg.client_id, reg.num_examples);
    }
  }
  SendTo(from.peer, fl::Message(reply));
}

void AggregatorService::Impl::OnHeartbeat(const Envelope& from, const fl::Heartbeat& hb) {
  if (!VouchFor(from, hb.client_id, Claim::kHeartbeat, "heartbeat")) return;
  const std::string& peer = from.peer;
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

void AggregatorService::Impl::OnBye(const Envelope& from, const fl::Bye& bye) {
  if (!VouchFor(from, bye.client_id, Claim::kBye, "bye")) return;
  auto it = clients.find(bye.client_id);
  if (it == clients.end()) return;
  it->second.gone = true;
  if (plan) engine->ReportFailure(plan->round, bye.client_id, "left: " + bye.message);
  Log()->info("client '{}' left ({})", bye.client_id, fl::ByeReasonName(bye.reason));
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
  if (options.max_clients < 1) {
    return Status::InvalidArgument("aggregator: max_clients must be >= 1");
  }
  if (!options.publish_dir.empty() && model.base_bundle.empty()) {
    return Status::InvalidArgument("aggregator: publishing bundles needs a base bundle");
  }
  auto impl = std::make_unique<Impl>();
  impl->clock = &clock;
  impl->identities = ClientIdentities(options.curve_client_ids);
  impl->metrics = options.metrics ? options.metrics : std::make_shared<Metrics>();
  impl->m = &impl->metrics->Service("aggregator");
  impl->fed = &impl->metrics->Federated();
  impl->connected = &impl->metrics->ConnectedEdges();
  if (!model.net) {
    CLEAVE_RETURN_IF_ERROR(model.spec.Validate().WithContext("aggregator model"));
    const split::InputSpec input =
        model.input.class_names.empty() ? split::InputSpec::Legacy(model.spec) : model.input;
    CLEAVE_ASSIGN_OR_RETURN(
        model.net, split::CallTorch(split::TorchSource::kOwnState, "aggregator model", [&] {
          return std::shared_ptr<split::TrainableNet>(split::MakeTrainable(model.spec, input));
        }));
  }
  const WeightsLayout layout = LayoutOf(*model.net);
  impl->layout_sha = LayoutSha256(layout);
  CLEAVE_RETURN_IF_ERROR(options.compression.Validate().WithContext("aggregator"));
  CLEAVE_RETURN_IF_ERROR(CheckCompressionCompatible(options.compression,
                                                    options.engine.secure.enabled,
                                                    options.strategy.name)
                             .WithContext("aggregator"));
  CLEAVE_RETURN_IF_ERROR(ToWireCompressionKind(options.compression.kind).status());
  CLEAVE_RETURN_IF_ERROR(options.continual.Validate(options.rounds, "aggregator"));
  if (options.continual.enabled && options.continual.scenario == "class" &&
      options.continual.experiences > model.net->num_classes()) {
    return Status::InvalidArgument(
        "aggregator: continual.experiences (" + std::to_string(options.continual.experiences) +
        ") exceeds the model's classes (" + std::to_string(model.net->num_classes()) + ")");
  }
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<Strategy> strategy, MakeStrategy(options.strategy));
  options.engine.split_after = model.net->split_after();
  options.engine.named_parts = model.net->kind() == split::kTorchScriptSplitKind;
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
    impl->eval_net = model.net;
    std::shared_ptr<split::TrainableNet> net = impl->eval_net;
    const split::LabeledImages data = model.eval_data;
    impl->engine->set_evaluator(
        [net, data](const Weights& w) mutable { return EvaluateWeights(*net, w, data); });
    CLEAVE_ASSIGN_OR_RETURN(Evaluation e,
                            EvaluateWeights(*impl->eval_net, impl->engine->global(), data));
    impl->initial_eval = e;
    Log()->info("test accuracy of the starting model {:.4f}", e.accuracy);
    if (options.continual.enabled) {  // the accuracy matrix, resumed from the history
      impl->continual_eval.emplace(options.continual, model.net->num_classes(),
                                   options.engine.seed);
      CLEAVE_RETURN_IF_ERROR(impl->continual_eval->Restore(impl->engine->history()));
    }
  }
  if (options.continual.enabled && model.eval_data.size() == 0) {
    Log()->warn(
        "continual rounds without evaluation data (aggregator.eval_data_dir): no "
        "accuracy matrix will be kept");
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
            s.OnRegister(env, body);
          } else if constexpr (std::is_same_v<T, fl::Heartbeat>) {
            s.OnHeartbeat(env, body);
          } else if constexpr (std::is_same_v<T, fl::Update>) {
            s.OnUpdate(env, body);
          } else if constexpr (std::is_same_v<T, fl::Bye>) {
            s.OnBye(env, body);
          } else if constexpr (std::is_same_v<T, fl::SecAggKeys>) {
            s.OnSecAggKeys(env, body);
          } else if constexpr (std::is_same_v<T, fl::SecAggShareKeys>) {
            s.OnSecAggShareKeys(env, body);
          } else if constexpr (std::is_same_v<T, fl::SecAggMaskedInput>) {
            s.OnSecAggMaskedInput(env, body);
          } else if constexpr (std::is_same_v<T, fl::SecAggUnmaskShares>) {
            s.OnSecAggUnmaskShares(env, body);
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
