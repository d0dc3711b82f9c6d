// FederatedClient, the public class and its conversation with the aggregator: options and
// data checks, Start/Stop/stats, the client thread's loop (register, heartbeat, backoff),
// sending, and the handlers of the aggregator's messages (RegisterReply, Wait, Bye,
// UpdateAck, RoundConfig). A round's training and update are in fl_client_training.cc,
// the secure-aggregation stages in fl_client_secure.cc.
#include "edge/fl_client.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "common/logging.h"
#include "edge/fl_client_internal.h"
#include "federated/wire_convert.h"
#include "split/torch_status.h"

namespace cleave::edge {

namespace fl = wire::fl;
using federated::Weights;

namespace fl_client_internal {

std::shared_ptr<spdlog::logger> Log() { return GetLogger("fl-client"); }

std::string ShortSha(const std::string& sha) { return sha.substr(0, 12) + "..."; }

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

uint64_t ClientNumber(const std::string& client_id) {
  uint64_t h = 14695981039346656037ull;
  for (char c : client_id) {
    h ^= static_cast<uint8_t>(c);
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace fl_client_internal

using fl_client_internal::Log;
using fl_client_internal::ShapeText;
using fl_client_internal::ShortSha;

namespace {

// The longest the client thread waits without checking stop_ (bounds Stop()'s latency).
constexpr int kStopCheckMs = 50;
// How long a send may wait for the link or queue room before it counts as failed.
constexpr int kSendTimeoutMs = 100;
// Consecutive send failures before "unreachable" is logged as a warning (the first sends
// after start-up often race the TCP handshake).
constexpr int kQuietSendFailures = 3;
// Malformed frames logged at warn level before switching to debug (a hostile peer must not
// flood the log).
constexpr uint64_t kLoggedMalformed = 10;

// Peer text made safe for one log line: control bytes become '?', long text is cut.
std::string Printable(const std::string& text) {
  constexpr size_t kMax = 300;
  std::string out = text.substr(0, kMax);
  for (char& c : out) {
    const auto byte = static_cast<uint8_t>(c);
    if (byte < 0x20 || byte == 0x7F) c = '?';
  }
  return text.size() > kMax ? out + "..." : out;
}

Status CheckOptions(const FederatedClientOptions& o) {
  if (o.aggregator.empty()) return Status::InvalidArgument("federated client: no aggregator");
  // A probe Register checks the id and model name with the wire's own rules.
  fl::Register probe;
  probe.client_id = o.client_id;
  probe.model_name = o.model_name;
  probe.layout_sha256 = std::string(64, '0');
  CLEAVE_RETURN_IF_ERROR(fl::ValidateMessage(fl::Message(probe)).WithContext("federated client"));
  if (o.poll_interval_ms < 1 || o.max_poll_interval_ms < o.poll_interval_ms ||
      o.register_timeout_ms < 1 || o.register_retry_ms < 1 || o.ack_timeout_ms < 1 ||
      o.min_backoff_ms < 1 || o.max_backoff_ms < o.min_backoff_ms) {
    return Status::InvalidArgument(
        "federated client: intervals must be >= 1 ms, max_poll_interval_ms >= poll_interval_ms "
        "and max_backoff_ms >= min_backoff_ms");
  }
  if (o.max_steps < 0 || o.time_budget_ms < 0 || o.deadline_margin_ms < 0) {
    return Status::InvalidArgument(
        "federated client: max_steps, time_budget_ms and deadline_margin_ms must be >= 0");
  }
  if (o.max_message_bytes < 1 && o.max_message_bytes != -1) {
    return Status::InvalidArgument("federated client: max_message_bytes must be >= 1 or -1");
  }
  return Status::Ok();
}

Status CheckData(const split::LabeledImages& data, const split::InputSpec& input) {
  const int64_t n = data.size();
  if (n < 1) return Status::InvalidArgument("federated client: no local training data");
  const torch::Tensor& x = data.images;
  if (x.dim() != 4 || x.scalar_type() != torch::kFloat || x.size(1) != input.channels ||
      x.size(2) != input.height || x.size(3) != input.width) {
    return Status::InvalidArgument(
        "federated client: images must be float [N," + std::to_string(input.channels) + "," +
        std::to_string(input.height) + "," + std::to_string(input.width) + "], got " +
        ShapeText(x.sizes().vec()));
  }
  const torch::Tensor& y = data.labels;
  if (!y.defined() || y.dim() != 1 || y.size(0) != n || y.scalar_type() != torch::kLong) {
    return Status::InvalidArgument("federated client: labels must be int64 [" + std::to_string(n) +
                                   "]");
  }
  const size_t classes = input.class_names.size();
  if (y.min().item<int64_t>() < 0 || y.max().item<int64_t>() >= static_cast<int64_t>(classes)) {
    return Status::InvalidArgument("federated client: labels must lie in [0, " +
                                   std::to_string(classes) + ")");
  }
  return Status::Ok();
}

}  // namespace

nlohmann::json FederatedClientStats::ToJson() const {
  return {{"running", running},
          {"registered", registered},
          {"finished", finished},
          {"registrations", registrations},
          {"registrations_refused", registrations_refused},
          {"heartbeats_sent", heartbeats_sent},
          {"round_configs", round_configs},
          {"configs_rejected", configs_rejected},
          {"training_failures", training_failures},
          {"rounds_trained", rounds_trained},
          {"updates_sent", updates_sent},
          {"updates_accepted", updates_accepted},
          {"updates_rejected", updates_rejected},
          {"rejected_by_reason", rejected_by_reason},
          {"secure_rounds", secure_rounds},
          {"masked_inputs_sent", masked_inputs_sent},
          {"unmask_shares_sent", unmask_shares_sent},
          {"compressed_updates", compressed_updates},
          {"continual_rounds", continual_rounds},
          {"rounds_without_data", rounds_without_data},
          {"experience", experience},
          {"malformed_messages", malformed_messages},
          {"unexpected_messages", unexpected_messages},
          {"send_failures", send_failures},
          {"last_round", last_round},
          {"last_train_loss", last_train_loss},
          {"last_error", last_error}};
}

FederatedClient::FederatedClient(FederatedClientOptions options, Clock& clock)
    : options_(std::move(options)), clock_(clock) {}

Result<std::unique_ptr<FederatedClient>> FederatedClient::Start(
    TransportContext& context, FederatedClientOptions options, const split::VisionModelSpec& spec,
    const Weights& initial, split::LabeledImages data, Clock& clock) {
  CLEAVE_RETURN_IF_ERROR(spec.Validate().WithContext("federated client: model spec"));
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<split::TrainableNet> net,
                          split::CallTorch(split::TorchSource::kOwnState, "federated client", [&] {
                            return split::MakeTrainable(spec, split::InputSpec::Legacy(spec));
                          }));
  return Start(context, std::move(options), std::move(net), initial, std::move(data), clock);
}

Result<std::unique_ptr<FederatedClient>> FederatedClient::Start(
    TransportContext& context, FederatedClientOptions options,
    std::unique_ptr<split::TrainableNet> net, const Weights& initial, split::LabeledImages data,
    Clock& clock) {
  CLEAVE_RETURN_IF_ERROR(CheckOptions(options));
  if (!net) return Status::InvalidArgument("federated client: no network");
  std::unique_ptr<FederatedClient> client(new FederatedClient(std::move(options), clock));
  const auto build = [&] {  // from the caller's network, weights and data
    CLEAVE_RETURN_IF_ERROR(CheckData(data, net->input()));
    client->net_ = std::move(net);
    CLEAVE_RETURN_IF_ERROR(
        federated::SetWeights(*client->net_, initial).WithContext("federated client"));
    client->layout_ = federated::LayoutOf(*client->net_);
    return Status::Ok();
  };
  CLEAVE_RETURN_IF_ERROR(
      split::CallTorch(split::TorchSource::kExternalInput, "federated client", build));
  client->layout_sha256_ = federated::LayoutSha256(client->layout_);
  client->data_ = std::move(data);
  SocketOptions socket;
  socket.max_message_bytes = client->options_.max_message_bytes;
  socket.configure = client->options_.socket_configure;
  CLEAVE_ASSIGN_OR_RETURN(client->dealer_,
                          DealerClient::Connect(context, client->options_.aggregator, socket));
  {
    MutexLock lock(&client->mu_);  // no other thread yet; the lock is for the analysis
    client->stats_.running = true;
  }
  client->thread_ = std::thread([c = client.get()] { c->Run(); });
  return client;
}

FederatedClient::~FederatedClient() {
  Stop();
  if (thread_.joinable()) thread_.join();
}

void FederatedClient::Stop() { stop_.store(true); }

FederatedClientStats FederatedClient::stats() const {
  MutexLock lock(&mu_);
  return stats_;
}

bool FederatedClient::WaitFor(const std::function<bool(const FederatedClientStats&)>& predicate,
                              int64_t timeout_ms) const {
  MutexLock lock(&mu_);
  return changed_.WaitFor(&mu_, std::chrono::milliseconds(timeout_ms),
                          [&]() REQUIRES(mu_) { return predicate(stats_); });
}

void FederatedClient::Update(const std::function<void(FederatedClientStats&)>& change) {
  {
    MutexLock lock(&mu_);
    change(stats_);
  }
  changed_.NotifyAll();
}

void FederatedClient::RecordError(const std::string& error) {
  Update([&](FederatedClientStats& s) { s.last_error = error; });
}

// ---- The client thread ----

void FederatedClient::Run() {
  try {
    Log()->info("federated client '{}' joining {} ({} local examples, layout {})",
                options_.client_id, options_.aggregator, data_.size(), ShortSha(layout_sha256_));
    while (!stop_.load() && !finished_ && !vanished_) {
      const int64_t now = clock_.NowMicros();
      Tick(now);
      int64_t due = registered_ ? next_heartbeat_micros_ : next_register_micros_;
      due = std::max(due, blocked_until_micros_);
      const int wait_ms = static_cast<int>(
          std::clamp<int64_t>((due - clock_.NowMicros() + 999) / 1000, 1, kStopCheckMs));
      Result<std::optional<std::string>> in = dealer_->Receive(wait_ms);
      if (!in.ok()) {
        RecordError("aggregator socket failed: " + in.status().ToString());
        Log()->error("federated client stops: aggregator socket failed: {}",
                     in.status().ToString());
        break;
      }
      if (in->has_value()) Dispatch(**in);
    }
    if (registered_ && !finished_ && !vanished_) {
      fl::Bye bye;
      bye.client_id = options_.client_id;
      bye.reason = fl::ByeReason::kLeaving;
      bye.message = "edge shutting down";
      (void)dealer_->Send(fl::EncodeMessage(fl::Message(bye)), 0);  // best effort
    }
  } catch (const std::exception& e) {
    // Nothing here should throw; if libtorch or the allocator does, participation ends but the
    // edge keeps serving.
    RecordError(std::string("internal error: ") + e.what());
    Log()->error("federated client stops after an internal error: {}", e.what());
  }
  Update([&](FederatedClientStats& s) {
    s.running = false;
    s.registered = false;
  });
}

void FederatedClient::Tick(int64_t now) {
  if (now < blocked_until_micros_) return;
  if (!registered_) {
    if (now < next_register_micros_) return;
    fl::Register reg;
    reg.client_id = options_.client_id;
    reg.num_examples = static_cast<uint64_t>(data_.size());
    reg.capabilities.can_train_full = true;
    reg.capabilities.can_train_head = true;
    reg.capabilities.max_steps = static_cast<uint64_t>(options_.max_steps);
    reg.capabilities.accepts_delta = false;
    reg.model_name = options_.model_name;
    reg.layout_sha256 = layout_sha256_;
    if (SendMessage(fl::Message(reg)).ok()) {
      next_register_micros_ = now + options_.register_timeout_ms * 1000;
    }
    return;
  }
  // While an update waits for its ack, heartbeats still name its round, so the aggregator
  // does not send that round's config again (see OnRoundConfig).
  const bool awaiting_ack = sent_round_ > closed_round_ && now < awaiting_ack_until_micros_;
  // So does an open secure session: the round's stages are still going on.
  const uint32_t busy = secure_ ? secure_->config.round : awaiting_ack ? sent_round_ : 0;
  if (now >= next_heartbeat_micros_) SendHeartbeat(busy);
}

int64_t FederatedClient::PollIntervalMicros() const {
  const int64_t ms = aggregator_poll_ms_ > 0 ? aggregator_poll_ms_ : options_.poll_interval_ms;
  return std::clamp<int64_t>(ms, 1, options_.max_poll_interval_ms) * 1000;
}

void FederatedClient::SendHeartbeat(uint32_t training_round) {
  fl::Heartbeat hb;
  hb.client_id = options_.client_id;
  hb.training_round = training_round;
  hb.has_global = global_round_ > 0;
  hb.global_round = global_round_;
  if (SendMessage(fl::Message(hb)).ok()) {
    next_heartbeat_micros_ = clock_.NowMicros() + PollIntervalMicros();
    Update([](FederatedClientStats& s) { ++s.heartbeats_sent; });
  }
}

Status FederatedClient::SendMessage(const fl::Message& message) {
  if (Status valid = fl::ValidateMessage(message); !valid.ok()) {
    // Our own message breaks the rules: a bug here, not the aggregator's fault.
    RecordError("internal: refusing to send an invalid message: " + valid.ToString());
    Log()->error("refusing to send an invalid {}: {}", fl::MessageKindName(message.body),
                 valid.ToString());
    Backoff();  // never a busy loop, even on a bug
    return valid;
  }
  return SendBytes(fl::EncodeMessage(message), fl::MessageKindName(message.body));
}

Status FederatedClient::SendBytes(const std::string& bytes, const char* what) {
  Status s = dealer_->Send(bytes, kSendTimeoutMs);
  if (s.ok()) {
    if (warned_unreachable_) Log()->info("aggregator {} reachable again", options_.aggregator);
    warned_unreachable_ = false;
    backoff_ms_ = 0;
    return s;
  }
  Backoff();
  Update([&](FederatedClientStats& s2) {
    ++s2.send_failures;
    s2.last_error = std::string("cannot send ") + what + ": " + s.ToString();
  });
  if (backoff_ms_ >= (options_.min_backoff_ms << kQuietSendFailures)) {
    warned_unreachable_ = true;
    Log()->warn("cannot send {} to the aggregator ({}); retrying in {} ms", what, s.ToString(),
                backoff_ms_);
  } else {
    Log()->debug("cannot send {} to the aggregator ({}); retrying in {} ms", what, s.ToString(),
                 backoff_ms_);
  }
  return s;
}

void FederatedClient::Backoff() {
  backoff_ms_ = backoff_ms_ == 0 ? options_.min_backoff_ms
                                 : std::min(backoff_ms_ * 2, options_.max_backoff_ms);
  blocked_until_micros_ = clock_.NowMicros() + backoff_ms_ * 1000;
}

void FederatedClient::Dispatch(const std::string& bytes) {
  Result<fl::Message> message = fl::DecodeMessage(bytes);
  if (!message.ok()) {
    uint64_t count = 0;
    Update([&](FederatedClientStats& s) {
      count = ++s.malformed_messages;
      s.last_error = "malformed message from the aggregator: " + message.status().ToString();
    });
    if (count <= kLoggedMalformed) {
      Log()->warn("ignoring a malformed message from the aggregator ({} bytes): {}", bytes.size(),
                  message.status().ToString());
    } else {
      Log()->debug("ignoring a malformed message from the aggregator ({} bytes): {}", bytes.size(),
                   message.status().ToString());
    }
    return;
  }
  std::visit(
      [&](const auto& body) {
        using T = std::decay_t<decltype(body)>;
        if constexpr (std::is_same_v<T, fl::RegisterReply>) {
          OnRegisterReply(body);
        } else if constexpr (std::is_same_v<T, fl::RoundConfig>) {
          OnRoundConfig(body);
        } else if constexpr (std::is_same_v<T, fl::UpdateAck>) {
          OnUpdateAck(body);
        } else if constexpr (std::is_same_v<T, fl::Wait>) {
          OnWait(body);
        } else if constexpr (std::is_same_v<T, fl::Bye>) {
          OnBye(body);
        } else if constexpr (std::is_same_v<T, fl::SecAggKeyDirectory>) {
          OnKeyDirectory(body);
        } else if constexpr (std::is_same_v<T, fl::SecAggForwardedShares>) {
          OnForwardedShares(body);
        } else if constexpr (std::is_same_v<T, fl::SecAggUnmaskRequest>) {
          OnUnmaskRequest(body);
        } else {
          // Register, Update, Heartbeat: client-to-aggregator kinds sent to us.
          Update([](FederatedClientStats& s) { ++s.unexpected_messages; });
          Log()->debug("ignoring a {} message from the aggregator",
                       fl::MessageKindName(message->body));
        }
      },
      message->body);
}

void FederatedClient::OnRegisterReply(const fl::RegisterReply& reply) {
  const int64_t now = clock_.NowMicros();
  const bool was_registered = registered_;
  if (reply.accepted) {
    aggregator_poll_ms_ = reply.poll_interval_ms;
    if (!was_registered) {
      // A new conversation: a restarted aggregator may replay round numbers we closed.
      registered_ = true;
      sent_round_ = 0;
      closed_round_ = 0;
      unacked_.clear();
      awaiting_ack_until_micros_ = 0;
      sent_update_.clear();
      next_heartbeat_micros_ = now;  // ask for work at once
      Update([](FederatedClientStats& s) {
        ++s.registrations;
        s.registered = true;
      });
      Log()->info("registered with {} as '{}' (aggregator round {}, heartbeat every {} ms)",
                  options_.aggregator, options_.client_id, reply.round,
                  PollIntervalMicros() / 1000);
    }
    return;
  }
  const std::string why = reply.error.empty() ? "no reason given" : Printable(reply.error);
  Update([&](FederatedClientStats& s) {
    ++s.registrations_refused;
    s.registered = false;
    s.last_error = "registration refused by " + options_.aggregator + ": " + why;
  });
  registered_ = false;
  if (was_registered) {
    // The answer to a Heartbeat: the aggregator no longer knows us (e.g. it restarted).
    Log()->warn("the aggregator forgot this client ({}); registering again", why);
    next_register_micros_ = now;
  } else {
    Log()->error("registration with {} refused: {} (retrying every {} ms)", options_.aggregator,
                 why, options_.register_retry_ms);
    next_register_micros_ = now + options_.register_retry_ms * 1000;
  }
}

void FederatedClient::OnWait(const fl::Wait& wait) {
  if (!registered_) {
    Update([](FederatedClientStats& s) { ++s.unexpected_messages; });
    return;
  }
  const int64_t ms = std::clamp<int64_t>(wait.retry_after_ms, 1, options_.max_poll_interval_ms);
  next_heartbeat_micros_ = clock_.NowMicros() + ms * 1000;
}

void FederatedClient::OnBye(const fl::Bye& bye) {
  if (!bye.client_id.empty() && bye.client_id != options_.client_id) {
    Update([](FederatedClientStats& s) { ++s.unexpected_messages; });
    return;
  }
  if (bye.reason == fl::ByeReason::kFinished) {
    finished_ = true;
    registered_ = false;
    uint64_t trained = 0;
    Update([&](FederatedClientStats& s) {
      s.finished = true;
      s.registered = false;
      trained = s.rounds_trained;
    });
    Log()->info("federated training finished ({}); this edge trained {} rounds",
                Printable(bye.message), trained);
    return;
  }
  // The aggregator stops (or says goodbye for another reason): register again when it is
  // back; until then sends fail and back off.
  Log()->warn("the aggregator said bye ({}: {}); will register again",
              fl::ByeReasonName(bye.reason), Printable(bye.message));
  registered_ = false;
  next_register_micros_ = clock_.NowMicros() + options_.min_backoff_ms * 1000;
  Update([](FederatedClientStats& s) { s.registered = false; });
}

void FederatedClient::OnUpdateAck(const fl::UpdateAck& ack) {
  auto pending = unacked_.find(ack.round);
  if (pending == unacked_.end() && secure_ && secure_->config.round == ack.round && !ack.accepted) {
    // The aggregator refused one of our key-exchange messages: we are out of this round.
    AbortSecure(ack.round, Status::FailedPrecondition(
                               std::string("the aggregator refused our secure aggregation "
                                           "message (") +
                               fl::AckReasonName(ack.reason) + "): " + Printable(ack.message)));
    return;
  }
  if (pending != unacked_.end() && secure_ && secure_->config.round == ack.round && !ack.accepted) {
    secure_.reset();  // our masked input does not count: there is nothing to unmask for us
  }
  if (pending == unacked_.end()) {
    Update([&](FederatedClientStats& s) {
      ++s.unexpected_messages;
      if (ack.reason == fl::AckReason::kMalformed) {
        s.last_error =
            "the aggregator could not decode a message from us: " + Printable(ack.message);
      }
    });
    Log()->debug("ignoring an UpdateAck for round {} ({}: {})", ack.round,
                 fl::AckReasonName(ack.reason), Printable(ack.message));
    return;
  }
  const std::string summary = std::move(pending->second);
  unacked_.erase(pending);
  closed_round_ = std::max(closed_round_, ack.round);
  if (ack.round == sent_round_) sent_update_.clear();
  const bool accepted = ack.accepted && ack.reason == fl::AckReason::kOk;
  Update([&](FederatedClientStats& s) {
    if (accepted) {
      ++s.updates_accepted;
    } else {
      ++s.updates_rejected;
      ++s.rejected_by_reason[fl::AckReasonName(ack.reason)];
      s.last_error = "round " + std::to_string(ack.round) + ": update rejected (" +
                     fl::AckReasonName(ack.reason) + "): " + Printable(ack.message);
    }
  });
  if (accepted) {
    Log()->info("round {}: {}; update accepted", ack.round, summary);
  } else {
    Log()->warn("round {}: {}; update rejected ({}): {}", ack.round, summary,
                fl::AckReasonName(ack.reason), Printable(ack.message));
  }
}

void FederatedClient::OnRoundConfig(const fl::RoundConfig& config) {
  const int64_t received = clock_.NowMicros();
  Update([](FederatedClientStats& s) { ++s.round_configs; });
  if (secure_) {
    if (secure_->config.round == config.round) {
      // A re-send that crossed our keys: the session is under way.
      Update([](FederatedClientStats& s) { ++s.unexpected_messages; });
      Log()->debug("round {}: ignoring a repeated config of the open secure round", config.round);
      return;
    }
    if (config.round > secure_->config.round) {
      Log()->info("round {}: secure round {} ended without us; dropping its session", config.round,
                  secure_->config.round);
      secure_.reset();
    }
  }
  if (config.round == sent_round_ && closed_round_ < config.round && !sent_update_.empty()) {
    if (received < awaiting_ack_until_micros_) {
      // The answer to a heartbeat sent before our update: the aggregator sees the update
      // (and acks it) right after. Training again would send a duplicate.
      Update([](FederatedClientStats& s) { ++s.unexpected_messages; });
      Log()->debug("round {}: ignoring a config that crossed our update", config.round);
      return;
    }
    // Asked again long after the update without an ack: the update was lost on the way.
    Log()->info("round {}: no ack and the aggregator asks again; re-sending the update",
                config.round);
    if (SendBytes(sent_update_, "update").ok()) {
      awaiting_ack_until_micros_ = clock_.NowMicros() + options_.ack_timeout_ms * 1000;
      Update([](FederatedClientStats& s) { ++s.updates_sent; });
    }
    return;
  }
  if (config.round <= closed_round_ || config.round < sent_round_) {
    Update([](FederatedClientStats& s) { ++s.unexpected_messages; });
    Log()->debug("ignoring a repeated RoundConfig for round {}", config.round);
    return;
  }
  Result<Weights> global = CheckConfig(config);
  if (!global.ok()) {
    Decline(config.round, global.status(), &FederatedClientStats::configs_rejected);
    return;
  }
  global_round_ = config.round;
  if (config.secure) {
    StartSecureRound(config, std::move(global).value(), received);
    return;
  }
  Train(config, std::move(global).value(), received);
}

}  // namespace cleave::edge
