// FederatedClient, a round's local training: checking a RoundConfig against the model,
// training with TrainLocally within the round's limits (steps, time budget, deadline), the
// plain Update it sends (the trainable tensors, or the delta compressed as the round asks, with
// error feedback across rounds), and declining a round the client cannot train. Secure
// rounds mask the result instead (fl_client_secure.cc).
#include "edge/fl_client.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "edge/fl_client_internal.h"
#include "federated/local_training.h"
#include "federated/wire_convert.h"

namespace cleave::edge {

namespace fl = wire::fl;
using federated::Weights;
using fl_client_internal::ClientNumber;
using fl_client_internal::Log;
using fl_client_internal::ShapeText;
using fl_client_internal::ShortSha;

namespace {

// Rounds whose UpdateAck the client still expects, at most.
constexpr size_t kMaxUnackedRounds = 8;

std::string Truncate(std::string text, size_t max_bytes) {
  if (text.size() > max_bytes) text.resize(max_bytes);
  return text;
}

// Smallest positive value of the two; 0 (none) when neither is positive.
int64_t MinPositive(int64_t a, int64_t b) {
  if (a <= 0) return std::max<int64_t>(b, 0);
  if (b <= 0) return a;
  return std::min(a, b);
}

}  // namespace

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
    if (federated::TrainableMask(layout_, set, net_->split_after(),
                                 net_->kind() == split::kTorchScriptSplitKind) !=
        config.trainable) {
      // The mask is authoritative; a disagreement with its label is only worth a note.
      Log()->warn("round {}: the trainable mask differs from what '{}' means here; using the mask",
                  config.round, federated::TrainableSetName(set));
    }
  }
  return global;
}

int64_t FederatedClient::TimeBudgetMs(const fl::RoundConfig& config, int64_t received) const {
  int64_t budget_ms = MinPositive(options_.time_budget_ms, config.time_budget_ms);
  if (config.deadline_ms > 0) {
    const int64_t deadline = config.deadline_ms;
    const int64_t margin = std::min(options_.deadline_margin_ms, deadline / 2);
    const int64_t spent = (clock_.NowMicros() - received) / 1000;  // checking the config
    budget_ms = MinPositive(budget_ms, std::max<int64_t>(1, deadline - margin - spent));
  }
  return budget_ms;
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
  const int64_t budget_ms = TimeBudgetMs(config, received);
  train.time_budget_micros = budget_ms * 1000;
  train.trainable = config.trainable;
  train.seed = config.seed;
  split::LabeledImages experience_rows;
  federated::LabeledBatch consolidate;
  if (config.continual) {
    if (Status ready = PrepareContinual(*config.continual, experience_rows, consolidate);
        !ready.ok()) {
      Decline(config.round, ready,
              ready.code() == StatusCode::kFailedPrecondition
                  ? &FederatedClientStats::rounds_without_data
                  : &FederatedClientStats::configs_rejected);
      return;
    }
    train.continual = continual_->strategy.get();
    train.consolidate = &consolidate;
  }
  const split::LabeledImages& rows = config.continual ? experience_rows : data_;
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
  Result<federated::LocalTrainResult> result = federated::TrainLocally(*net_, global, rows, train);
  if (config.continual) continual_->experience = static_cast<int>(config.continual->experience);
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
  // In a secure round only the masked contribution leaves the edge.
  std::optional<fl::Message> built = forwarded != nullptr
                                         ? MaskedContribution(config, global, *result, *forwarded)
                                         : PlainUpdate(config, global, *result);
  if (!built) return;  // the round was declined
  const fl::Message message = std::move(*built);
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
    if (config.continual) {
      ++s.continual_rounds;
      s.experience = static_cast<int32_t>(config.continual->experience);
    }
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

std::optional<fl::Message> FederatedClient::PlainUpdate(const fl::RoundConfig& config,
                                                        const Weights& global,
                                                        const federated::LocalTrainResult& result) {
  fl::Update update;
  update.round = config.round;
  update.client_id = options_.client_id;
  update.num_examples = static_cast<uint64_t>(result.num_examples);
  update.train_loss = result.train_loss;
  if (config.compression.kind != fl::CompressionKind::kNone) {
    federated::CompressionConfig compression;
    compression.kind = fl::CompressionKindName(config.compression.kind);
    compression.topk_fraction = config.compression.topk_fraction;
    compression.error_feedback = config.compression.error_feedback;
    compression.seed = config.seed;
    Result<std::string> encoded = federated::EncodeUpdate(
        compression, global, result.weights, config.trainable, config.round,
        ClientNumber(options_.client_id), compression.error_feedback ? &feedback_ : nullptr);
    if (!encoded.ok()) {
      Decline(config.round, encoded.status().WithContext("compressing the update"),
              &FederatedClientStats::training_failures);
      return std::nullopt;
    }
    update.compressed = std::move(*encoded);
  } else {
    update.tensors = federated::MaskedToWire(result.weights, config.trainable);
  }
  update.train_seconds = result.seconds;
  update.steps = static_cast<uint64_t>(result.steps);
  return fl::Message(std::move(update));
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
