// FederatedClient, secure rounds (federated/secure_round.h): opening a SecureClientSession
// when a RoundConfig carries secure parameters, answering each SecAgg stage (keys, shares,
// masked contribution, unmasking shares) and ending the session on any error. Training
// itself is fl_client_training.cc; the conversation as a whole is described in fl_client.h.
#include "edge/fl_client.h"

#include <optional>
#include <string>
#include <utility>

#include "common/crypto.h"
#include "edge/fl_client_internal.h"
#include "federated/local_training.h"

namespace cleave::edge {

namespace fl = wire::fl;
using federated::Weights;
using fl_client_internal::Log;

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
  if (!InSecureStage(m.round, SecureState::Stage::kAdvertised, "a key directory")) return;
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
  if (!InSecureStage(m.round, SecureState::Stage::kShared, "forwarded shares")) return;
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
  if (!InSecureStage(m.round, SecureState::Stage::kMasked, "an unmask request")) return;
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

bool FederatedClient::InSecureStage(uint32_t round, SecureState::Stage stage, const char* what) {
  if (secure_ && secure_->config.round == round && secure_->stage == stage) return true;
  Update([](FederatedClientStats& s) { ++s.unexpected_messages; });
  Log()->debug("ignoring {} for round {}", what, round);
  return false;
}

void FederatedClient::AbortSecure(uint32_t round, const Status& why) {
  if (secure_ && secure_->config.round == round) secure_.reset();
  Decline(round, why.WithContext("secure aggregation"), &FederatedClientStats::training_failures);
}

std::optional<fl::Message> FederatedClient::MaskedContribution(
    const fl::RoundConfig& config, const Weights& global, const federated::LocalTrainResult& result,
    const secagg::ForwardedShares& forwarded) {
  if (!secure_ || secure_->config.round != config.round) {
    Decline(config.round, Status::Internal("the secure session ended during training"),
            &FederatedClientStats::training_failures);
    return std::nullopt;
  }
  Result<crypto::Key256> rounding_seed = crypto::RandomKey();
  Result<secagg::MaskedInput> masked =
      rounding_seed.ok()
          ? secure_->session->MaskUpdate(forwarded, global, result.weights, config.trainable,
                                         result.num_examples, result.train_loss, *rounding_seed)
          : Result<secagg::MaskedInput>(rounding_seed.status());
  if (!masked.ok()) {
    AbortSecure(config.round, masked.status());
    return std::nullopt;
  }
  fl::SecAggMaskedInput input;
  input.round = config.round;
  input.client_id = options_.client_id;
  input.input = std::move(*masked);
  return fl::Message(std::move(input));
}

}  // namespace cleave::edge
