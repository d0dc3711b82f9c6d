#include "federated/secagg_client.h"

#include <algorithm>
#include <map>
#include <set>

namespace cleave::secagg {

struct SecAggClient::State {
  SecAggConfig config;
  ClientIndex self = 0;
  NeighbourGraph graph;
  Stage stage = Stage::kNew;
  std::string abort_reason;

  crypto::X25519KeyPair cipher_keys{};  // c_u
  crypto::X25519KeyPair mask_keys{};    // s_u
  Key256 self_mask_seed{};              // b_u
  // Round 0 result: public keys of the neighbours that advertised (not including self).
  std::map<ClientIndex, PublicKeys> neighbour_keys;
  // The shares this client holds, by owner: its own, and each neighbour's that reached it.
  struct HeldShares {
    shamir::Share self_mask;
    shamir::Share mask_key;
  };
  std::map<ClientIndex, HeldShares> held;

  State(const SecAggConfig& c, ClientIndex u, NeighbourGraph g)
      : config(c), self(u), graph(std::move(g)) {}
  ~State() { WipeSecrets(); }

  void WipeSecrets() {
    crypto::Cleanse(cipher_keys.secret_key);
    crypto::Cleanse(mask_keys.secret_key);
    crypto::Cleanse(self_mask_seed);
    for (auto& [owner, shares] : held) {
      crypto::Cleanse(shares.self_mask.y.data(), shares.self_mask.y.size() * sizeof(uint64_t));
      crypto::Cleanse(shares.mask_key.y.data(), shares.mask_key.y.size() * sizeof(uint64_t));
    }
    held.clear();
  }
};

const char* ClientStageName(SecAggClient::Stage stage) {
  switch (stage) {
    case SecAggClient::Stage::kNew: return "new";
    case SecAggClient::Stage::kAdvertised: return "advertised";
    case SecAggClient::Stage::kShared: return "shared";
    case SecAggClient::Stage::kMasked: return "masked";
    case SecAggClient::Stage::kDone: return "done";
    case SecAggClient::Stage::kAborted: return "aborted";
    default: return "unknown";
  }
}

Result<SecAggClient> SecAggClient::Create(const SecAggConfig& config, ClientIndex self) {
  CLEAVE_ASSIGN_OR_RETURN(NeighbourGraph graph, NeighbourGraph::Build(config));
  if (self >= config.num_clients) {
    return Status::InvalidArgument("client " + std::to_string(self) + " is not in a round of " +
                                   std::to_string(config.num_clients) + " clients");
  }
  return SecAggClient(std::make_unique<State>(config, self, std::move(graph)));
}

SecAggClient::SecAggClient(std::unique_ptr<State> state) : state_(std::move(state)) {}
SecAggClient::SecAggClient(SecAggClient&&) noexcept = default;
SecAggClient& SecAggClient::operator=(SecAggClient&&) noexcept = default;
SecAggClient::~SecAggClient() = default;

ClientIndex SecAggClient::index() const { return state_->self; }
SecAggClient::Stage SecAggClient::stage() const { return state_->stage; }
const std::string& SecAggClient::abort_reason() const { return state_->abort_reason; }

Status SecAggClient::Abort(Status status) {
  state_->stage = Stage::kAborted;
  state_->abort_reason = status.message();
  state_->WipeSecrets();
  return status.WithContext("secure aggregation client " + std::to_string(state_->self) +
                            " aborted");
}

Status SecAggClient::CheckStage(Stage expected, const char* step) const {
  if (!state_) return Status::FailedPrecondition("the client was moved from");
  if (state_->stage == Stage::kAborted) {
    return Status::FailedPrecondition("client " + std::to_string(state_->self) +
                                      " has aborted: " + state_->abort_reason);
  }
  if (state_->stage != expected) {
    return Status::FailedPrecondition(std::string(step) + " is not allowed in client stage '" +
                                      ClientStageName(state_->stage) + "'");
  }
  return Status::Ok();
}

Result<AdvertiseKeys> SecAggClient::Advertise() {
  CLEAVE_RETURN_IF_ERROR(CheckStage(Stage::kNew, "Advertise"));
  State& s = *state_;
  auto cipher = crypto::GenerateX25519();
  if (!cipher.ok()) return Abort(cipher.status());
  auto mask = crypto::GenerateX25519();
  if (!mask.ok()) return Abort(mask.status());
  s.cipher_keys = *cipher;
  s.mask_keys = *mask;
  crypto::Cleanse(cipher->secret_key);
  crypto::Cleanse(mask->secret_key);
  s.stage = Stage::kAdvertised;
  return AdvertiseKeys{s.config.round_id, s.self, s.cipher_keys.public_key, s.mask_keys.public_key};
}

Result<ShareKeys> SecAggClient::ShareSecrets(const KeyDirectory& directory) {
  CLEAVE_RETURN_IF_ERROR(CheckStage(Stage::kAdvertised, "ShareSecrets"));
  State& s = *state_;
  if (directory.round_id != s.config.round_id || directory.recipient != s.self) {
    return Abort(Status::InvalidArgument(
        "key directory for client " + std::to_string(directory.recipient) + " in round " +
        std::to_string(directory.round_id) + " reached client " + std::to_string(s.self) +
        " in round " + std::to_string(s.config.round_id)));
  }
  bool saw_self = false;
  s.neighbour_keys.clear();
  for (const PublicKeys& entry : directory.keys) {
    if (entry.client == s.self) {
      if (saw_self || entry.cipher_public_key != s.cipher_keys.public_key ||
          entry.mask_public_key != s.mask_keys.public_key) {
        return Abort(Status::DataLoss("the key directory misstates this client's own keys"));
      }
      saw_self = true;
    } else if (!s.graph.Adjacent(s.self, entry.client)) {
      return Abort(Status::InvalidArgument("the key directory lists client " +
                                           std::to_string(entry.client) +
                                           ", which is not a neighbour"));
    } else if (!s.neighbour_keys.emplace(entry.client, entry).second) {
      return Abort(Status::InvalidArgument("the key directory lists client " +
                                           std::to_string(entry.client) + " twice"));
    }
  }
  if (!saw_self) return Abort(Status::InvalidArgument("the key directory omits this client"));
  const size_t holders = s.neighbour_keys.size() + 1;
  if (holders < s.config.threshold) {
    return Abort(Status::FailedPrecondition(
        "only " + std::to_string(holders) + " share holders (neighbours that advertised keys, " +
        "and this client) remain; threshold is " + std::to_string(s.config.threshold)));
  }

  auto seed = crypto::RandomKey();
  if (!seed.ok()) return Abort(seed.status());
  s.self_mask_seed = *seed;
  crypto::Cleanse(*seed);
  std::vector<ClientIndex> owners{s.self};
  for (const auto& [client, keys] : s.neighbour_keys) owners.push_back(client);
  std::vector<uint32_t> points;
  for (ClientIndex v : owners) points.push_back(SharePoint(v));
  auto self_mask_shares = shamir::Split(s.self_mask_seed, s.config.threshold, points);
  if (!self_mask_shares.ok()) return Abort(self_mask_shares.status());
  auto mask_key_shares = shamir::Split(s.mask_keys.secret_key, s.config.threshold, points);
  if (!mask_key_shares.ok()) return Abort(mask_key_shares.status());

  ShareKeys out{s.config.round_id, s.self, {}};
  for (size_t i = 0; i < owners.size(); ++i) {
    const ClientIndex v = owners[i];
    if (v == s.self) {
      s.held[s.self] = {(*self_mask_shares)[i], (*mask_key_shares)[i]};
      continue;
    }
    auto key = ShareEncryptionKey(s.config, s.cipher_keys.secret_key,
                                  s.neighbour_keys[v].cipher_public_key, s.self, v);
    if (!key.ok()) return Abort(key.status().WithContext("client " + std::to_string(v)));
    Bytes plaintext = EncodeSharePair((*self_mask_shares)[i], (*mask_key_shares)[i]);
    auto sealed =
        crypto::AeadSeal(*key, plaintext, ShareAssociatedData(s.config.round_id, s.self, v));
    crypto::Cleanse(plaintext.data(), plaintext.size());
    crypto::Cleanse(*key);
    if (!sealed.ok()) return Abort(sealed.status());
    out.shares.push_back({s.self, v, std::move(*sealed)});
  }
  for (auto* shares : {&*self_mask_shares, &*mask_key_shares}) {
    for (shamir::Share& share : *shares) {
      crypto::Cleanse(share.y.data(), share.y.size() * sizeof(uint64_t));
    }
  }
  s.stage = Stage::kShared;
  return out;
}

Result<MaskedInput> SecAggClient::MaskInput(const ForwardedShares& forwarded,
                                            std::vector<uint32_t> encoded_input) {
  CLEAVE_RETURN_IF_ERROR(CheckStage(Stage::kShared, "MaskInput"));
  State& s = *state_;
  if (encoded_input.size() != s.config.vector_length) {
    return Abort(Status::InvalidArgument("the input has " + std::to_string(encoded_input.size()) +
                                         " words; the round aggregates " +
                                         std::to_string(s.config.vector_length)));
  }
  if (forwarded.round_id != s.config.round_id || forwarded.recipient != s.self) {
    return Abort(Status::InvalidArgument(
        "forwarded shares for client " + std::to_string(forwarded.recipient) + " in round " +
        std::to_string(forwarded.round_id) + " reached the wrong client or round"));
  }
  for (const EncryptedShare& sealed : forwarded.shares) {
    const ClientIndex v = sealed.sender;
    auto keys = s.neighbour_keys.find(v);
    if (sealed.recipient != s.self || keys == s.neighbour_keys.end()) {
      return Abort(Status::InvalidArgument("a forwarded share from client " + std::to_string(v) +
                                           " to client " + std::to_string(sealed.recipient) +
                                           " does not come from a neighbour in the directory"));
    }
    if (s.held.count(v) != 0) {
      return Abort(
          Status::AlreadyExists("client " + std::to_string(v) + "'s shares were forwarded twice"));
    }
    auto key = ShareEncryptionKey(s.config, s.cipher_keys.secret_key,
                                  keys->second.cipher_public_key, s.self, v);
    if (!key.ok()) return Abort(key.status());
    auto plaintext = crypto::AeadOpen(*key, sealed.ciphertext,
                                      ShareAssociatedData(s.config.round_id, v, s.self));
    crypto::Cleanse(*key);
    if (!plaintext.ok()) {
      return Abort(plaintext.status().WithContext("share from client " + std::to_string(v)));
    }
    State::HeldShares shares;
    Status decoded =
        DecodeSharePair(*plaintext, SharePoint(s.self), &shares.self_mask, &shares.mask_key);
    crypto::Cleanse(plaintext->data(), plaintext->size());
    if (!decoded.ok()) {
      return Abort(decoded.WithContext("share from client " + std::to_string(v)));
    }
    s.held.emplace(v, std::move(shares));
  }
  // Own shares plus one per neighbour still in the round: these are the holders that can
  // later reveal b; below the threshold the server could never unmask this input.
  if (s.held.size() < s.config.threshold) {
    return Abort(Status::FailedPrecondition(
        "only " + std::to_string(s.held.size()) + " of this client's share holders are still in " +
        "the round; threshold is " + std::to_string(s.config.threshold)));
  }

  std::vector<uint32_t>& y = encoded_input;
  Status masked = crypto::AddSeedStream(s.self_mask_seed, /*subtract=*/false, y.data(), y.size());
  for (const auto& [v, shares] : s.held) {
    if (!masked.ok()) break;
    if (v == s.self) continue;
    auto seed = PairwiseMaskSeed(s.config, s.mask_keys.secret_key,
                                 s.neighbour_keys[v].mask_public_key, s.self, v);
    if (!seed.ok()) {
      masked = seed.status();
      break;
    }
    masked = ApplyPairwiseMask(*seed, s.self, v, /*remove=*/false, y);
    crypto::Cleanse(*seed);
  }
  if (!masked.ok()) return Abort(masked);
  s.stage = Stage::kMasked;
  return MaskedInput{s.config.round_id, s.self, std::move(y)};
}

Result<UnmaskShares> SecAggClient::RevealShares(const UnmaskRequest& request) {
  CLEAVE_RETURN_IF_ERROR(CheckStage(Stage::kMasked, "RevealShares"));
  State& s = *state_;
  if (request.round_id != s.config.round_id) {
    return Abort(Status::InvalidArgument("unmask request for round " +
                                         std::to_string(request.round_id) + " in round " +
                                         std::to_string(s.config.round_id)));
  }
  std::set<ClientIndex> survivors;
  for (size_t i = 0; i < request.survivors.size(); ++i) {
    const ClientIndex v = request.survivors[i];
    if (v >= s.config.num_clients || (i > 0 && v <= request.survivors[i - 1])) {
      return Abort(Status::InvalidArgument(
          "the survivor list must be strictly increasing client indices below " +
          std::to_string(s.config.num_clients)));
    }
    if (v != s.self && s.graph.Adjacent(s.self, v) && s.held.count(v) == 0) {
      return Abort(Status::InvalidArgument("client " + std::to_string(v) +
                                           " is listed as a survivor but never shared keys "
                                           "with this client"));
    }
    survivors.insert(v);
  }
  if (survivors.count(s.self) == 0) {
    return Abort(
        Status::FailedPrecondition("the unmask request does not list this client, "
                                   "which sent its masked input"));
  }
  if (survivors.size() < s.config.threshold) {
    return Abort(Status::FailedPrecondition("only " + std::to_string(survivors.size()) +
                                            " survivors; threshold is " +
                                            std::to_string(s.config.threshold)));
  }
  UnmaskShares out{s.config.round_id, s.self, {}, {}};
  for (const auto& [owner, shares] : s.held) {
    if (survivors.count(owner) != 0) {
      out.self_mask_shares.push_back({owner, shares.self_mask});
    } else {
      out.mask_key_shares.push_back({owner, shares.mask_key});
    }
  }
  // One reveal per round: nothing secret is kept once the shares are out.
  s.WipeSecrets();
  s.stage = Stage::kDone;
  return out;
}

}  // namespace cleave::secagg
