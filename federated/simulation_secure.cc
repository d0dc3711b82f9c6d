#include <chrono>
#include <map>

#include "federated/simulation_internal.h"

namespace cleave::federated::sim_internal {

Result<int64_t> Simulation::CompressUpdate(const RoundPlan& plan, const Task& t, Weights& weights) {
  ErrorFeedbackState* feedback = nullptr;
  if (options_.compression.error_feedback) {
    MutexLock lock(&mu_);
    feedback = &feedback_[t.client];  // unordered_map: the reference survives rehashing
  }
  return CompressRoundTrip(options_.compression, engine_->layout(), engine_->global(), weights,
                           plan.trainable, static_cast<uint64_t>(plan.round),
                           static_cast<uint64_t>(t.client), feedback);
}

void Simulation::SecureSetUp(const RoundPlan& plan) {
  secure_clients_.clear();
  secure_protocol_bytes_ = 0;
  SecureRound& server = *engine_->secure_round();
  int64_t client_micros = 0;
  const auto timed = [](int64_t& micros, auto&& fn) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    micros += static_cast<int64_t>(Seconds(start) * 1e6);
  };
  // Stage 0: every sampled client (roster order = plan.clients) advertises its keys.
  for (size_t u = 0; u < plan.clients.size(); ++u) {
    SecureClient& c = secure_clients_[plan.clients[u]];
    Result<secagg::AdvertiseKeys> keys = Status::Internal("not run");
    timed(client_micros, [&] {
      Result<SecureClientSession> session =
          SecureClientSession::Create(*plan.secure, static_cast<secagg::ClientIndex>(u));
      if (!session.ok()) {
        keys = session.status();
        return;
      }
      c.session.emplace(std::move(*session));
      keys = c.session->Advertise();
    });
    if (!keys.ok()) continue;
    secure_protocol_bytes_ += 2 * 32 + 12;
    timed(secure_server_micros_, [&] { (void)server.HandleAdvertiseKeys(plan.clients[u], *keys); });
  }
  Result<std::map<std::string, secagg::KeyDirectory>> directories = Status::Internal("not run");
  timed(secure_server_micros_, [&] { directories = server.CloseAdvertiseKeys(); });
  if (!directories.ok()) return;  // the round has failed; FinishRound says why
  // Stage 1: each client Shamir-shares its secrets with its neighbours through the server.
  // Named, not structured bindings: lambdas cannot capture those before C++20 (clang refuses).
  for (auto& entry : *directories) {
    const std::string& id = entry.first;
    SecureClient& c = secure_clients_[id];
    if (!c.session) continue;
    Result<secagg::ShareKeys> shares = Status::Internal("not run");
    timed(client_micros, [&] { shares = c.session->ShareSecrets(entry.second); });
    if (!shares.ok()) continue;
    secure_protocol_bytes_ +=
        static_cast<int64_t>(shares->shares.size() * (secagg::SealedShareBytes() + 8));
    timed(secure_server_micros_, [&] { (void)server.HandleShareKeys(id, *shares); });
  }
  Result<std::map<std::string, secagg::ForwardedShares>> forwarded = Status::Internal("not run");
  timed(secure_server_micros_, [&] { forwarded = server.CloseShareKeys(); });
  if (!forwarded.ok()) return;
  for (auto& [id, f] : *forwarded) secure_clients_[id].forwarded = std::move(f);
  secure_client_micros_ += client_micros;
}

Result<secagg::MaskedInput> Simulation::MaskUpdate(const RoundPlan& plan, const Task& t,
                                                   const LocalTrainResult& trained) {
  auto it = secure_clients_.find(t.id);
  if (it == secure_clients_.end() || !it->second.session) {
    return Status::FailedPrecondition("client '" + t.id + "' took no part in the key exchange");
  }
  const auto start = std::chrono::steady_clock::now();
  // The stochastic-rounding seed: per (seed, round, client), 256 bits from HKDF.
  const uint64_t stream = StreamSeed(options_.seed, 0x5ec0 + plan.round, t.client);
  uint8_t ikm[8];
  for (int i = 0; i < 8; ++i) ikm[i] = static_cast<uint8_t>(stream >> (8 * i));
  CLEAVE_ASSIGN_OR_RETURN(
      crypto::Key256 rounding_seed,
      crypto::HkdfKey(crypto::ByteView(), crypto::ByteView(ikm, sizeof(ikm)), crypto::ByteView()));
  Result<secagg::MaskedInput> masked = it->second.session->MaskUpdate(
      it->second.forwarded, engine_->global(), trained.weights, plan.trainable,
      trained.num_examples, trained.train_loss, rounding_seed);
  secure_client_micros_ += static_cast<int64_t>(Seconds(start) * 1e6);
  return masked;
}

void Simulation::SecureUnmask() {
  SecureRound* server = engine_->secure_round();
  if (server == nullptr || server->stage() != secagg::SecAggServer::Stage::kMaskedInput) {
    secure_clients_.clear();
    return;  // failed earlier; FinishRound reports why
  }
  auto start = std::chrono::steady_clock::now();
  Result<SecureRound::UnmaskStage> stage = server->CloseMaskedInput();
  secure_server_micros_ += static_cast<int64_t>(Seconds(start) * 1e6);
  if (stage.ok()) {
    for (const std::string& id : stage->survivors) {
      SecureClient& c = secure_clients_[id];
      if (!c.session) continue;
      start = std::chrono::steady_clock::now();
      Result<secagg::UnmaskShares> shares = c.session->RevealShares(stage->request);
      secure_client_micros_ += static_cast<int64_t>(Seconds(start) * 1e6);
      if (!shares.ok()) continue;  // the client aborted: its shares are missing
      secure_protocol_bytes_ += static_cast<int64_t>(
          (shares->self_mask_shares.size() + shares->mask_key_shares.size()) * 16);
      start = std::chrono::steady_clock::now();
      (void)server->HandleUnmaskShares(id, *shares);
      secure_server_micros_ += static_cast<int64_t>(Seconds(start) * 1e6);
    }
  }
  secure_clients_.clear();  // the clients' secrets go with their sessions
}

}  // namespace cleave::federated::sim_internal
