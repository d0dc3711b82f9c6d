#include "edge/fl_client.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <utility>

#include "common/crypto.h"
#include "common/logging.h"
#include "federated/local_training.h"
#include "federated/wire_convert.h"

namespace cleave::edge {

namespace fl = wire::fl;
using federated::Weights;

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
// Rounds whose UpdateAck the client still expects, at most.
constexpr size_t kMaxUnackedRounds = 8;

std::shared_ptr<spdlog::logger> Log() { return GetLogger("fl-client"); }

std::string ShortSha(const std::string& sha) { return sha.substr(0, 12) + "..."; }

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

std::string Truncate(std::string text, size_t max_bytes) {
  if (text.size() > max_bytes) text.resize(max_bytes);
  return text;
}

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

// Smallest positive value of the two; 0 (none) when neither is positive.
int64_t MinPositive(int64_t a, int64_t b) {
  if (a <= 0) return std::max<int64_t>(b, 0);
  if (b <= 0) return a;
  return std::min(a, b);
}

// A stable 64-bit number for the client id (FNV-1a): the `client` input of the int8 rounding
// stream, so two clients in one round draw different coins.
uint64_t ClientNumber(const std::string& client_id) {
  uint64_t h = 14695981039346656037ull;
  for (char c : client_id) {
    h ^= static_cast<uint8_t>(c);
    h *= 1099511628211ull;
  }
  return h;
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

Status CheckData(const split::LabeledImages& data, const split::VisionModelSpec& spec) {
  const int64_t n = data.size();
  if (n < 1) return Status::InvalidArgument("federated client: no local training data");
  const torch::Tensor& x = data.images;
  if (x.dim() != 4 || x.scalar_type() != torch::kFloat || x.size(1) != spec.input_channels ||
      x.size(2) != spec.image_size || x.size(3) != spec.image_size) {
    return Status::InvalidArgument(
        "federated client: images must be float [N," + std::to_string(spec.input_channels) + "," +
        std::to_string(spec.image_size) + "," + std::to_string(spec.image_size) + "], got " +
        ShapeText(x.sizes().vec()));
  }
  const torch::Tensor& y = data.labels;
  if (!y.defined() || y.dim() != 1 || y.size(0) != n || y.scalar_type() != torch::kLong) {
    return Status::InvalidArgument("federated client: labels must be int64 [" + std::to_string(n) +
                                   "]");
  }
  if (y.min().item<int64_t>() < 0 || y.max().item<int64_t>() >= spec.num_classes) {
    return Status::InvalidArgument("federated client: labels must lie in [0, " +
                                   std::to_string(spec.num_classes) + ")");
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
  CLEAVE_RETURN_IF_ERROR(CheckOptions(options));
  CLEAVE_RETURN_IF_ERROR(spec.Validate().WithContext("federated client: model spec"));
  std::unique_ptr<FederatedClient> client(new FederatedClient(std::move(options), clock));
  try {
    CLEAVE_RETURN_IF_ERROR(CheckData(data, spec));
    client->net_ = split::SplitVisionNet(spec);
    CLEAVE_RETURN_IF_ERROR(
        federated::SetWeights(*client->net_, initial).WithContext("federated client"));
    client->layout_ = federated::LayoutOf(*client->net_);
  } catch (const c10::Error& e) {
    return Status::InvalidArgument(std::string("federated client: ") + e.what_without_backtrace());
  }
  client->layout_sha256_ = federated::LayoutSha256(client->layout_);
  client->data_ = std::move(data);
  SocketOptions socket;
  socket.max_message_bytes = client->options_.max_message_bytes;
  socket.configure = client->options_.socket_configure;
  CLEAVE_ASSIGN_OR_RETURN(client->dealer_,
                          DealerClient::Connect(context, client->options_.aggregator, socket));
  client->stats_.running = true;
  client->thread_ = std::thread([c = client.get()] { c->Run(); });
  return client;
}

FederatedClient::~FederatedClient() {
  Stop();
  if (thread_.joinable()) thread_.join();
}

void FederatedClient::Stop() { stop_.store(true); }

FederatedClientStats FederatedClient::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

bool FederatedClient::WaitFor(const std::function<bool(const FederatedClientStats&)>& predicate,
                              int64_t timeout_ms) const {
  std::unique_lock<std::mutex> lock(mu_);
  return changed_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                           [&] { return predicate(stats_); });
}

void FederatedClient::Update(const std::function<void(FederatedClientStats&)>& change) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    change(stats_);
  }
  changed_.notify_all();
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

// ---- Secure rounds ----

void FederatedClient::StartSecureRound(const fl::RoundConfig& config, Weights global,
                                       int64_t received) {
  const fl::SecureParams& wire = *config.secure;
  int64_t trainable = 0;
  for (size_t i = 0; i < layout_.size(); ++i) {
    if (!config.trainable[i]) continue;
    int64_t n = 1;
    for (int64_t d : layout_.shapes[i]) n *= d;
    trainable += n;
  }
  if (static_cast<int64_t>(wire.secagg.vector_length) != trainable + 2) {
    Decline(config.round,
            Status::InvalidArgument(
                "the secure round's vector has " + std::to_string(wire.secagg.vector_length) +
                " words; this model's contribution has " + std::to_string(trainable + 2)),
            &FederatedClientStats::configs_rejected);
    return;
  }
  federated::SecureRoundParams params;
  params.secagg = wire.secagg;
  params.clip = wire.clip;
  params.fractional_bits = static_cast<int>(wire.fractional_bits);
  params.example_scale = wire.example_scale;
  Result<federated::SecureClientSession> session =
      federated::SecureClientSession::Create(params, wire.client_index);
  Result<secagg::AdvertiseKeys> keys =
      session.ok() ? session->Advertise() : Result<secagg::AdvertiseKeys>(session.status());
  if (!keys.ok()) {
    Decline(config.round, keys.status().WithContext("secure aggregation"),
            &FederatedClientStats::configs_rejected);
    return;
  }
  SecureState state;
  state.config = config;
  state.global = std::move(global);
  state.received = received;
  state.session.emplace(std::move(*session));
  secure_ = std::move(state);
  fl::SecAggKeys message;
  message.round = config.round;
  message.client_id = options_.client_id;
  message.keys = std::move(*keys);
  Update([](FederatedClientStats& s) { ++s.secure_rounds; });
  Log()->debug("round {}: secure round (roster index {} of {}); keys advertised", config.round,
               wire.client_index, wire.secagg.num_clients);
  // A lost message is the same as dropping out: the aggregator goes on without us.
  (void)SendMessage(fl::Message(std::move(message)));
}

void FederatedClient::OnKeyDirectory(const fl::SecAggKeyDirectory& m) {
  if (!secure_ || secure_->config.round != m.round ||
      secure_->stage != SecureState::Stage::kAdvertised) {
    Update([](FederatedClientStats& s) { ++s.unexpected_messages; });
    Log()->debug("ignoring a key directory for round {}", m.round);
    return;
  }
  Result<secagg::ShareKeys> shares = secure_->session->ShareSecrets(m.directory);
  if (!shares.ok()) {
    AbortSecure(m.round, shares.status());
    return;
  }
  secure_->stage = SecureState::Stage::kShared;
  fl::SecAggShareKeys message;
  message.round = m.round;
  message.client_id = options_.client_id;
  message.shares = std::move(*shares);
  (void)SendMessage(fl::Message(std::move(message)));
}

void FederatedClient::OnForwardedShares(const fl::SecAggForwardedShares& m) {
  if (!secure_ || secure_->config.round != m.round ||
      secure_->stage != SecureState::Stage::kShared) {
    Update([](FederatedClientStats& s) { ++s.unexpected_messages; });
    Log()->debug("ignoring forwarded shares for round {}", m.round);
    return;
  }
  if (options_.secure_drop_round == m.round) {
    Log()->warn("round {}: shared keys; dropping out now (fault injection: secure_drop_round)",
                m.round);
    RecordError("dropped out of secure round " + std::to_string(m.round) +
                " after sharing keys (secure_drop_round)");
    vanished_ = true;
    return;
  }
  secure_->stage = SecureState::Stage::kMasked;
  // Training may take a while; the config and weights stay in the session state.
  const fl::RoundConfig config = secure_->config;
  Train(config, secure_->global, secure_->received, &m.forwarded);
}

void FederatedClient::OnUnmaskRequest(const fl::SecAggUnmaskRequest& m) {
  if (!secure_ || secure_->config.round != m.round ||
      secure_->stage != SecureState::Stage::kMasked) {
    Update([](FederatedClientStats& s) { ++s.unexpected_messages; });
    Log()->debug("ignoring an unmask request for round {}", m.round);
    return;
  }
  Result<secagg::UnmaskShares> shares = secure_->session->RevealShares(m.request);
  secure_.reset();  // done either way: the session's secrets are wiped with it
  if (!shares.ok()) {
    RecordError("round " + std::to_string(m.round) +
                ": refusing to reveal unmasking shares: " + shares.status().ToString());
    Log()->warn("round {}: refusing to reveal unmasking shares: {}", m.round,
                shares.status().ToString());
    return;
  }
  fl::SecAggUnmaskShares message;
  message.round = m.round;
  message.client_id = options_.client_id;
  message.shares = std::move(*shares);
  if (SendMessage(fl::Message(std::move(message))).ok()) {
    Update([](FederatedClientStats& s) { ++s.unmask_shares_sent; });
  }
}

void FederatedClient::AbortSecure(uint32_t round, const Status& why) {
  if (secure_ && secure_->config.round == round) secure_.reset();
  Decline(round, why.WithContext("secure aggregation"), &FederatedClientStats::training_failures);
}

Result<Weights> FederatedClient::CheckConfig(const fl::RoundConfig& config) const {
  if (config.layout_sha256 != layout_sha256_) {
    return Status::InvalidArgument("model mismatch: the round is for model '" + config.model_name +
                                   "' (layout " + ShortSha(config.layout_sha256) +
                                   "), this edge has '" + options_.model_name + "' (layout " +
                                   ShortSha(layout_sha256_) + ")");
  }
  if (config.is_delta) {
    return Status::InvalidArgument(
        "delta round configs are not supported (this client registered accepts_delta = false)");
  }
  if (config.weights.size() != layout_.size()) {
    return Status::InvalidArgument("the round carries " + std::to_string(config.weights.size()) +
                                   " weight tensors, the model has " +
                                   std::to_string(layout_.size()));
  }
  if (config.trainable.size() != layout_.size()) {
    return Status::InvalidArgument("the round's trainable mask has " +
                                   std::to_string(config.trainable.size()) +
                                   " entries, the model has " + std::to_string(layout_.size()));
  }
  Weights global;
  global.reserve(layout_.size());
  for (size_t i = 0; i < layout_.size(); ++i) {
    const std::vector<int64_t> shape(config.weights[i].shape.begin(),
                                     config.weights[i].shape.end());
    if (shape != layout_.shapes[i]) {
      return Status::InvalidArgument("weight '" + layout_.names[i] + "' has shape " +
                                     ShapeText(shape) + ", the model expects " +
                                     ShapeText(layout_.shapes[i]));
    }
    CLEAVE_ASSIGN_OR_RETURN(torch::Tensor t, federated::FromWireTensor(config.weights[i]));
    global.push_back(std::move(t));
  }
  CLEAVE_RETURN_IF_ERROR(layout_.Check(global).WithContext("the round's weights"));
  if (config.trainable_set != fl::TrainableSet::kCustom) {
    const auto set = config.trainable_set == fl::TrainableSet::kAll
                         ? federated::TrainableSet::kAll
                         : federated::TrainableSet::kHeadAndExits;
    if (federated::TrainableMask(layout_, set, net_->spec().split_after) != config.trainable) {
      // The mask is authoritative; a disagreement with its label is only worth a note.
      Log()->warn("round {}: the trainable mask differs from what '{}' means here; using the mask",
                  config.round, federated::TrainableSetName(set));
    }
  }
  return global;
}

void FederatedClient::Train(const fl::RoundConfig& config, Weights global, int64_t received,
                            const secagg::ForwardedShares* forwarded) {
  federated::LocalTrainOptions train;
  train.fit.local_epochs = static_cast<int>(config.local_epochs);
  train.fit.batch_size = static_cast<int>(config.batch_size);
  train.fit.lr = config.learning_rate;
  train.fit.momentum = config.momentum;
  train.fit.weight_decay = config.weight_decay;
  train.fit.proximal_mu = config.proximal_mu;
  train.freeze_batch_norm_stats = config.trainable_set == fl::TrainableSet::kHeadAndExits;
  const int64_t round_steps = static_cast<int64_t>(
      std::min<uint64_t>(config.max_steps, std::numeric_limits<int64_t>::max()));
  train.fit.max_steps = MinPositive(round_steps, options_.max_steps);
  int64_t budget_ms = MinPositive(options_.time_budget_ms, config.time_budget_ms);
  if (config.deadline_ms > 0) {
    const int64_t deadline = config.deadline_ms;
    const int64_t margin = std::min(options_.deadline_margin_ms, deadline / 2);
    const int64_t spent = (clock_.NowMicros() - received) / 1000;  // checking the config
    budget_ms = MinPositive(budget_ms, std::max<int64_t>(1, deadline - margin - spent));
  }
  train.time_budget_micros = budget_ms * 1000;
  train.trainable = config.trainable;
  train.seed = config.seed;
  train.clock = &clock_;
  // Runs between steps on this thread (the socket's owner): keeps the aggregator from
  // timing us out during a long round and lets Stop() interrupt training.
  train.cancelled = [&] {
    if (stop_.load()) return true;
    const int64_t now = clock_.NowMicros();
    if (registered_ && now >= next_heartbeat_micros_ && now >= blocked_until_micros_) {
      SendHeartbeat(config.round);
    }
    return false;
  };
  Log()->debug("round {}: training (epochs {}, batch {}, lr {}, max steps {}, budget {} ms)",
               config.round, config.local_epochs, config.batch_size, config.learning_rate,
               train.fit.max_steps, budget_ms);
  Result<federated::LocalTrainResult> result = federated::TrainLocally(*net_, global, data_, train);
  if (!result.ok()) {
    if (stop_.load()) return;  // cancelled by Stop(); Run() says bye
    Decline(config.round, result.status(), &FederatedClientStats::training_failures);
    return;
  }
  if (result->steps == 0) {
    Decline(config.round,
            Status::DeadlineExceeded("no training step fit in the time budget of " +
                                     std::to_string(budget_ms) + " ms"),
            &FederatedClientStats::training_failures);
    return;
  }
  fl::Message message;
  if (forwarded != nullptr) {
    // Secure round: only the masked contribution leaves the edge.
    if (!secure_ || secure_->config.round != config.round) {
      Decline(config.round, Status::Internal("the secure session ended during training"),
              &FederatedClientStats::training_failures);
      return;
    }
    Result<crypto::Key256> rounding_seed = crypto::RandomKey();
    Result<secagg::MaskedInput> masked =
        rounding_seed.ok()
            ? secure_->session->MaskUpdate(*forwarded, global, result->weights, config.trainable,
                                           result->num_examples, result->train_loss, *rounding_seed)
            : Result<secagg::MaskedInput>(rounding_seed.status());
    if (!masked.ok()) {
      AbortSecure(config.round, masked.status());
      return;
    }
    fl::SecAggMaskedInput input;
    input.round = config.round;
    input.client_id = options_.client_id;
    input.input = std::move(*masked);
    message = fl::Message(std::move(input));
  } else {
    fl::Update update;
    update.round = config.round;
    update.client_id = options_.client_id;
    update.num_examples = static_cast<uint64_t>(result->num_examples);
    update.train_loss = result->train_loss;
    if (config.compression.kind != fl::CompressionKind::kNone) {
      federated::CompressionConfig compression;
      compression.kind = fl::CompressionKindName(config.compression.kind);
      compression.topk_fraction = config.compression.topk_fraction;
      compression.error_feedback = config.compression.error_feedback;
      compression.seed = config.seed;
      Result<std::string> encoded = federated::EncodeUpdate(
          compression, global, result->weights, config.trainable, config.round,
          ClientNumber(options_.client_id), compression.error_feedback ? &feedback_ : nullptr);
      if (!encoded.ok()) {
        Decline(config.round, encoded.status().WithContext("compressing the update"),
                &FederatedClientStats::training_failures);
        return;
      }
      update.compressed = std::move(*encoded);
    } else {
      update.tensors = federated::MaskedToWire(result->weights, config.trainable);
    }
    update.train_seconds = result->seconds;
    update.steps = static_cast<uint64_t>(result->steps);
    message = fl::Message(std::move(update));
  }
  if (Status valid = fl::ValidateMessage(message); !valid.ok()) {
    Decline(config.round, valid.WithContext("trained update"),
            &FederatedClientStats::training_failures);
    return;
  }
  const auto* plain = std::get_if<fl::Update>(&message.body);
  const bool compressed = plain != nullptr && !plain->compressed.empty();
  sent_round_ = config.round;
  sent_update_ = fl::EncodeMessage(message);
  const std::string summary = "trained " + std::to_string(result->steps) + " steps on " +
                              std::to_string(result->num_examples) + " examples in " +
                              std::to_string((clock_.NowMicros() - received) / 1000) +
                              " ms, loss " + std::to_string(result->train_loss);
  // A late ack for an older round may still come after this round's config: keep a few.
  unacked_[config.round] = summary;
  while (unacked_.size() > kMaxUnackedRounds) unacked_.erase(unacked_.begin());
  Update([&](FederatedClientStats& s) {
    ++s.rounds_trained;
    s.last_round = config.round;
    s.last_train_loss = result->train_loss;
  });
  Log()->debug("round {}: {}; sending the update ({} bytes)", config.round, summary,
               sent_update_.size());
  // A failed send is not retried here: the aggregator re-sends the config when a heartbeat
  // says we are idle while still pending, and that re-sends this update.
  if (SendBytes(sent_update_, forwarded ? "masked input" : "update").ok()) {
    awaiting_ack_until_micros_ = clock_.NowMicros() + options_.ack_timeout_ms * 1000;
    Update([&](FederatedClientStats& s) {
      ++s.updates_sent;
      if (forwarded) ++s.masked_inputs_sent;
      if (compressed) ++s.compressed_updates;
    });
  } else {
    awaiting_ack_until_micros_ = 0;  // certainly not delivered: let the next heartbeat ask
  }
}

void FederatedClient::Decline(uint32_t round, const Status& why,
                              uint64_t FederatedClientStats::*counter) {
  closed_round_ = std::max(closed_round_, round);
  if (secure_ && secure_->config.round == round) secure_.reset();
  const std::string text = "cannot train round " + std::to_string(round) + ": " + why.message();
  Update([&](FederatedClientStats& s) {
    ++(s.*counter);
    s.last_error = text;
  });
  Log()->warn("{}; telling the aggregator", text);
  // Bye{leaving} makes the aggregator count us failed for the round at once; our next
  // heartbeat brings us back for later rounds.
  fl::Bye bye;
  bye.client_id = options_.client_id;
  bye.reason = fl::ByeReason::kLeaving;
  bye.message = Truncate(text, fl::kMaxTextBytes);
  (void)SendMessage(fl::Message(bye));
}

}  // namespace cleave::edge
